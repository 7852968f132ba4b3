"""python -m data.inspect: roles visible in brackets (no tty) and the statistics."""
import json

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
