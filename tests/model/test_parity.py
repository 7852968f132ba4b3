"""Logits parity with transformers in float32 on CPU, loading their checkpoints and saving ours."""
import copy
import json

import pytest
import torch
import transformers
from torch.testing import assert_close

from model import Decoder, load_pretrained, save_pretrained
from tests.model.conftest import CASES

TOL = dict(rtol=1e-5, atol=1e-5)


def _ids(vocab, batch=2, length=24, seed=1):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", list(CASES))
def test_load_transformers_checkpoint_matches_logits(case, hf_checkpoint):
    hf, path = hf_checkpoint(case)
    ours = load_pretrained(path)
    ids = _ids(hf.config.vocab_size)
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert got.shape == (2, 24, hf.config.vocab_size)
    assert_close(got, expected, **TOL)
    assert ours.num_params() == hf.num_parameters()


@pytest.mark.parametrize("case", list(CASES))
def test_saved_checkpoint_loads_in_transformers(case, hf_checkpoint, tmp_path):
    hf, path = hf_checkpoint(case)
    ours = load_pretrained(path)
    save_pretrained(ours, tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert "rope_parameters" not in saved and "rope_theta" in saved  # the hub dialect
    model_cls = getattr(transformers, CASES[case][1])
    reloaded, info = model_cls.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids = _ids(hf.config.vocab_size, seed=2)
    with torch.no_grad():
        assert_close(reloaded.eval()(ids).logits, hf(ids).logits, **TOL)
        assert_close(ours(ids), hf(ids).logits, **TOL)


def test_tied_checkpoint_saves_no_output_embedding(hf_checkpoint, tmp_path):
    from model.safetensors_io import read_header
    _, path = hf_checkpoint("qwen2_qkv_bias_tied")
    model = load_pretrained(path)
    assert model.output_weight is model.embed.weight
    save_pretrained(model, tmp_path / "ours")
    names, _ = read_header(tmp_path / "ours" / "model.safetensors")
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names


def test_bf16_load_matches_transformers_bf16(hf_checkpoint):
    hf, path = hf_checkpoint("qwen3_qk_norm_head_dim")
    ours = load_pretrained(path, dtype=torch.bfloat16)
    assert ours.embed.weight.dtype == torch.bfloat16
    ids = _ids(hf.config.vocab_size)
    with torch.no_grad():
        expected = copy.deepcopy(hf).to(torch.bfloat16)(ids).logits.float()
        got = ours(ids).float()
    # bf16 kernels differ in accumulation order; the float32 tests above are the exact check
    assert_close(got, expected, rtol=0.05, atol=0.1)


def test_return_hidden_times_output_weight_is_logits(hf_checkpoint):
    _, path = hf_checkpoint("llama_gqa_untied")
    model = load_pretrained(path)
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        hidden = model(ids, return_hidden=True)
        assert hidden.shape == (2, 24, model.config.hidden_size)
        assert_close(hidden @ model.output_weight.T, model(ids), **TOL)
