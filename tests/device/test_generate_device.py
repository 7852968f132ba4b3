"""Batched KV-cache generation on the test device (`--device` / SFTKEY_TEST_DEVICE, CPU by
default): fp32 greedy tokens equal transformers' generate on the same device; under bf16 every
generated token is the argmax of our own full forward (no cache) over the same prefix, up to
near-ties of bf16 rounding."""
import copy

import pytest
import torch

from eval.generate import generate
from model import load_pretrained
from tests.model.conftest import build_hf

PROMPTS = [[5, 9, 17, 33, 4], [7, 8], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22], [3], [40, 41, 42]]
NEW = 16
PAD = 0


@pytest.fixture(scope="module", params=["llama_gqa_untied", "qwen2_qkv_bias_tied"])
def pair(request, tmp_path_factory):
    hf = build_hf(request.param, seed=3)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return hf, path


def transformers_greedy(hf, prompts, device):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW,
                          do_sample=False, eos_token_id=None, pad_token_id=PAD)
    return out[:, width:].tolist()


@pytest.mark.parametrize("batch_size", [2, 8])
def test_fp32_greedy_matches_transformers(pair, batch_size, device):
    hf, path = pair
    ours = load_pretrained(path, dtype=torch.float32, device=device)
    expected = transformers_greedy(copy.deepcopy(hf).to(device), PROMPTS, device)
    assert generate(ours, PROMPTS, NEW, eos_ids=[], batch_size=batch_size, pad_id=PAD) == expected


@pytest.mark.parametrize("weights", ["fp32_autocast", "bf16"])
def test_bf16_tokens_are_full_forward_argmax(pair, weights, device):
    _, path = pair
    dtype = torch.bfloat16 if weights == "bf16" else torch.float32
    autocast = torch.bfloat16 if weights == "fp32_autocast" else None
    model = load_pretrained(path, dtype=dtype, device=device)
    got = generate(model, PROMPTS, NEW, eos_ids=[], batch_size=8, pad_id=PAD, autocast_dtype=autocast)
    assert [len(row) for row in got] == [NEW] * len(PROMPTS)
    for prompt, row in zip(PROMPTS, got):
        # one forward over prompt + generated tokens scores every step of this row at once
        ids = torch.tensor([prompt + row[:-1]], device=device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast is not None):
            logits = model(ids)[0, len(prompt) - 1:].float()
        chosen = logits.gather(1, torch.tensor(row, device=device)[:, None]).squeeze(1)
        gap = logits.max(dim=1).values - chosen
        # these logits stay below 4, where bf16 steps are 1/64: the cache path and the full forward
        # round differently by a few steps, so a token within 0.1 of the best is a tie, not an error
        assert gap.max().item() < 0.1, (prompt, row, gap.tolist())
        assert (gap == 0).float().mean().item() >= 0.75, gap.tolist()


def test_blocks_compiled_for_training_generate_eagerly(pair, device):
    # train.py evaluates the model it trained with compile = true: generation must not recompile
    # the blocks at every cache step (it would hit dynamo's recompile limit, seconds each on CUDA)
    from torch._dynamo.utils import counters
    _, path = pair
    model = load_pretrained(path, dtype=torch.float32, device=device)
    expected = generate(model, PROMPTS, NEW, eos_ids=[], batch_size=8, pad_id=PAD)
    model.compile_blocks()
    frames = counters["frames"]["total"]
    assert generate(model, PROMPTS, NEW, eos_ids=[], batch_size=8, pad_id=PAD) == expected
    assert counters["frames"]["total"] == frames
