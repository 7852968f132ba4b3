"""The paper's four data sets from the Hugging Face Hub -> JSONL records with fixed splits.

    python -m data.fetch --out downloads/paper                      # all four (about 4.5 GB downloaded)
    python -m data.fetch --out downloads/paper --only gsm8k openbookqa
    HF_HUB_OFFLINE=1 python -m data.fetch --out downloads/paper     # from the hub cache only

For each data set, OUT/<name>/{train,validation,test}.jsonl hold canonical records (`id`, `prompt`,
`thinking`, `answer`, `kind`, `choices`; data_format "record", detected automatically) converted by
the adapters of data/sources.py; OUT/manifest.json holds where every file came from (repository,
commit, SHA-256 of each hub file), the split rule, row counts, SHA-256 of each output file, and the
rows skipped with the first errors (file:row, field). The official splits are kept where the hub
has them; a missing validation or test split is a seeded random draw of --held-out rows from the
rest (the same files and seed give the same split). train.jsonl is in a seeded random order, so
train.py's `limit_train = N` reads a random sample of N. A bad row is skipped and counted (--strict:
stop at it with file:row, field). Downloads go through huggingface_hub (HF_HOME, HF_HUB_OFFLINE,
HF_TOKEN as usual), data files only, never the repositories' loading scripts.

| name | hub repository (config) | reasoning (<Thinking>) | answer (<Answer>) | splits |
|---|---|---|---|---|
| gsm8k | openai/gsm8k (main) | worked solution before "#### N", <<calc>> removed | N | train, test; validation drawn from train |
| openr1_math | open-r1/OpenR1-Math-220k (default) | `solution` (NuminaMath; our choice) | `answer` | train; validation and test drawn |
| openbookqa | allenai/openbookqa (additional) | `fact1` | option letter | train, validation, test |
| cot_collection | kaist-ai/CoT-Collection (en) | `rationale` | `target` | train; validation and test drawn |

OpenBookQA's "additional" config is the "main" config (same ids, questions and splits) plus the
fact each question was written from; without it the tagged response would have no reasoning.
OpenR1-Math: the paper does not say which reasoning it used; the R1 traces (`generations`) run to
16k tokens, beyond batch 32 per 40 GB GPU, so the NuminaMath solution is ours.
"""
import argparse
import glob
import hashlib
import json
import os
import sys
from collections import Counter

import numpy as np

from .hub_rows import json_object_members, parquet_rows
from .records import DataError, Record
from .sources import ADAPTERS, _kind

SPLITS = ("train", "validation", "test")
MAX_ERRORS_KEPT = 20


def openr1_row(row):
    answer = row.get("answer")
    kind = "number" if isinstance(answer, str) and _kind(answer) == "number" else "latex"
    return dict(prompt=row.get("problem"), thinking=row.get("solution"), answer=answer, kind=kind)


def openbookqa_row(row):
    return {**row, "explanation": row.get("fact1")}


PAPER = {
    "gsm8k": dict(repo="openai/gsm8k", config="main", adapter="gsm8k", id=None,
                  files={"train": "main/train-*.parquet", "test": "main/test-*.parquet"},
                  columns=["question", "answer"]),
    "openr1_math": dict(repo="open-r1/OpenR1-Math-220k", config="default", adapter="record", id="uuid",
                        files={"train": "data/train-*.parquet"}, to_row=openr1_row,
                        columns=["uuid", "problem", "solution", "answer"]),
    "openbookqa": dict(repo="allenai/openbookqa", config="additional", adapter="choice", id="id",
                       files={"train": "additional/train-*.parquet", "validation": "additional/validation-*.parquet",
                              "test": "additional/test-*.parquet"}, to_row=openbookqa_row,
                       columns=["id", "question_stem", "choices", "answerKey", "fact1"]),
    "cot_collection": dict(repo="kaist-ai/CoT-Collection", config="en", adapter="cot", id="id",
                           files={"train": "data/CoT_collection_en.json"}, columns=None),
}


def source_rows(path, spec):
    """(row number, row) of one hub file of a data set."""
    if path.endswith(".parquet"):
        yield from parquet_rows(path, spec["columns"])
    else:  # CoT-Collection: {"<id>": {source, target, rationale, task, type}, ...}
        for n, key, value in json_object_members(path):
            yield n, ({**value, "id": key} if isinstance(value, dict) else value)


