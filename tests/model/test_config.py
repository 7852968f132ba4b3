"""config.json dialects, round trips, and refusals that name the field at fault."""
import json
import shutil

import pytest
import torch
from torch.testing import assert_close

from model import ConfigError, ModelConfig, load_pretrained
from tests.model.conftest import CASES

# As published on the hub (abridged only of tokenizer-irrelevant keys): Qwen2.5-0.5B and Llama-3.2-1B.
QWEN25_HUB = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
    "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2",
    "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.40.1", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}
LLAMA32_HUB = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "head_dim": 64, "hidden_act": "silu",
    "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 131072,
    "mlp_bias": False, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16,
    "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0", "use_cache": True, "vocab_size": 128256,
}


def test_hub_configs_parse():
    qwen = ModelConfig.from_hf_dict(QWEN25_HUB)
    assert (qwen.num_layers, qwen.num_heads, qwen.num_kv_heads, qwen.head_dim) == (24, 14, 2, 64)
    assert qwen.qkv_bias and not qwen.o_bias and qwen.tie_word_embeddings and qwen.rope_theta == 1e6
    assert qwen.torch_dtype == "bfloat16" and qwen.rope_scaling is None
    llama = ModelConfig.from_hf_dict(LLAMA32_HUB)
    assert llama.rope_scaling == LLAMA32_HUB["rope_scaling"] and llama.eos_token_id == [128001, 128008, 128009]
    assert llama.rope_theta == 500000.0 and llama.head_dim == 64


def test_transformers5_dialect_equals_hub_dialect():
    v5 = {k: v for k, v in LLAMA32_HUB.items() if k not in ("rope_theta", "rope_scaling", "torch_dtype")}
    v5["rope_parameters"] = {"rope_theta": 500000.0, **LLAMA32_HUB["rope_scaling"]}
    v5["dtype"] = "bfloat16"
    assert ModelConfig.from_hf_dict(v5) == ModelConfig.from_hf_dict(LLAMA32_HUB)


def test_old_style_rope_scaling_type_key():
    cfg = ModelConfig.from_hf_dict({**LLAMA32_HUB, "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert cfg.rope_scaling == {"rope_type": "linear", "factor": 2.0}


@pytest.mark.parametrize("hub", [QWEN25_HUB, LLAMA32_HUB])
def test_round_trip_through_hf_dict(hub):
    cfg = ModelConfig.from_hf_dict(hub)
    written = cfg.to_hf_dict()
    assert "rope_parameters" not in written and written["torch_dtype"] == "bfloat16"
    assert ModelConfig.from_hf_dict(written) == cfg
    for key in ("max_window_layers", "use_sliding_window", "initializer_range"):
        if key in hub:
            assert written[key] == hub[key]  # unrelated keys are written back unchanged


@pytest.mark.parametrize("case", ["llama3_scaling_bias_head_dim", "qwen2_qkv_bias_tied", "smollm3_nope"])
def test_hub_dialect_checkpoint_loads_with_same_logits(case, hf_checkpoint, tmp_path):
    """transformers 5 writes rope_parameters/dtype; rewrite config.json the way hub releases look."""
    hf, path = hf_checkpoint(case)
    hub_dir = tmp_path / "hub"
    shutil.copytree(path, hub_dir)
    d = json.loads((hub_dir / "config.json").read_text())
    params = d.pop("rope_parameters")
    d["rope_theta"] = params.pop("rope_theta")
    d["rope_scaling"] = params if params.get("rope_type") != "default" else None
    d["torch_dtype"] = d.pop("dtype")
    (hub_dir / "config.json").write_text(json.dumps(d))
    ids = torch.randint(0, hf.config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close(load_pretrained(hub_dir)(ids), hf(ids).logits, rtol=1e-5, atol=1e-5)


def test_smollm3_nope_layers_from_interval():
    d = {"architectures": ["SmolLM3ForCausalLM"], "vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 8,
         "num_attention_heads": 2, "intermediate_size": 8, "no_rope_layer_interval": 4}
    cfg = ModelConfig.from_hf_dict(d)
    assert cfg.nope_layers == (3, 7) and cfg.tie_word_embeddings and cfg.rope_theta == 2e6
    assert cfg.to_hf_dict()["no_rope_layers"] == [1, 1, 1, 0, 1, 1, 1, 0]


BAD = [
    ("architecture", {"architectures": ["GPT2LMHeadModel"]}, "architectures"),
    ("no architecture", {"architectures": None}, "architectures"),
    ("missing field", {"hidden_size": None}, "hidden_size"),
    ("yarn rope", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}},
     "rope_parameters.rope_type"),
    ("dynamic rope hub", {"rope_parameters": None, "rope_theta": 1e4, "rope_scaling": {"type": "dynamic",
                                                                                       "factor": 2.0}},
     "rope_scaling.rope_type"),
    ("llama3 incomplete", {"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4}},
     "rope_parameters.low_freq_factor"),
    ("partial rotary", {"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ("activation", {"hidden_act": "gelu"}, "hidden_act"),
    ("quantized", {"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
    ("sliding layer", {"layer_types": ["full_attention", "sliding_attention"]}, "layer_types[1]"),
]


@pytest.mark.parametrize("label, change, field", BAD, ids=[b[0] for b in BAD])
def test_unsupported_config_is_refused_naming_the_field(label, change, field, hf_checkpoint, tmp_path):
    _, path = hf_checkpoint("llama_gqa_untied")
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    d = json.loads((bad / "config.json").read_text())
    d.update(change)
    (bad / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError) as err:
        load_pretrained(bad)
    assert field in str(err.value) and "config.json" in str(err.value)


@pytest.mark.parametrize("arch, change", [
    ("Qwen2ForCausalLM", {"use_sliding_window": True, "sliding_window": 4096}),
    ("SmolLM3ForCausalLM", {"use_sliding_window": True, "sliding_window": 4096}),
    ("MistralForCausalLM", {"sliding_window": 4096, "max_position_embeddings": 32768}),
])
def test_active_sliding_window_is_refused(arch, change):
    d = {**QWEN25_HUB, "architectures": [arch], **change}
    with pytest.raises(ConfigError, match="sliding_window"):
        ModelConfig.from_hf_dict(d)


def test_inactive_sliding_windows_load():
    assert ModelConfig.from_hf_dict(QWEN25_HUB)  # sliding_window set, use_sliding_window false
    mistral = {**LLAMA32_HUB, "architectures": ["MistralForCausalLM"], "rope_scaling": None, "sliding_window": None}
    assert ModelConfig.from_hf_dict(mistral)
    covering = {**mistral, "sliding_window": 131072}  # as long as max_position_embeddings: never slides
    assert ModelConfig.from_hf_dict(covering)


def test_features_an_architecture_cannot_express_are_refused_on_save():
    cfg = ModelConfig(vocab_size=8, hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4,
                      intermediate_size=8, architecture="LlamaForCausalLM", qk_norm=True)
    with pytest.raises(ConfigError, match="qk_norm"):
        cfg.to_hf_dict()


def test_every_case_round_trips(hf_checkpoint):
    for case in CASES:
        _, path = hf_checkpoint(case)
        cfg = ModelConfig.from_hf_dict(json.loads((path / "config.json").read_text()))
        assert ModelConfig.from_hf_dict(cfg.to_hf_dict()) == cfg
