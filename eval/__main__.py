"""python -m eval --model DIR --data FILE --format NAME --out DIR: generate, judge, write results."""
import argparse
import json
import os
import sys


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
    p.add_argument("--no-pack", action="store_true",
                   help="plain F.linear matmuls instead of weights prepacked for oneDNN (CPU)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        sys.exit(f"--model {args.model}: no config.json there; pass a Hugging Face model folder")
    tokenizer_dir = args.tokenizer or args.model
    if not os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json")):
        sys.exit(f"--tokenizer {tokenizer_dir}: no tokenizer.json there; pass --tokenizer DIR")
    if not os.path.isfile(args.data):
        sys.exit(f"--data {args.data}: no such file")
    if args.limit is not None and args.limit < 1:
        sys.exit(f"--limit must be >= 1, got {args.limit}")

    from data import load_records, load_tokenizer
    from eval.evaluate import evaluate
    from model.precision import dtype_from_name
    from model import load_pretrained

    tok = load_tokenizer(tokenizer_dir)
    records = load_records(args.data, format=args.format, limit=args.limit)
    if not records:
        sys.exit(f"--data {args.data}: no records read")
    model = load_pretrained(args.model, dtype=dtype_from_name(args.dtype), device=args.device)
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
