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


def _options(record):
    lines = record.prompt.splitlines()[1:]
    return {line[0]: int(line[3:]) for line in lines}


def test_choice_kind_letters_and_near_misses():
    train, test = generate(300, 40, seed=3, n_terms=4, n_digits=1, kind="choice")
    assert generate(300, 40, seed=3, n_terms=4, n_digits=1, kind="choice") == (train, test)
    letters = []
    for r in train + test:
        assert r.kind == "choice" and r.choices is None  # only a letter is a correct answer
        question, *lines = r.prompt.splitlines()
        terms = [int(t) for t in question[len("What is "):-1].split(" + ")]
        total = sum(terms)
        assert [line[:3] for line in lines] == ["A. ", "B. ", "C. ", "D. "]
        values = _options(r)
        assert values[r.answer] == total and sorted(values.values()).count(total) == 1
        previous = sum(terms[:-1])
        for v in values.values():
            assert v >= 0 and (v - total in (0, -10, -2, -1, 1, 2, 10) or v == previous)
        assert len(set(values.values())) == 4
        assert r.thinking.splitlines()[-1].endswith(f"= {total}")  # the reasoning as for numbers
        letters.append(r.answer)
    assert min(letters.count(x) for x in "ABCD") > 40  # the right letter is spread over A-D
    numbers, _ = generate(300, 40, seed=3, n_terms=4, n_digits=1)
    assert [r.thinking for r in numbers] == [r.thinking for r in train]  # same problems, same order


def test_choice_answers_are_checked_as_letters():
    from eval.answers import is_correct
    r = generate(5, 1, seed=0, n_terms=3, n_digits=1, kind="choice")[0][0]
    wrong = next(x for x in "ABCD" if x != r.answer)
    assert is_correct(r.answer, r.answer, r.kind, r.choices)
    assert is_correct(f"({r.answer})", r.answer, r.kind, r.choices)
    assert not is_correct(wrong, r.answer, r.kind, r.choices)
    assert not is_correct(str(_options(r)[r.answer]), r.answer, r.kind, r.choices)  # the number is not the letter


def test_mixed_kind_alternates_within_each_split():
    train, test = generate(40, 10, seed=1, n_terms=4, n_digits=1, kind="mixed")
    for split in (train, test):
        assert [r.kind for r in split] == ["number", "choice"] * (len(split) // 2)
        assert all((r.answer in "ABCD") == (r.kind == "choice") for r in split)
    numbers, _ = generate(40, 10, seed=1, n_terms=4, n_digits=1)
    assert [r.thinking for r in train] == [r.thinking for r in numbers]


def test_validation_split_is_disjoint_and_leaves_test_unchanged(tmp_path):
    train, test, val = generate(3000, 200, seed=0, n_terms=4, n_digits=1, kind="mixed", n_val=300)
    assert len(val) == 300 and {r.id for r in val} == {f"synthetic-val-{i}" for i in range(300)}
    arithmetic = [{r.prompt.splitlines()[0] for r in split} for split in (train, test, val)]
    assert not arithmetic[0] & arithmetic[1] and not arithmetic[0] & arithmetic[2]
    assert not arithmetic[1] & arithmetic[2]
    assert generate(3000, 200, seed=0, n_terms=4, n_digits=1, kind="mixed")[1] == test
    paths = build_task(str(tmp_path), n_train=3000, n_test=200, seed=0, n_terms=4, n_digits=1,
                       kind="mixed", n_val=300)
    assert [r.prompt for r in load_records(paths["val"])] == [r.prompt for r in val]
    assert [r.kind for r in load_records(paths["test"])] == [r.kind for r in test]
    assert "val" not in build_task(str(tmp_path / "b"), n_train=20, n_test=2, seed=0)
    with pytest.raises(ValueError, match="kind must be one of"):
        generate(5, 1, kind="letters")
    with pytest.raises(ValueError, match="val_fraction"):
        generate(5, 1, n_val=5, val_fraction=0.95)
