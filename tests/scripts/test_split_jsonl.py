"""scripts/split_jsonl.py: a disjoint seeded split; unreadable input and an earlier different
split are one-line errors, never a traceback or a silently replaced file."""
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROWS = [json.dumps({"doc_id": i // 2, "question": f"q{i}"}) + "\n" for i in range(40)]  # two rows a doc


def split(*args):
    return subprocess.run([sys.executable, "scripts/split_jsonl.py", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True)


def lines(path):
    return gzip.open(path, "rt", encoding="utf-8").readlines()


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(gzip.compress("".join(ROWS).encode()))
    return path


def test_split_is_disjoint_by_doc_and_a_rerun_keeps_it(src, tmp_path):
    out = tmp_path / "split"
    assert split(src, "--out", out, "--test-size", 5).returncode == 0
    train, test = lines(out / "train.jsonl.gz"), lines(out / "test.jsonl.gz")
    assert sorted(train + test) == sorted(ROWS) and len(test) == 10
    assert not {json.loads(r)["doc_id"] for r in train} & {json.loads(r)["doc_id"] for r in test}
    again = split(src, "--out", out, "--test-size", 5)  # the same split again: nothing to refuse
    assert again.returncode == 0 and lines(out / "test.jsonl.gz") == test


def cases(src, tmp_path):
    whole = src.read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[:len(whole) // 2])
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(ROWS[0].encode() + '{"doc_id": 99, "question": "caf\xe9"}\n'.encode("latin-1"))
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(ROWS[0] + "{not json\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    earlier = tmp_path / "earlier"
    assert split(src, "--out", earlier, "--test-size", 5).returncode == 0
    return {
        "truncated_gz": ([cut, "--out", tmp_path / "o1"], f"{cut}: unreadable after line"),
        "not_utf8": ([latin, "--out", tmp_path / "o2"], f"{latin}:2: not UTF-8 (byte 0xe9 at column 32)"),
        "bad_json": ([bad_json, "--out", tmp_path / "o3"], f"{bad_json}:2: not valid JSON"),
        "out_is_a_file": ([src, "--out", a_file], f"--out {a_file}: is a file"),
        "other_split_present": ([src, "--out", earlier, "--test-size", 6],
                                f"{earlier / 'train.jsonl.gz'}: exists with other rows"),
    }


@pytest.mark.parametrize("case", ["truncated_gz", "not_utf8", "bad_json", "out_is_a_file", "other_split_present"])
def test_failure_is_one_line(case, src, tmp_path):
    args, expected = cases(src, tmp_path)[case]
    before = lines(tmp_path / "earlier" / "test.jsonl.gz")
    result = split(*args, *([] if "--test-size" in args else ["--test-size", 1]))
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr
    assert lines(tmp_path / "earlier" / "test.jsonl.gz") == before
    assert (tmp_path / "a_file").read_text() == "keep"
    assert not list(tmp_path.glob("o*"))  # nothing written for a failed split
