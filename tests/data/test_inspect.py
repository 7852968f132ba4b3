"""python -m data.inspect: roles visible in brackets (no tty) and the statistics."""
import json

import pytest

from data.inspect import main


def test_brackets_and_stats(task, capsys):
    assert main(["--data", task["train"], "--tokenizer", task["tokenizer"]]) == 0
    out = capsys.readouterr().out
    assert "[prompt: Problem: What is" in out
    assert "</Thinking>][key: <Answer>" in out and "</Answer><eos>]" in out
    assert "examples kept: 64  dropped: 0" in out and "p50=" in out
    assert "share of Key tokens" in out


def test_colours_plain_style_and_json(task, capsys):
    assert main(["--data", task["train"], "--format", "record", "--tokenizer", task["tokenizer"],
                 "--style", "plain", "--colour", "always"]) == 0
    out = capsys.readouterr().out
    assert "\033[1;32mThe answer is" in out
    assert main(["--data", task["train"], "--tokenizer", task["tokenizer"], "--json",
                 "--max-len", "79"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["kept"] + stats["dropped"] == 64 and stats["reasons"].get("too_long", 0) > 0


def test_error_is_one_line_not_a_traceback(task, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "no final"}\n')
    assert main(["--data", str(bad), "--tokenizer", task["tokenizer"]]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.jsonl:1, field 'answer'" in err


def bad_file(case, task, tmp_path):
    """A path for each kind of unreadable input, and the words its error must contain."""
    import gzip
    lines = open(task["train"], "rb").read()
    if case == "truncated_gz":
        path = tmp_path / "cut.jsonl.gz"
        whole = gzip.compress(lines)
        path.write_bytes(whole[:len(whole) // 2])
        return path, f"{path}: cannot read file: Compressed file ended"
    if case == "not_gzip":
        path = tmp_path / "plain.jsonl.gz"
        path.write_bytes(lines)
        return path, f"{path}: cannot read file: Not a gzipped file"
    if case == "not_utf8":
        path = tmp_path / "latin1.jsonl"
        path.write_bytes(lines.splitlines()[0] + b"\n" + '{"question": "caf\xe9"}\n'.encode("latin-1"))
        return path, f"{path}:2: bytes are not UTF-8"
    if case == "missing":
        return tmp_path / "none.jsonl", "none.jsonl: no such file"
    if case == "tokenizer_dir_without_tokenizer":
        return None, f"{tmp_path}: no tokenizer.json here"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["truncated_gz", "not_gzip", "not_utf8", "missing",
                                  "tokenizer_dir_without_tokenizer"])
def test_unreadable_inputs_are_one_line(case, task, tmp_path, capsys):
    path, expected = bad_file(case, task, tmp_path)
    tokenizer = str(tmp_path) if path is None else task["tokenizer"]
    assert main(["--data", str(path or task["train"]), "--tokenizer", tokenizer]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
