"""Sampler determinism, resume, sharding; collate targets, roles, packing masks and positions."""
import numpy as np
import pytest
import torch

from data import KEY, PAD, BatchSampler, build_dataset, collate, load_records
from data.batches import pack_rows


class Toy:
    """A dataset of given lengths whose ids are 100*i + position (easy to trace)."""

    def __init__(self, lengths):
        self.ids = [np.arange(n, dtype=np.int32) + 100 * i for i, n in enumerate(lengths)]
        self.roles = [np.array([0] * (n - 2) + [1, 2], dtype=np.uint8) for n in lengths]
        self.lengths = np.array(lengths)


LENGTHS = [5, 9, 3, 7, 12, 4, 8, 6, 10, 2, 11, 5, 7, 3, 9, 6, 4, 8, 12, 5, 6, 3, 7]


@pytest.mark.parametrize("kwargs", [dict(), dict(group_by_length=False), dict(shuffle=False),
                                    dict(max_tokens=24), dict(packed=True, max_tokens=16)])
def test_every_example_once_per_epoch_and_deterministic(kwargs):
    a = BatchSampler(LENGTHS, 4, seed=3, **kwargs)
    b = BatchSampler(LENGTHS, 4, seed=3, **kwargs)
    epoch0 = list(a)
    assert epoch0 == list(b)
    assert sorted(i for batch in epoch0 for i in batch) == list(range(len(LENGTHS)))
    assert a.epoch == 1 and list(a) != epoch0 or not kwargs.get("shuffle", True)


def test_seed_changes_order():
    assert list(BatchSampler(LENGTHS, 4, seed=0)) != list(BatchSampler(LENGTHS, 4, seed=1))


def test_group_by_length_makes_batches_homogeneous():
    lengths = list(np.random.default_rng(0).integers(2, 200, size=400))
    waste = {}
    for group in (True, False):
        s = BatchSampler(lengths, 8, seed=0, group_by_length=group)
        waste[group] = sum(8 * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in s)
    assert waste[True] < 0.2 * waste[False]


def test_max_tokens_caps_padded_batch():
    s = BatchSampler(LENGTHS, 8, seed=0, max_tokens=24)
    for b in s:
        assert len(b) * max(LENGTHS[i] for i in b) <= 24 or len(b) == 1


@pytest.mark.parametrize("kwargs", [dict(), dict(packed=True, max_tokens=16)])
def test_resume_mid_epoch_gives_identical_remaining_batches(kwargs):
    ref = BatchSampler(LENGTHS, 3, seed=7, **kwargs)
    ref.set_epoch(2)
    full = list(ref)
    s = BatchSampler(LENGTHS, 3, seed=7, **kwargs)
    s.set_epoch(2)
    it = iter(s)
    seen = [next(it) for _ in range(3)]
    state = s.state_dict()
    resumed = BatchSampler(LENGTHS, 3, seed=7, **kwargs)
    resumed.load_state_dict(state)
    assert seen + list(resumed) == full
    assert resumed.epoch == 3 and list(resumed) == list(
        BatchSampler(LENGTHS, 3, seed=7, **kwargs).epoch_batches(3))


def test_state_dict_is_json_and_checks_settings():
    import json
    s = BatchSampler(LENGTHS, 3, seed=7)
    state = json.loads(json.dumps(s.state_dict()))
    with pytest.raises(ValueError, match="batch_size"):
        BatchSampler(LENGTHS, 4, seed=7).load_state_dict(state)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_rank_sharding_equal_counts_and_full_coverage(world_size):
    shards = [BatchSampler(LENGTHS, 2, seed=1, rank=r, world_size=world_size)
              for r in range(world_size)]
    batches = [list(s) for s in shards]
    assert len({len(b) for b in batches}) == 1
    assert len({s.batches_per_epoch for s in shards}) == 1
    covered = {i for bs in batches for b in bs for i in b}
    assert covered == set(range(len(LENGTHS)))
    single = BatchSampler(LENGTHS, 2, seed=1).epoch_batches(0)
    assert batches[0][0] == single[0] and batches[1][0] == single[1]


def test_collate_padded_targets_roles_positions():
    ds = Toy([4, 2])
    batch = collate(ds, [0, 1], pad_id=-1)
    assert batch["segment_ids"] is None
    assert batch["input_ids"].tolist() == [[0, 1, 2, 3], [100, 101, -1, -1]]
    assert batch["targets"].tolist() == [[1, 2, 3, -100], [101, -100, -100, -100]]
    assert batch["roles"].tolist() == [[0, 1, 2, PAD], [2, PAD, PAD, PAD]]
    assert batch["positions"].tolist() == [[0, 1, 2, 3], [0, 1, 0, 0]]
    assert batch["input_ids"].dtype == torch.long


def test_collate_packed_segments_positions_and_masks():
    ds = Toy([3, 4, 2, 5])
    batch = collate(ds, [0, 1, 2, 3], pad_id=0, packed=True, max_len=8)
    # Next-fit packing keeps order: [0, 1] (7 tokens), [2, 3] (7 tokens).
    assert pack_rows(ds.lengths, [0, 1, 2, 3], 8) == [[0, 1], [2, 3]]
    assert batch["input_ids"].shape == (2, 8)
    assert batch["segment_ids"].dtype == torch.int32
    assert batch["segment_ids"].tolist() == [[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 2, 2, 2, 2, 2, 0]]
    assert batch["positions"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 0, 1, 2, 3, 4, 0]]
    # No target crosses an example boundary: the last token of each example has none.
    assert batch["targets"].tolist() == [[1, 2, -100, 101, 102, 103, -100, -100],
                                         [201, -100, 301, 302, 303, 304, -100, -100]]
    assert (batch["roles"][batch["targets"] == -100] == PAD).all()
    # Attention mask implied by segment ids: block-diagonal causal, nothing across examples.
    seg = batch["segment_ids"][0]
    allowed = (seg[:, None] == seg[None, :]) & torch.ones(8, 8, dtype=torch.bool).tril()
    assert not allowed[3:7, :3].any() and allowed[6, 3:7].all()


def test_packed_sampler_rows_match_collate(task, syn_tok):
    ds = build_dataset(load_records(task["train"]), syn_tok, max_len=128)
    s = BatchSampler(ds.lengths, 2, seed=0, packed=True, max_tokens=200)
    for b in s:
        batch = collate(ds, b, syn_tok.pad_id, packed=True, max_len=200)
        assert batch["input_ids"].shape[0] <= 2
        assert int((batch["segment_ids"] > 0).sum()) == int(ds.lengths[b].sum())
        n_targets = int((batch["targets"] != -100).sum())
        assert n_targets == int(ds.lengths[b].sum()) - len(b)
        assert int((batch["roles"] == KEY).sum()) == sum(int((ds.roles[i][1:] == KEY).sum())
                                                       for i in b)


def test_packing_rejects_too_long_example():
    with pytest.raises(ValueError, match="example 1 has 9 tokens"):
        pack_rows(np.array([3, 9]), [0, 1], 8)
