"""Batched greedy generation tokens/s: eval.generate vs transformers' generate, side by side.

Same random SmolLM2-135M-shaped Llama (30 layers, hidden 576, 9/3 heads, MLP 1536, vocab 49152,
tied) for both, saved with transformers' save_pretrained and loaded with our load_pretrained.
Batch 16 uses prompts of different lengths (left padding). No EOS: every row makes --new tokens.

    python benchmarks/generate_bench.py [--new 32] [--prompt-len 48] [--dtypes float32,bfloat16]
    python benchmarks/generate_bench.py --device cuda --batches 64 --json generate.json
"""
import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere


def smollm2_shaped(layers):
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=layers, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, rope_theta=100000.0,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def make_prompts(batch, prompt_len, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = [prompt_len - (i * prompt_len // (2 * batch)) for i in range(batch)]
    return [torch.randint(3, 49152, (n,), generator=gen).tolist() for n in lengths]


def run_ours(model, prompts, new):
    from eval.generate import generate
    return generate(model, prompts, new, eos_ids=[], batch_size=len(prompts), pad_id=2)


def run_hf(model, prompts, new):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[2] * (width - len(p)) + p for p in prompts], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=2)
    return out[:, width:].tolist()


def best_times(fns, repeats):
    """Best wall time of each function, run interleaved so that load from other processes hits
    both alike; returns (times, results)."""
    times, results = [float("inf")] * len(fns), [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            results[i] = fn()
            times[i] = min(times[i], time.perf_counter() - start)
    return times, results


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--new", type=int, default=32, help="new tokens per row")
    p.add_argument("--prompt-len", type=int, default=48)
    p.add_argument("--batches", default="1,16")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the rows here (a list)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from model import load_pretrained

    hf_fp32 = smollm2_shaped(args.layers)
    with tempfile.TemporaryDirectory() as tmp:
        hf_fp32.save_pretrained(tmp)
        ours_by_dtype = {name: load_pretrained(tmp, dtype=getattr(torch, name), device=args.device)
                         for name in args.dtypes.split(",")}
    from training.machine import header
    print(header(args.device))
    print(f"device={args.device} threads={torch.get_num_threads()} new={args.new} prompt_len<={args.prompt_len} "
          f"layers={args.layers} (tokens/s = rows * new tokens / best of {args.repeats})\n")
    print("| dtype | batch | ours tok/s | transformers tok/s | ratio | same tokens |")
    print("|---|---|---|---|---|---|")
    rows = []
    for name, ours in ours_by_dtype.items():
        hf = smollm2_shaped(args.layers).to(args.device, getattr(torch, name))
        hf.load_state_dict(hf_fp32.state_dict())
        hf.generation_config.eos_token_id = None
        for batch in map(int, args.batches.split(",")):
            prompts = make_prompts(batch, args.prompt_len)
            run_ours(ours, prompts, 2)
            run_hf(hf, prompts, 2)
            (t_ours, t_hf), (got, ref) = best_times(
                [lambda: run_ours(ours, prompts, args.new), lambda: run_hf(hf, prompts, args.new)],
                args.repeats)
            tokens = batch * args.new
            same = sum(a == b for a, b in zip(got, ref))
            print(f"| {name} | {batch} | {tokens / t_ours:.1f} | {tokens / t_hf:.1f} | "
                  f"{t_hf / t_ours:.2f}x | {same}/{batch} rows |", flush=True)
            rows.append(dict(dtype=name, batch=batch, new=args.new, prompt_len=args.prompt_len,
                             layers=args.layers, ours_tokens_per_s=tokens / t_ours,
                             transformers_tokens_per_s=tokens / t_hf, same_rows=same))
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
