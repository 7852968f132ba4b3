"""The built-in task: deterministic, disjoint splits, long CoT vs short Key, reused files."""
import json
import os

import pytest

from data import COT, KEY, build_dataset, load_records, load_tokenizer
from data.synthetic import build_task, generate, train_tokenizer


def test_generate_is_deterministic_and_correct():
    a_train, a_test = generate(50, 10, seed=5)
    b_train, b_test = generate(50, 10, seed=5)
    assert a_train == b_train and a_test == b_test
    assert generate(50, 10, seed=6)[0] != a_train
    for r in a_train + a_test:
        terms = [int(t) for t in r.prompt[len("What is "):-1].split(" + ")]
        assert r.answer == str(sum(terms)) and r.kind == "number"
        assert r.thinking.splitlines()[-1].endswith(f"= {r.answer}")


def test_splits_are_disjoint_by_problem():
    train, test = generate(2000, 300, seed=0, n_terms=2, n_digits=2)
    assert len(train) == 2000 and len(test) == 300
    assert not {r.prompt for r in train} & {r.prompt for r in test}
    assert len({r.prompt for r in train}) == 2000
    # The split is a property of the problem: another seed puts a shared problem on the same side.
    other_train, other_test = generate(2000, 300, seed=1, n_terms=2, n_digits=2)
    assert not {r.prompt for r in train} & {r.prompt for r in other_test}


def test_difficulty_parameters():
    train, _ = generate(20, 2, seed=0, n_terms=(3, 6), n_digits=3, ops="+-")
    n_terms = {r.prompt.count("+") + r.prompt.count(" - ") + 1 for r in train}
    assert n_terms <= set(range(3, 7)) and len(n_terms) > 1
    assert any(" - " in r.prompt for r in train)
    for r in train:
        assert eval(r.prompt[len("What is "):-1]) == int(r.answer)  # noqa: S307 (our own digits)
    with pytest.raises(ValueError, match="could not find"):
        generate(500, 10, seed=0, n_terms=2, n_digits=1)


def test_build_task_files_tokenizer_and_lengths(tmp_path):
    paths = build_task(str(tmp_path), n_train=200, n_test=20, seed=0)
    tok = load_tokenizer(paths["tokenizer"])
    assert tok.eos_token == "<eos>" and tok.pad_id != tok.eos_id and tok.vocab_size < 200
    train = load_records(paths["train"])
    assert len(train) == 200 and len(load_records(paths["test"])) == 20
    ds = build_dataset(train, tok, style="tagged", max_len=256)
    assert 60 <= ds.stats["lengths"]["p50"] <= 150
    for roles in ds.roles:
        assert (roles == COT).sum() >= 5 * (roles == KEY).sum()
    # Same arguments: files reused untouched; other arguments: regenerated.
    mtime = os.path.getmtime(paths["train"])
    assert build_task(str(tmp_path), n_train=200, n_test=20, seed=0) == paths
    assert os.path.getmtime(paths["train"]) == mtime
    build_task(str(tmp_path), n_train=200, n_test=20, seed=0, n_digits=3)
    assert json.load(open(paths["manifest"]))["n_digits"] == 3
    assert load_records(paths["train"])[0].answer != train[0].answer


def test_tokenizer_is_deterministic_and_covers_ascii():
    a, b = train_tokenizer(), train_tokenizer()
    assert a.to_str() == b.to_str()
    text = "Problem: What is 12 + 7?\nSolution:\n<Thinking>x</Thinking><Answer>19</Answer>"
    enc = a.encode(text)
    assert "<unk>" not in enc.tokens and a.decode(enc.ids) == text
    assert [t for t in enc.tokens if t.isdigit()] == ["1", "2", "7", "1", "9"]


def test_build_task_rejects_unknown_parameter(tmp_path):
    with pytest.raises(TypeError, match="n_term"):
        build_task(str(tmp_path), 10, 2, n_term=3)
