"""Every adapter on a small fixture in its real format, format detection and every bad input."""
import gzip
import json

import pytest

from data import DataError, load_records
from data.sources import detect_format, last_boxed


def write_jsonl(path, rows, gz=False):
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return str(path)


GSM8K = {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as "
                     "many clips in May. How many clips did Natalia sell altogether?",
         "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
                   "<<48+24=72>>72 clips altogether in April and May.\n#### 72"}
MATH = {"problem": "Simplify $\\frac{1}{2}+\\frac{1}{3}$.", "level": "Level 1", "type": "Algebra",
        "solution": "We get $\\frac{3}{6}+\\frac{2}{6}=\\boxed{\\frac{5}{6}}$."}


def test_gsm8k_strips_calc_by_default(tmp_path):
    path = write_jsonl(tmp_path / "gsm8k.jsonl", [GSM8K])
    (r,) = load_records(path)
    assert r.answer == "72" and r.kind == "number" and r.prompt == GSM8K["question"]
    assert r.thinking == ("Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips "
                          "altogether in April and May.")
    assert r.source == f"{path}:1" and r.id == "gsm8k.jsonl:1"
    (kept,) = load_records(path, format="gsm8k", keep_calc=True)
    assert "<<48/2=24>>" in kept.thinking


def test_math_last_boxed_with_nested_braces(tmp_path):
    (r,) = load_records(write_jsonl(tmp_path / "math.jsonl", [MATH]))
    assert r.answer == "\\frac{5}{6}" and r.kind == "latex" and r.thinking == MATH["solution"]
    assert last_boxed("\\boxed{1} then \\boxed{\\sqrt{x^{2}}}") == "\\sqrt{x^{2}}"
    assert last_boxed("\\boxed{open") is None


def test_tagged(tmp_path):
    row = {"prompt": "2+2?", "response": "<Thinking>2+2=4</Thinking>\n<Answer>4</Answer>"}
    (r,) = load_records(write_jsonl(tmp_path / "t.jsonl", [row]))
    assert (r.prompt, r.thinking, r.answer) == ("2+2?", "2+2=4", "4")


def test_chat_messages_think_and_tagged(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "Be nice."},
                          {"role": "user", "content": "What is 6*7?"},
                          {"role": "assistant", "content": "<think>\n6*7 = 42\n</think>\n\nIt is "
                                                           "$\\boxed{42}$."}]},
            {"messages": [{"role": "user", "content": "1+1?"},
                          {"role": "assistant", "content": "<think>1+1=2</think> 2"}]},
            {"id": "c3", "messages": [{"role": "user", "content": "3?"}, {
                "role": "assistant", "content": "<Thinking>so 3</Thinking><Answer>3</Answer>"}]}]
    a, b, c = load_records(write_jsonl(tmp_path / "chat.jsonl", rows))
    assert (a.prompt, a.thinking, a.answer) == ("What is 6*7?", "6*7 = 42", "42")
    assert (b.thinking, b.answer) == ("1+1=2", "2")
    assert (c.id, c.thinking, c.answer) == ("c3", "so 3", "3")


def test_multiple_choice_hf_arc_and_list_forms(tmp_path):
    rows = [{"id": "Mercury_1", "question": "Which is a metal?",
             "choices": {"text": ["wood", "iron", "glass"], "label": ["1", "2", "3"]},
             "answerKey": "2"},
            {"question_stem": "Sun is a", "choices": ["planet", "star"], "answer": 1,
             "explanation": "The sun is a star."}]
    a, b = load_records(write_jsonl(tmp_path / "mc.jsonl", rows))
    assert a.prompt == "Which is a metal?\nA. wood\nB. iron\nC. glass"
    assert (a.answer, a.kind, a.choices, a.thinking) == ("B", "choice", ["wood", "iron", "glass"], "")
    assert (b.answer, b.thinking) == ("B", "The sun is a star.")


def test_cot_collection(tmp_path):
    row = {"source": "Is 7 prime?", "rationale": "7 has no divisors but 1 and 7.", "target": "yes",
           "task": "x", "type": "CoT"}
    (r,) = load_records(write_jsonl(tmp_path / "cot.jsonl", [row]))
    assert (r.prompt, r.thinking, r.answer, r.kind) == ("Is 7 prime?", row["rationale"], "yes", "text")


def olmo_row(doc, doc_id, task):
    return {"request_type": "loglikelihood", "doc": doc, "doc_id": doc_id, "native_id": doc_id,
            "request": {"context": "Question: ...\nAnswer:", "continuation": " x"}, "idx": 0,
            "task_name": task, "label": doc.get("gold", 0)}


def test_olmo_requests_gz_all_four_tasks(tmp_path):
    gsm = dict(GSM8K, short_answer="72", id=0, choices=["..."])
    math = dict(MATH, index=0, query="Problem:\n...\n\nSolution:", answer="\\frac{5}{6}")
    arc = {"id": "Mercury_SC_407695", "query": "Question: Which rolls farthest?\nAnswer:",
           "choices": ["a ball", "a cube"], "gold": 0}
    obqa_mc = {"id": "8-376", "query": "Question: Sharks live\n A. deep\n B. high\nAnswer:",
               "choices": ["A", "B"], "gold": 1}
    # rc files hold one request per choice: the same doc repeated, kept once.
    rows = [olmo_row(gsm, 0, "gsm8k"), olmo_row(math, 1, "minerva_math_algebra"),
            olmo_row(arc, 2, "arc_challenge"), olmo_row(arc, 2, "arc_challenge"),
            olmo_row(obqa_mc, 3, "openbookqa:mc")]
    path = write_jsonl(tmp_path / "requests.jsonl.gz", rows, gz=True)
    g, m, a, o = load_records(path)
    assert (g.answer, g.id) == ("72", "0") and "<<" not in g.thinking
    assert m.answer == "\\frac{5}{6}" and m.kind == "latex"
    assert a.prompt == "Which rolls farthest?\nA. a ball\nB. a cube" and a.answer == "A"
    assert o.prompt == "Sharks live\nA. deep\nB. high" and o.answer == "B"
    assert o.choices == ["deep", "high"]


