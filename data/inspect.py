"""Show one example with its token roles and the dataset's statistics.

    python -m data.inspect --data FILE --format NAME --tokenizer DIR|HUB_NAME [--style tagged|plain]
"""
import argparse
import json
import sys

import numpy as np

from .records import DataError
from .roles import ROLE_NAMES
from .sources import ADAPTERS, load_records
from .tokenize import build_dataset
from .tokenizer import load_tokenizer

COLOURS = ("\033[2m", "\033[34m", "\033[1;32m")  # prompt dim, COT blue, KEY bold green
RESET = "\033[0m"


def show_roles(tok, ids, roles, colour):
    """The example's text, each run of same-role tokens coloured or wrapped in [role: ...]."""
    parts, start = [], 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or roles[end] != roles[start]:
            text = tok.decode(ids[start:end].tolist())
            role = int(roles[start])
            parts.append(f"{COLOURS[role]}{text}{RESET}" if colour
                         else f"[{ROLE_NAMES[role]}: {text}]")
            start = end
    return "".join(parts)


def summary(ds, report):
    lengths = ds.lengths
    lines = [f"records read: {report.get('read')}  format: {report.get('format')}  "
             f"skipped bad: {report.get('skipped') or 0}",
             f"examples kept: {ds.stats['kept']}  dropped: {ds.stats['dropped']} "
             f"{ds.stats['reasons'] or ''}  prompt cut from the left: {ds.stats['prompt_truncated']}",
             "length percentiles: " + "  ".join(
                 f"p{q}={int(np.percentile(lengths, q))}" for q in (0, 50, 90, 99, 100)),
             f"tokens: {ds.stats['tokens']} (prompt {ds.stats['prompt_tokens']}, "
             f"cot {ds.stats['cot_tokens']}, key {ds.stats['key_tokens']})",
             f"share of Key tokens among response tokens: {ds.stats['key_share']:.1%}"]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m data.inspect", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="dataset file (.jsonl, .jsonl.gz, .json, .parquet)")
    p.add_argument("--format", default="auto", choices=["auto", *sorted(ADAPTERS)])
    p.add_argument("--tokenizer", required=True, help="folder with tokenizer.json, or a hub model name")
    p.add_argument("--style", default="tagged", choices=["tagged", "plain"])
    p.add_argument("--template", default="plain", choices=["plain", "chat"])
    p.add_argument("--max-len", type=int, default=2048)
    p.add_argument("--truncate", default="drop", choices=["drop", "prompt_left"])
    p.add_argument("--index", type=int, default=0, help="which kept example to show")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--colour", choices=["auto", "always", "never"], default="auto")
    p.add_argument("--json", action="store_true", help="print the stats as JSON instead")
    args = p.parse_args(argv)
    from model.hub import HubError, resolve_model_dir
    try:
        tok = load_tokenizer(resolve_model_dir(args.tokenizer))
        report = {}
        records = load_records(args.data, args.format, skip_bad=args.skip_bad, limit=args.limit,
                               report=report)
        ds = build_dataset(records, tok, style=args.style, template=args.template,
                           max_len=args.max_len, truncate_mode=args.truncate)
    except (DataError, ValueError, HubError, OSError) as e:  # DataError names file, line and field
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"report": report, **ds.stats}, indent=1))
        return 0
    colour = args.colour == "always" or (args.colour == "auto" and sys.stdout.isatty())
    i = min(max(args.index, 0), len(ds) - 1)
    ids, roles = ds.ids[i], ds.roles[i]
    print(f"example {i} ({ds.records[i].source}, {len(ids)} tokens):")
    print(show_roles(tok, ids, roles, colour))
    if colour:
        print("legend: " + " ".join(f"{c}{n}{RESET}" for c, n in zip(COLOURS, ROLE_NAMES)))
    print()
    print(summary(ds, report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
