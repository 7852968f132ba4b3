"""atomic_io: a write that fails leaves the old file whole and no temporary file behind."""
import gzip
import json

import pytest

from atomic_io import atomic_write, write_json


def test_complete_write_replaces_the_file(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")
    write_json(path, {"x": [1, 2]})
    assert json.loads(path.read_text()) == {"x": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_failed_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(path) as f:
            f.write("half of the new")
            raise KeyboardInterrupt
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_opener_and_binary_mode(tmp_path):
    with atomic_write(tmp_path / "a.gz", opener=gzip.open, mode="wt", compresslevel=6) as f:
        f.write("é\n")
    assert gzip.open(tmp_path / "a.gz", "rt", encoding="utf-8").read() == "é\n"
    with atomic_write(tmp_path / "b.bin", "wb") as f:
        f.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
