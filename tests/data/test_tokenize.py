"""Truncation accounting, empty datasets and the on-disk cache of tokenised datasets."""
import os

import numpy as np
import pytest

from data import COT, KEY, PROMPT, DataError, Record, build_dataset, load_records

SHORT = Record("What is 1 + 2?", "1 + 2 = 3", "3", "a", "f:1")
LONG = Record("What is 1 + 2?", "1 + 2 = 3\n" * 20, "3", "b", "f:2")


def test_drop_too_long_counts_reason(syn_tok):
    full = build_dataset([SHORT, LONG], syn_tok, max_len=None)
    limit = int(full.lengths[0]) + 5
    ds = build_dataset([SHORT, LONG], syn_tok, max_len=limit)
    assert len(ds) == 1 and ds.records == [SHORT]
    assert ds.stats["kept"] == 1 and ds.stats["dropped"] == 1
    assert ds.stats["reasons"] == {"too_long": 1}
    assert ds.lengths.tolist() == [full.lengths[0]]


def test_prompt_left_cut_keeps_every_response_token(syn_tok):
    full = build_dataset([LONG], syn_tok, max_len=None)
    n_prompt = int((full.roles[0] == PROMPT).sum())
    limit = int(full.lengths[0]) - 4
    ds = build_dataset([LONG], syn_tok, max_len=limit, truncate_mode="prompt_left")
    assert ds.stats["prompt_truncated"] == 1 and ds.stats["dropped"] == 0
    assert ds.lengths[0] == limit
    assert (ds.roles[0] == PROMPT).sum() == n_prompt - 4
    assert np.array_equal(ds.ids[0], full.ids[0][4:])
    # Cutting into the response is never done: too short a limit drops and says why.
    cut = build_dataset([SHORT, LONG], syn_tok, max_len=int(full.lengths[0]) - n_prompt,
                        truncate_mode="prompt_left")
    assert cut.stats["reasons"] == {"too_long_after_prompt_cut": 1} and len(cut) == 1


def test_empty_dataset_is_an_error(syn_tok):
    with pytest.raises(DataError, match="no examples left out of 2.*too_long"):
        build_dataset([SHORT, LONG], syn_tok, max_len=5)


def test_stats_count_roles(syn_tok):
    ds = build_dataset([SHORT], syn_tok, max_len=None)
    roles = ds.roles[0]
    assert ds.stats["key_tokens"] == (roles == KEY).sum() == 4
    assert ds.stats["cot_tokens"] == (roles == COT).sum()
    assert ds.stats["tokens"] == len(roles)
    assert ds.stats["key_share"] == round(4 / (ds.stats["cot_tokens"] + 4), 4)


def test_cache_roundtrip_and_keys(task, syn_tok, tmp_path):
    records = load_records(task["train"])
    cache = str(tmp_path / "cache")
    first = build_dataset(records, syn_tok, max_len=128, cache_dir=cache)
    files = sorted(os.listdir(cache))
    assert len(files) == 2 and any(f.endswith(".npz") for f in files)
    again = build_dataset(records, syn_tok, max_len=128, cache_dir=cache)
    assert sorted(os.listdir(cache)) == files  # hit: nothing new written
    assert all(np.array_equal(a, b) for a, b in zip(first.ids, again.ids))
    assert all(np.array_equal(a, b) for a, b in zip(first.roles, again.roles))
    assert again.records == first.records and again.stats == first.stats
    assert again.ids[0].dtype == np.int32 and again.roles[0].dtype == np.uint8
    # Other settings or other data: another entry.
    build_dataset(records, syn_tok, style="plain", max_len=128, cache_dir=cache)
    build_dataset(records[:-1], syn_tok, max_len=128, cache_dir=cache)
    assert len(os.listdir(cache)) == 6
