import pytest
import torch

from eval.generate import generate

PROMPTS = [[5, 9, 17, 33, 4], [7, 8], [11, 12, 13, 14, 15, 16, 17, 18, 19], [3], [40, 41, 42]]
NEW = 10


def hf_greedy(hf, prompt, max_new_tokens=NEW, eos=None):
    ids = torch.tensor([prompt])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                      do_sample=False, eos_token_id=eos, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def reference(tiny_pair):
    hf, _ = tiny_pair
    return [hf_greedy(hf, p) for p in PROMPTS]


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_greedy_matches_transformers_token_for_token(tiny_pair, reference, batch_size):
    _, ours = tiny_pair
    # batch 5 left-pads prompts of 1..9 tokens together; batch 1 runs each prompt alone
    assert generate(ours, PROMPTS, NEW, eos_ids=[], batch_size=batch_size) == reference


def test_left_padded_batch_matches_transformers_batch(tiny_pair):
    hf, ours = tiny_pair
    width = max(len(p) for p in PROMPTS)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                      eos_token_id=None, pad_token_id=0)
    assert generate(ours, PROMPTS, NEW, eos_ids=[], batch_size=8) == out[:, width:].tolist()


def test_eos_stops_only_its_row_and_is_included(tiny_pair, reference):
    hf, ours = tiny_pair
    eos = reference[0][3]
    got = generate(ours, PROMPTS, NEW, eos_ids=eos, batch_size=8, pad_id=0)
    for prompt, row, full in zip(PROMPTS, got, reference):
        expected = full[:full.index(eos) + 1] if eos in full else full
        assert row == expected
        assert row == hf_greedy(hf, prompt, eos=eos)
    assert len(got[0]) == 4


def test_stop_token_sequence(tiny_pair, reference):
    _, ours = tiny_pair
    stop = reference[2][4:6]
    got = generate(ours, PROMPTS, NEW, eos_ids=[], stop_ids=stop, batch_size=8)
    for row, full in zip(got, reference):
        ends = [i + 2 for i in range(len(full) - 1) if full[i:i + 2] == stop]
        assert row == full[:ends[0]] if ends else row == full
    assert got[2] == reference[2][:6]


class CharTokenizer:
    """Each id decodes to a fixed piece of text; the stop string spans two pieces."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids):
        return "".join(self.pieces.get(i, ".") for i in ids)


def test_stop_string_split_across_tokens(tiny_pair, reference):
    _, ours = tiny_pair
    row = reference[0]
    tok = CharTokenizer({row[5]: "</Ans", row[6]: "wer> trailing"})
    got = generate(ours, PROMPTS[:1], NEW, eos_ids=[], stop_strings=["</Answer>"], tokenizer=tok)
    text = ""
    for n, t in enumerate(row, 1):
        text += tok.decode([t])
        if "</Answer>" in text:
            break
    assert got[0] == row[:n]
    assert n <= 7


def test_max_new_tokens_and_order_restored(tiny_pair, reference):
    _, ours = tiny_pair
    got = generate(ours, PROMPTS, 3, eos_ids=[], batch_size=2)
    assert got == [r[:3] for r in reference]


def test_sampling_is_deterministic_for_a_seed(tiny_pair):
    _, ours = tiny_pair
    a = generate(ours, PROMPTS, NEW, eos_ids=[], temperature=1.5, seed=123, batch_size=8)
    b = generate(ours, PROMPTS, NEW, eos_ids=[], temperature=1.5, seed=123, batch_size=8)
    c = generate(ours, PROMPTS, NEW, eos_ids=[], temperature=1.5, seed=124, batch_size=8)
    assert a == b
    assert a != c
    assert all(len(r) == NEW for r in a)


def test_tiny_top_p_is_greedy(tiny_pair, reference):
    _, ours = tiny_pair
    got = generate(ours, PROMPTS, NEW, eos_ids=[], temperature=1.0, top_p=1e-6, seed=0)
    assert got == reference


def test_bad_arguments_name_the_problem(tiny_pair):
    _, ours = tiny_pair
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(ours, [[1], []], 2, eos_ids=[])
    with pytest.raises(ValueError, match="tokenizer="):
        generate(ours, [[1]], 2, eos_ids=[], stop_strings=["</Answer>"])
    with pytest.raises(ValueError, match="top_p"):
        generate(ours, [[1]], 2, eos_ids=[], top_p=0.0)
