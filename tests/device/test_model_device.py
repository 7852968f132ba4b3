"""The decoder on the test device (`--device` / SFTKEY_TEST_DEVICE, CPU by default) against
transformers on the same device: fp32 logits to rounding; in bf16 (bf16 weights, and fp32 weights
under autocast as in training) no further from the fp32 reference than transformers' own bf16 run.
"""
import copy

import pytest
import torch
from torch.testing import assert_close

from model import load_pretrained, save_pretrained
from tests.model.conftest import build_hf

FAMILIES = ["llama_gqa_untied", "qwen2_qkv_bias_tied", "qwen3_qk_norm_head_dim", "smollm3_nope"]
FP32 = dict(rtol=1e-4, atol=1e-4)  # a different matmul or attention kernel, not different math


def _ids(vocab, batch=3, length=40, seed=1):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def relative_error(got, expected):
    return ((got.float() - expected.float()).norm() / expected.float().norm()).item()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Factory: (transformers model in fp32 on CPU, its save_pretrained directory) per family."""
    made = {}

    def make(case):
        if case not in made:
            hf = build_hf(case)
            path = tmp_path_factory.mktemp(case)
            hf.save_pretrained(path)
            made[case] = hf, path
        return made[case]
    return make


@pytest.mark.parametrize("case", FAMILIES)
def test_fp32_logits_match_transformers(case, pair, device):
    hf, path = pair(case)
    hf = copy.deepcopy(hf).to(device)
    ours = load_pretrained(path, dtype=torch.float32, device=device).eval()
    ids = _ids(hf.config.vocab_size).to(device)
    with torch.no_grad():
        got, expected = ours(ids), hf(ids).logits
    assert got.device.type == device.type
    assert_close(got, expected, **FP32)


@pytest.mark.parametrize("case", FAMILIES)
@pytest.mark.parametrize("mode", ["bf16_weights", "autocast"])
def test_bf16_no_further_from_fp32_than_transformers(case, mode, pair, device):
    hf, path = pair(case)
    ids = _ids(hf.config.vocab_size).to(device)
    hf_fp32 = copy.deepcopy(hf).to(device)
    with torch.no_grad():
        reference = hf_fp32(ids).logits
        if mode == "bf16_weights":
            ours = load_pretrained(path, dtype=torch.bfloat16, device=device).eval()
            got, theirs = ours(ids), copy.deepcopy(hf).to(device, torch.bfloat16)(ids).logits
            assert got.dtype == torch.bfloat16
        else:
            ours = load_pretrained(path, dtype=torch.float32, device=device).eval()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                got, theirs = ours(ids), hf_fp32(ids).logits
    ours_error, theirs_error = relative_error(got, reference), relative_error(theirs, reference)
    # both round to bf16 in different places; a real bug is off by O(1), not by a factor of 2
    assert ours_error < 2 * theirs_error + 1e-3, (ours_error, theirs_error)
    assert ours_error < 0.05


@pytest.mark.parametrize("case", ["llama_gqa_untied", "qwen2_qkv_bias_tied"])
def test_left_padded_batch_matches_transformers_with_attention_mask(case, pair, device):
    # our boolean segment mask through SDPA (pad = segment 0) against transformers' padding mask
    hf, path = pair(case)
    hf = copy.deepcopy(hf).to(device)
    ours = load_pretrained(path, dtype=torch.float32, device=device).eval()
    lengths = torch.tensor([40, 25, 7])
    ids = _ids(hf.config.vocab_size)
    real = torch.arange(40)[None, :] >= (40 - lengths)[:, None]
    positions = (real.long().cumsum(1) - 1).clamp(min=0)
    ids, real, positions = ids.to(device), real.to(device), positions.to(device)
    with torch.no_grad():
        expected = hf(ids, attention_mask=real.long(), position_ids=positions).logits
        got = ours(ids, positions=positions, segment_ids=real.to(torch.int32))
    assert_close(got[real], expected[real], **FP32)


def test_packed_segments_match_separate_sequences(pair, device):
    hf, path = pair("qwen3_qk_norm_head_dim")
    ours = load_pretrained(path, dtype=torch.float32, device=device).eval()
    ids = _ids(hf.config.vocab_size, batch=1, length=48).to(device)
    cuts = [0, 13, 30, 48]
    segment_ids = torch.cat([torch.full((b - a,), s + 1) for s, (a, b) in enumerate(zip(cuts, cuts[1:]))])
    positions = torch.cat([torch.arange(b - a) for a, b in zip(cuts, cuts[1:])])
    with torch.no_grad():
        packed = ours(ids, positions=positions[None].to(device),
                      segment_ids=segment_ids[None].to(device, torch.int32))
        for a, b in zip(cuts, cuts[1:]):
            assert_close(packed[:, a:b], ours(ids[:, a:b]), **FP32)


@pytest.mark.parametrize("autocast", [False, True])
def test_selected_rows_match_the_full_forward_with_gradients(autocast, pair, device):
    hf, path = pair("qwen2_qkv_bias_tied")
    ids = _ids(hf.config.vocab_size).to(device)
    rows = torch.tensor([0, 5, 6, 39, 41, 70, 119], device=device)
    probe = torch.randn(len(rows), hf.config.hidden_size, generator=torch.Generator().manual_seed(2))
    results = []
    for select in (None, rows):
        model = load_pretrained(path, dtype=torch.float32, device=device).train()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            hidden = model(ids, return_hidden=True, rows=select)
        hidden = hidden.flatten(0, 1)[rows] if select is None else hidden
        (hidden.float() * probe.to(device)).sum().backward()
        results.append([hidden.detach().float()] + [p.grad for p in model.parameters()])
    for full, selected in zip(*results):
        if autocast:  # matmuls of other shapes round differently in bf16: compare whole tensors
            assert relative_error(selected, full) < 1e-2
        else:
            assert_close(selected, full, **FP32)
