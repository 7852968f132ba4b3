"""Sharded checkpoints, bad checkpoints, atomic saves, tokenizer files."""
import json
import os
import shutil

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

from model import CheckpointError, ConfigError, load_pretrained, save_pretrained
from model import hf_io

TOL = dict(rtol=1e-5, atol=1e-5)


def _ids(vocab):
    return torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(5))


def test_transformers_sharded_checkpoint_loads(hf_checkpoint, tmp_path):
    hf, _ = hf_checkpoint("llama_gqa_untied")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    ids = _ids(hf.config.vocab_size)
    with torch.no_grad():
        assert_close(load_pretrained(tmp_path / "sharded")(ids), hf(ids).logits, **TOL)


def test_our_sharded_save_loads_in_transformers_and_back(hf_checkpoint, tmp_path):
    hf, path = hf_checkpoint("qwen2_qkv_bias_tied")
    save_pretrained(load_pretrained(path), tmp_path / "out", max_shard_size="16KB")
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (tmp_path / "out" / "model.safetensors").exists()
    reloaded = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = _ids(hf.config.vocab_size)
    with torch.no_grad():
        assert_close(reloaded(ids).logits, hf(ids).logits, **TOL)
        assert_close(load_pretrained(tmp_path / "out")(ids), hf(ids).logits, **TOL)


def test_bf16_checkpoint_loads_in_float32_and_keeps_its_dtype_by_default(hf_checkpoint, tmp_path):
    hf, path = hf_checkpoint("llama_mha_tied")
    model = load_pretrained(path, dtype=torch.bfloat16)
    save_pretrained(model, tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert load_pretrained(tmp_path / "bf16").embed.weight.dtype == torch.bfloat16
    upcast = load_pretrained(tmp_path / "bf16", dtype="float32")
    assert upcast.embed.weight.dtype == torch.float32
    assert torch.equal(upcast.embed.weight, model.embed.weight.float())


# --- bad checkpoints -------------------------------------------------------------------------

@pytest.fixture
def ckpt(hf_checkpoint, tmp_path):
    """A private copy of a tiny untied Llama checkpoint to break."""
    _, path = hf_checkpoint("llama_gqa_untied")
    return shutil.copytree(path, tmp_path / "ckpt")


def _edit_tensors(ckpt, fn):
    tensors = load_file(ckpt / "model.safetensors")
    fn(tensors)
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})


def _raises(ckpt, *fragments, error=CheckpointError):
    with pytest.raises(error) as err:
        load_pretrained(ckpt)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_missing_tensor(ckpt):
    _edit_tensors(ckpt, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    _raises(ckpt, "missing tensor", "model.layers.1.mlp.up_proj.weight")


def test_unexpected_tensor(ckpt):
    _edit_tensors(ckpt, lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": torch.zeros(32)}))
    _raises(ckpt, "unexpected tensor", "model.layers.0.self_attn.q_proj.bias", "model.safetensors")


def test_mis_shaped_tensor(ckpt):
    _edit_tensors(ckpt, lambda t: t.update({"model.norm.weight": torch.ones(31)}))
    _raises(ckpt, "model.norm.weight", "[31]", "[32]")


def test_truncated_file(ckpt):
    file = ckpt / "model.safetensors"
    os.truncate(file, file.stat().st_size - 100)
    _raises(ckpt, "truncated", "model.safetensors")


def test_corrupt_header(ckpt):
    file = ckpt / "model.safetensors"
    raw = bytearray(file.read_bytes())
    raw[8:16] = b"\xff\xfe{{{{{{"
    file.write_bytes(bytes(raw))
    _raises(ckpt, "corrupt", "model.safetensors")


def test_garbage_file(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 3)
    _raises(ckpt, "truncated", "model.safetensors")


def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    _raises(ckpt, "config.json", "missing")


def test_missing_config_field(ckpt):
    d = json.loads((ckpt / "config.json").read_text())
    del d["num_attention_heads"]
    (ckpt / "config.json").write_text(json.dumps(d))
    _raises(ckpt, "num_attention_heads", "config.json", error=ConfigError)


def test_pickle_only_checkpoint_is_refused(ckpt):
    (ckpt / "model.safetensors").rename(ckpt / "pytorch_model.bin")
    _raises(ckpt, "pytorch_model.bin", "pickle")


def test_index_names_a_missing_shard(ckpt, hf_checkpoint, tmp_path):
    hf, _ = hf_checkpoint("llama_gqa_untied")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    victim = sorted((tmp_path / "sharded").glob("model-*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=victim.name):
        load_pretrained(tmp_path / "sharded")


def test_index_lists_a_tensor_its_shard_lacks(ckpt):
    names = list(load_file(ckpt / "model.safetensors"))
    weight_map = {n: "model.safetensors" for n in names + ["model.layers.0.extra.weight"]}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _raises(ckpt, "model.layers.0.extra.weight", "model.safetensors")


# --- saving -----------------------------------------------------------------------------------

def test_save_replaces_existing_directory_atomically_and_copies_tokenizer(hf_checkpoint, tmp_path):
    _, path = hf_checkpoint("llama_mha_tied")
    tok = tmp_path / "tok"
    tok.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        (tok / name).write_text(f'{{"file": "{name}"}}')
    (tok / "unrelated.txt").write_text("not copied")
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.safetensors").write_text("old")
    save_pretrained(load_pretrained(path), target, tokenizer_dir=tok)
    names = sorted(p.name for p in target.iterdir())
    assert names == ["chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
                     "tokenizer.json", "tokenizer_config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tok"]  # no temp folders left behind


def test_failed_save_leaves_previous_checkpoint_untouched(hf_checkpoint, tmp_path, monkeypatch):
    _, path = hf_checkpoint("llama_gqa_untied")
    model = load_pretrained(path)
    save_pretrained(model, tmp_path / "out")
    before = (tmp_path / "out" / "model.safetensors").read_bytes()

    def crash(*args):
        raise OSError("disk full")
    monkeypatch.setattr(hf_io, "write_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(model, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_save_then_load_is_bit_exact(hf_checkpoint, tmp_path):
    _, path = hf_checkpoint("qwen3_qk_norm_head_dim")
    model = load_pretrained(path)
    save_pretrained(model, tmp_path / "out")
    again = load_pretrained(tmp_path / "out")
    for (name, a), (_, b) in zip(model.named_parameters(), again.named_parameters()):
        assert torch.equal(a, b), name
    assert load_file(tmp_path / "out" / "model.safetensors").keys() == load_file(path / "model.safetensors").keys()
