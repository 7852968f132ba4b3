"""Training attention, forward + backward: SDPA (the flash kernel on CPU) against
model.decoder.math_attention (two explicit matmuls, bf16 here, and an fp32 softmax); bf16 inputs,
causal, grouped heads; sides alternate, best of 10 steps each.

    python benchmarks/attention_bench.py

The decoder trains with math_attention up to MATH_ATTENTION_MAX_KEYS keys on CPU (model/decoder.py).
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere
from model.decoder import MATH_ATTENTION_MAX_KEYS, math_attention  # noqa: E402
from training.machine import header  # noqa: E402

SHAPES = [(32, 4, 2, 76, 64), (32, 4, 2, 128, 64), (2, 9, 3, 128, 64), (2, 9, 3, 256, 64), (4, 9, 3, 512, 64)]


def step_fn(attend, B, heads, kv_heads, T, D):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, heads, T, D, generator=gen).bfloat16().requires_grad_()
    k, v = (torch.randn(B, kv_heads, T, D, generator=gen).bfloat16().requires_grad_() for _ in range(2))
    grad = torch.randn(B, heads, T, D, generator=gen).bfloat16()
    return lambda: attend(q, k, v).backward(grad)


def timed(step):
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main():
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    sides = {"flash": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
             "math": lambda q, k, v: math_attention(q, k, v, None, True)}
    print(header())
    print(f"{torch.get_num_threads()} threads, load avg {'/'.join(f'{x:.1f}' for x in os.getloadavg())}; "
          f"MATH_ATTENTION_MAX_KEYS = {MATH_ATTENTION_MAX_KEYS}\n")
    print("| B x heads/kv x T x head_dim | flash fwd+bwd ms | math fwd+bwd ms | math / flash |\n|---|---|---|---|")
    for B, heads, kv_heads, T, D in SHAPES:
        steps = {name: step_fn(fn, B, heads, kv_heads, T, D) for name, fn in sides.items()}
        best = {name: float("inf") for name in sides}
        for name, step in steps.items():
            step()  # warm-up
        for _ in range(10):
            for name, step in steps.items():
                best[name] = min(best[name], timed(step))
        print(f"| {B} x {heads}/{kv_heads} x {T} x {D} | {1e3 * best['flash']:.1f} | {1e3 * best['math']:.1f} | "
              f"{best['math'] / best['flash']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
