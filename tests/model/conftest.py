"""Tiny random Hugging Face checkpoints of every supported family, written by transformers itself."""
import pytest
import torch

SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}

# name -> (transformers class names, config overrides)
CASES = {
    "llama_gqa_untied": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=False)),
    "llama_mha_tied": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=4, tie_word_embeddings=True)),
    "llama3_scaling_bias_head_dim": ("LlamaConfig", "LlamaForCausalLM",
                                     dict(rope_parameters={"rope_theta": 500.0, **LLAMA3}, attention_bias=True,
                                          mlp_bias=True, head_dim=16)),
    "llama_linear_scaling": ("LlamaConfig", "LlamaForCausalLM",
                             dict(rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0})),
    "qwen2_qkv_bias_tied": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
    "qwen3_qk_norm_head_dim": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=16, num_key_value_heads=1)),
    "smollm3_nope": ("SmolLM3Config", "SmolLM3ForCausalLM",
                     dict(no_rope_layer_interval=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)),
    "mistral_no_window": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=None)),
}


def build_hf(case: str, seed: int = 0, **overrides):
    """A transformers model for CASES[case] with random weights large enough that every feature
    (biases, norm weights, q/k norms) moves the logits."""
    import transformers
    config_name, model_name, kw = CASES[case]
    config = getattr(transformers, config_name)(**{**SMALL, **kw, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """Factory: save a tiny transformers model for `case` once per session and return (model,
    directory). Shared between tests: treat both as read-only."""
    made = {}

    def make(case, seed=0, **overrides):
        key = (case, seed, repr(sorted(overrides.items())))
        if key not in made:
            model = build_hf(case, seed, **overrides)
            out = tmp_path_factory.mktemp(f"hf_{case}_{seed}")
            model.save_pretrained(out)
            made[key] = (model, out)
        return made[key]
    return make


@pytest.fixture(autouse=True, scope="module")
def restore_transformers_patches():
    """Undo module-level monkeypatches of transformers after each test module (test_gguf.py
    patches is_accelerate_available, which breaks sharded save_pretrained in later modules)."""
    import transformers.modeling_utils as modeling_utils
    original = modeling_utils.is_accelerate_available
    yield
    modeling_utils.is_accelerate_available = original