def test_record_format_and_limit(task):
    records = load_records(task["train"], limit=5)
    assert len(records) == 5 and records[0].kind == "number"


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist([GSM8K]), str(tmp_path / "g.parquet"))
    assert load_records(str(tmp_path / "g.parquet"))[0].answer == "72"


def test_json_array_file(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([MATH, MATH]))
    assert [r.source.rsplit(":", 1)[1] for r in load_records(str(tmp_path / "a.json"))] == ["1", "2"]


def test_detect_format_names():
    assert detect_format({"question": "q", "answer": "a"}) == "gsm8k"
    assert detect_format({"question": "q", "choices": [], "answerKey": "A"}) == "choice"
    assert detect_format({"foo": 1}) is None


def test_undetectable_format_message(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"foo": 1}])
    with pytest.raises(DataError, match=r"x.jsonl:1.*cannot detect the format.*'foo'.*format="):
        load_records(path)
    with pytest.raises(DataError, match="unknown format 'nope'"):
        load_records(path, format="nope")


BAD = [  # (line content, expected field or None, reason, message)
    (b"{not json", None, "bad_json", "malformed JSON"),
    (b'"a string"', None, "not_an_object", "expected a JSON object"),
    (json.dumps({"answer": "#### 3"}).encode(), "question", "missing_field", "missing field"),
    (json.dumps({"question": 5, "answer": "#### 3"}).encode(), "question", "wrong_type",
     "expected str, got int"),
    (json.dumps({"question": "q", "answer": "x = 3\n####  "}).encode(), "answer", "empty_answer",
     "answer is empty"),
    (json.dumps({"question": "q", "answer": "x = 3"}).encode(), "answer", "no_final_answer", "####"),
    (b'{"question": "q\xff", "answer": "#### 3"}', None, "not_utf8", "not UTF-8"),
]


@pytest.mark.parametrize("line,field,reason,message", BAD)
def test_bad_gsm8k_line_names_file_line_field(tmp_path, line, field, reason, message):
    good = json.dumps(GSM8K).encode()
    path = tmp_path / "bad.jsonl"
    path.write_bytes(good + b"\n\n" + line + b"\n" + good + b"\n")
    with pytest.raises(DataError) as err:
        load_records(str(path), format="gsm8k")
    e = err.value
    assert (e.path, e.line, e.field, e.reason) == (str(path), 3, field, reason)
    assert str(e).startswith(f"{path}:3") and message in str(e)
    if field:
        assert f"field '{field}'" in str(e)
    report = {}
    records = load_records(str(path), format="gsm8k", skip_bad=True, report=report)
    assert len(records) == 2 and report["skipped"] == {reason: 1}
    assert [r.source for r in records] == [f"{path}:1", f"{path}:4"]


@pytest.mark.parametrize("fmt,row,field,reason", [
    ("tagged", {"prompt": "p", "response": "no tags here"}, "response", "no_tags"),
    ("tagged", {"prompt": "p", "response": "<Thinking>t</Thinking><Answer> </Answer>"},
     "response", "empty_answer"),
    ("math", {"problem": "p", "solution": "no box"}, "solution", "no_final_answer"),
    ("chat", {"messages": [{"role": "user", "content": "q"}]}, "messages", "missing_field"),
    ("chat", {"messages": [{"role": "user", "content": "q"},
                           {"role": "assistant", "content": "just 4"}]}, "messages", "no_tags"),
    ("chat", {"messages": "hello"}, "messages", "wrong_type"),
    ("choice", {"question": "q", "choices": ["a", "b"], "answerKey": "E"}, "answer",
     "bad_answer_key"),
    ("cot", {"source": "s", "rationale": "r", "target": ""}, "target", "empty_answer"),
    ("record", {"prompt": "p", "thinking": ["t"], "answer": "1"}, "thinking", "wrong_type"),
    ("olmo", {"doc": {"query": "q"}, "request": {}}, "doc", "unknown_format"),
    ("olmo", {"doc": {"question": "q", "answer": "no hashes"}, "request": {}}, "doc.answer",
     "no_final_answer"),
])
def test_bad_rows_per_format(tmp_path, fmt, row, field, reason):
    path = write_jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(DataError) as err:
        load_records(path, format=fmt)
    assert (err.value.line, err.value.field, err.value.reason) == (1, field, reason)
    assert f"bad.jsonl:1, field '{field}'" in str(err.value)


def test_empty_files_and_all_bad(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(DataError, match="empty.jsonl: the file is empty"):
        load_records(str(tmp_path / "empty.jsonl"))
    (tmp_path / "blank.jsonl").write_bytes(b"\n  \n")
    with pytest.raises(DataError, match="no records"):
        load_records(str(tmp_path / "blank.jsonl"))
    (tmp_path / "allbad.jsonl").write_bytes(b"{bad\n{worse\n")
    with pytest.raises(DataError, match=r"no usable records.*'bad_json': 2"):
        load_records(str(tmp_path / "allbad.jsonl"), format="gsm8k", skip_bad=True)
    with pytest.raises(DataError, match="no such file"):
        load_records(str(tmp_path / "missing.jsonl"))
    (tmp_path / "broken.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read file"):
        load_records(str(tmp_path / "broken.jsonl.gz"))
