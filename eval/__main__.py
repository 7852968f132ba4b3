"""python -m eval --model DIR --data FILE --format NAME --out DIR: generate, judge, write results."""
import argparse
import json
import os
import sys
import tempfile

import torch

RESULT_FILES = ("metrics.json", "predictions.jsonl")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m eval", description=__doc__)
    p.add_argument("--model", required=True, help="Hugging Face model directory (config.json, "
                   "safetensors, tokenizer files)")
    p.add_argument("--data", required=True, help="dataset file (JSONL / JSON / .jsonl.gz)")
    p.add_argument("--format", default="auto", help="data format name for data.load_records")
    p.add_argument("--out", required=True, help="folder for metrics.json and predictions.jsonl")
    p.add_argument("--style", choices=("tagged", "plain"), default="tagged")
    p.add_argument("--template", choices=("plain", "chat"), default="plain")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: --model)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N records only")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", help="auto (the checkpoint's), float32, bfloat16")
    p.add_argument("--autocast", default=None, help="autocast dtype, e.g. bfloat16")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--overwrite", action="store_true",
                   help="replace metrics.json and predictions.jsonl already in --out")
    p.add_argument("--no-pack", action="store_true",
                   help="plain F.linear matmuls instead of weights prepacked for oneDNN (CPU)")
    return p.parse_args(argv)


def check_args(args):
    """Every argument that can be checked before anything is loaded or generated."""
    from model.precision import dtype_from_name
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    for name in ("batch_size", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.temperature >= 0:
        raise ValueError(f"--temperature must be >= 0 (0: greedy), got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    for flag, name in (("--dtype", args.dtype), ("--autocast", args.autocast)):
        try:
            dtype_from_name(name)
        except ValueError as e:
            raise ValueError(f"{flag}: {e}") from None
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ValueError(f"--device {args.device}: not a device name (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: no CUDA device is available")
    check_writable(args.out, args.overwrite)


def check_writable(out, overwrite):
    """Creates --out and writes a probe file there, so that an unwritable folder is found before
    generating rather than after; earlier results there are kept unless overwrite."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out}: is a file; pass a folder for metrics.json and predictions.jsonl")
    earlier = [n for n in RESULT_FILES if os.path.exists(os.path.join(out, n))]
    if earlier and not overwrite:
        raise ValueError(f"--out {out}: holds an earlier evaluation ({', '.join(earlier)}); pass "
                         "--overwrite to replace it or choose another --out")
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write there ({e.strerror or e})") from None


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError) as e:  # data, checkpoint and config errors are ValueErrors
        unnamed = isinstance(e, OSError) and not e.filename  # a failed write names no file
        sys.exit(f"python -m eval: {args.out + ': ' if unnamed else ''}{e}")


def run(args):
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        raise ValueError(f"--model {args.model}: no config.json there; pass a Hugging Face model folder")
    tokenizer_dir = args.tokenizer or args.model
    if not os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json")):
        raise ValueError(f"--tokenizer {tokenizer_dir}: no tokenizer.json there; pass --tokenizer DIR")
    if not os.path.isfile(args.data):
        raise ValueError(f"--data {args.data}: no such file")
    check_args(args)

    from data import load_records, load_tokenizer
    from eval.evaluate import evaluate
    from model import load_pretrained
    from model.precision import dtype_from_name

    tok = load_tokenizer(tokenizer_dir)
    records = load_records(args.data, format=args.format, limit=args.limit)
    if not records:
        raise ValueError(f"--data {args.data}: no records read")
    model = load_pretrained(args.model, dtype=dtype_from_name(args.dtype), device=args.device)
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(f"--tokenizer {tok.path} has {tok.vocab_size} tokens but the model {args.model} "
                         f"has {model.config.vocab_size} embedding rows: not this model's tokenizer")
    metrics = evaluate(model, tok, records, style=args.style, template=args.template,
                       max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                       out_dir=args.out, autocast_dtype=dtype_from_name(args.autocast),
                       temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                       pack_weights=not args.no_pack)
    print(json.dumps(metrics, indent=1))
    print(f"wrote {os.path.join(args.out, 'metrics.json')} and "
          f"{os.path.join(args.out, 'predictions.jsonl')}", file=sys.stderr)
    return metrics


if __name__ == "__main__":
    main()
