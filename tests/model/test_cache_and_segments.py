"""KV-cache decoding and segment masks give the same logits as plain full forwards."""
import pytest
import torch
from torch.testing import assert_close

from model import load_pretrained

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module", params=["llama_gqa_untied", "qwen3_qk_norm_head_dim", "smollm3_nope"])
def model(request, hf_checkpoint):
    _, path = hf_checkpoint(request.param)
    return load_pretrained(path).eval()


def _ids(model, shape, seed=3):
    return torch.randint(0, model.config.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_prefill_then_one_token_at_a_time_matches_full_forward(model):
    ids = _ids(model, (2, 12))
    full = model(ids)
    cache = model.new_cache(batch_size=2, max_len=16)
    steps = [model(ids[:, :5], cache=cache)]
    steps += [model(ids[:, t:t + 1], cache=cache) for t in range(5, 12)]
    assert cache.length == 12
    assert_close(torch.cat(steps, dim=1), full, **TOL)


@torch.no_grad()
def test_chunked_prefill_without_segments_is_causal(model):
    ids = _ids(model, (1, 10))
    cache = model.new_cache(1, 10)
    got = torch.cat([model(ids[:, :4], cache=cache), model(ids[:, 4:], cache=cache)], dim=1)
    assert_close(got, model(ids), **TOL)


@torch.no_grad()
def test_left_padded_batch_decodes_like_each_row_alone(model):
    """Rows of different prompt lengths, left-padded: pads are segment 0, real tokens segment 1,
    positions count real tokens only; every decoded step matches the row run alone."""
    lengths, new, width = [7, 4, 2], 5, 7
    rows = [_ids(model, (1, n + new), seed=10 + i)[0] for i, n in enumerate(lengths)]
    pad_id = 0
    prompt = torch.full((3, width), pad_id)
    segments = torch.zeros(3, width, dtype=torch.int32)
    positions = torch.zeros(3, width, dtype=torch.long)
    for i, n in enumerate(lengths):
        prompt[i, width - n:] = rows[i][:n]
        segments[i, width - n:] = 1
        positions[i, width - n:] = torch.arange(n)
    cache = model.new_cache(3, width + new)
    logits = model(prompt, positions=positions, segment_ids=segments, cache=cache)
    got = [[logits[i, -1]] for i in range(3)]
    for step in range(new):
        token = torch.stack([rows[i][lengths[i] + step] for i in range(3)])[:, None]
        pos = torch.tensor(lengths)[:, None] + step
        out = model(token, positions=pos, segment_ids=torch.ones(3, 1, dtype=torch.int32), cache=cache)
        for i in range(3):
            got[i].append(out[i, 0])
    for i, n in enumerate(lengths):
        alone = model(rows[i][None])[0, n - 1:]
        assert_close(torch.stack(got[i]), alone, **TOL)


@torch.no_grad()
def test_decoding_without_segment_ids_continues_each_rows_segment(model):
    ids = _ids(model, (1, 6))
    prompt = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids[:, :4]], dim=1)
    segments = torch.tensor([[0, 0, 1, 1, 1, 1]], dtype=torch.int32)
    positions = torch.tensor([[0, 0, 0, 1, 2, 3]])
    cache = model.new_cache(1, 8)
    model(prompt, positions=positions, segment_ids=segments, cache=cache)
    out = model(ids[:, 4:5], positions=torch.tensor([[4]]), cache=cache)
    assert_close(out[0, 0], model(ids[:, :5])[0, 4], **TOL)


@torch.no_grad()
def test_packed_segments_match_separate_examples(model):
    """Packed rows (segments 1..n, 0 = padding, positions restart per example) give each example
    exactly the logits it gets alone."""
    examples = [_ids(model, (n,), seed=20 + n) for n in (5, 3, 6)]
    packed = torch.cat(examples + [torch.zeros(2, dtype=torch.long)])[None]
    segments = torch.cat([torch.full((len(e),), i + 1) for i, e in enumerate(examples)] + [torch.zeros(2)])
    positions = torch.cat([torch.arange(len(e)) for e in examples] + [torch.arange(2)])[None]
    logits = model(packed, positions=positions, segment_ids=segments.int()[None])
    start = 0
    for e in examples:
        assert_close(logits[0, start:start + len(e)], model(e[None])[0], **TOL)
        start += len(e)
    assert torch.isfinite(logits).all()


@torch.no_grad()
def test_all_ones_segments_equal_plain_causal(model):
    ids = _ids(model, (2, 9))
    assert_close(model(ids, segment_ids=torch.ones(2, 9, dtype=torch.int32)), model(ids), **TOL)


def test_cache_overflow_names_max_len(model):
    cache = model.new_cache(1, 4)
    with pytest.raises(ValueError, match="max_len 4"):
        model(_ids(model, (1, 5)), cache=cache)


@torch.no_grad()
def test_reset_cache_is_reusable_after_a_segmented_batch(model):
    ids = _ids(model, (2, 8))
    cache = model.new_cache(2, 8)
    model(ids[:, :6], segment_ids=torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 2, 2, 2, 2]]), cache=cache)
    cache.reset()
    got = torch.cat([model(ids[:, :3], cache=cache), model(ids[:, 3:5], cache=cache),
                     model(ids[:, 5:6], cache=cache)], dim=1)
    assert_close(got, model(ids[:, :6]), **TOL)