def convert_rows(name, snapshot, strict=False, limit=None):
    """{hub split: [record as a JSON line, ...]}, skip counts, the first errors and the hub files'
    SHA-256, for one data set."""
    spec = PAPER[name]
    kept, skipped, errors, inputs = {}, Counter(), [], {}
    for split, pattern in spec["files"].items():
        files = sorted(glob.glob(os.path.join(snapshot, pattern)))
        if not files:
            raise DataError(f"{name}: no file matching {pattern} in {snapshot}", reason="missing_file")
        kept[split] = []
        for path in files:
            rel = os.path.relpath(path, snapshot)
            inputs[rel] = sha256(path)
            for n, row in source_rows(path, spec):
                if limit and len(kept[split]) >= limit:
                    break
                try:
                    if not isinstance(row, dict):
                        raise DataError(f"expected an object, got {type(row).__name__}", reason="not_an_object")
                    fields = ADAPTERS[spec["adapter"]](spec.get("to_row", dict)(row))
                except DataError as e:
                    e = DataError(e.message, path=rel, line=n, field=e.field, reason=e.reason)
                    if strict:
                        raise e from None
                    skipped[e.reason] += 1
                    if len(errors) < MAX_ERRORS_KEPT:
                        errors.append(str(e))
                    continue
                rid = row.get(spec["id"]) if spec["id"] else None
                rid = str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) else f"{rel}:{n}"
                record = Record(id=rid, source=f"{rel}:{n}", **fields).to_dict()
                kept[split].append(json.dumps(record, ensure_ascii=False))  # one str per row: 1.8M rows fit
    return kept, dict(skipped), errors, inputs


def assign_splits(kept, held_out, seed):
    """{split: records}: the hub's own splits, and missing validation / test drawn from train; train
    in the seeded random order, the held-out splits in the hub's order."""
    train = kept["train"]
    missing = [s for s in ("validation", "test") if s not in kept]
    if len(train) <= held_out * len(missing):
        raise DataError(f"{len(train)} training rows: too few to hold out {held_out} for each of {missing}")
    order = np.random.default_rng(seed).permutation(len(train))
    drawn, out = {}, {}
    for k, split in enumerate(missing):
        drawn[split] = sorted(order[k * held_out:(k + 1) * held_out].tolist())
    out["train"] = [train[i] for i in order[len(missing) * held_out:]]  # shuffled: limit_train = N is a sample
    for split in ("validation", "test"):
        out[split] = kept[split] if split in kept else [train[i] for i in drawn[split]]
    return out


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_jsonl(path, lines):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
    os.replace(tmp, path)  # a half-written split is never read as a whole one


def fetch(name, out, held_out=500, seed=0, strict=False, limit=None, revision=None, snapshot=None):
    """Download (unless snapshot, a local folder laid out like the repository, is given), convert and
    write one data set; returns its manifest entry."""
    spec = PAPER[name]
    if snapshot is None:
        from model.hub import snapshot as hub_snapshot
        snapshot = hub_snapshot(spec["repo"], list(spec["files"].values()), repo_type="dataset", revision=revision)
    kept, skipped, errors, inputs = convert_rows(name, snapshot, strict, limit)
    splits = assign_splits(kept, held_out, seed)
    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    files = {}
    for split in SPLITS:
        path = os.path.join(folder, f"{split}.jsonl")
        write_jsonl(path, splits[split])
        files[split] = dict(file=os.path.relpath(path, out), rows=len(splits[split]), sha256=sha256(path))
    drawn = [s for s in ("validation", "test") if s not in kept]
    print(f"{name}: " + ", ".join(f"{s} {files[s]['rows']}" for s in SPLITS)
          + (f"; skipped {sum(skipped.values())} bad row(s) {skipped}" if skipped else ""))
    return dict(repo=spec["repo"], config=spec["config"], commit=os.path.basename(os.path.normpath(snapshot)),
                inputs=inputs, splits=files, hub_splits=sorted(kept), drawn_from_train=drawn,
                held_out=held_out if drawn else 0, seed=seed, limit=limit, skipped=skipped, errors=errors)


def write_manifest(out, entries):
    path = os.path.join(out, "manifest.json")
    manifest = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    manifest.update(entries)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="downloads/paper", help="output folder (default downloads/paper)")
    p.add_argument("--only", nargs="+", choices=sorted(PAPER), help="these data sets only")
    p.add_argument("--held-out", type=int, default=500,
                   help="rows drawn from train for a validation or test split the hub lacks (default 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of those draws (default 0)")
    p.add_argument("--limit", type=int, default=None, help="at most this many rows per hub split (quick trials)")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) of every repository")
    p.add_argument("--strict", action="store_true", help="stop at the first bad row instead of skipping it")
    args = p.parse_args(argv)
    from model.hub import HubError
    os.makedirs(args.out, exist_ok=True)
    entries = {}
    try:
        for name in args.only or list(PAPER):
            entries[name] = fetch(name, args.out, args.held_out, args.seed, args.strict, args.limit, args.revision)
    except (DataError, HubError) as e:
        sys.exit(f"data.fetch: {e}")
    finally:
        if entries:
            print(f"manifest: {write_manifest(args.out, entries)}")


if __name__ == "__main__":
    main()
