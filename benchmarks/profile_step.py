"""Where a training step's time goes, ours against transformers, by kind of work (torch.profiler).

    python benchmarks/profile_step.py                        # SmolLM2-135M shape, 2 x 256, bf16
    python benchmarks/profile_step.py --compile --batch 4 --seq 512

The step is train_bench.py's (forward, loss, backward, clip_grad_norm_, AdamW, zero_grad) on the
same weights and batch. Each side runs --warmup steps, then --steps profiled steps; every op's
self time (time on the calling thread, children excluded) is put in one bucket:

  matmul      aten::mm / addmm / bmm / linear-like GEMMs (the model's FLOPs)
  attention   scaled_dot_product_* forward and backward kernels
  casts       aten::copy_ / _to_copy (autocast's weight and activation casts, grad casts)
  optimizer   AdamW's fused step, clip_grad_norm_'s norms, zero_grad
  compiled    inductor-generated kernels (our loss chunk; with --compile, the fused layers)
  other       every other op (elementwise, reductions, embedding, fills, ...)

The last table is the ceiling argument: matmul + attention run the same kernels on the same
shapes on both sides, so a side can be at most t_transformers / (matmul + attention) faster than
transformers even with everything else removed.
"""
import argparse
import collections
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_bench as tb  # noqa: E402

BUCKETS = ("matmul", "attention", "casts", "optimizer", "compiled", "other")


def bucket(name):
    lowered = name.lower()
    if "scaled_dot_product" in lowered or "flash_attention" in lowered:
        return "attention"
    if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation",
                "mkldnn::_linear_pointwise"):
        return "matmul"
    if name in ("aten::copy_", "aten::_to_copy"):
        return "casts"
    if ("adamw" in lowered or "norm" in lowered and "vector_norm" in lowered
            or "zero_grad" in lowered or "_foreach" in lowered):
        return "optimizer"
    if "compiledfxgraph" in lowered or lowered.startswith("cpp_fused") or "graph_" in lowered:
        return "compiled"
    return "other"


def profile_side(run, steps):
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run()
    totals = collections.Counter()
    for event in prof.key_averages():
        totals[bucket(event.key)] += event.self_cpu_time_total / 1e3 / steps  # ms per step
    return totals


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--layers", type=int, default=0, help="SmolLM2 layers (0: all 30)")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--compile", action="store_true", help="regional compile, both sides")
    parser.add_argument("--no-recompute", action="store_true",
                        help="ours with recompute_elementwise = False")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    args.grad_ckpt = False
    device = torch.device("cpu")
    hf_dict = tb.shape(tb.SMOLLM2_135M, args.layers)
    ours = tb.build_ours(hf_dict, device)
    hf = tb.build_hf(hf_dict, device)
    tb.copy_ours_into_hf(ours, hf)
    ours_forward, hf_forward = tb.compiled(ours, args), tb.compiled(hf, args)
    batch = tb.make_batch(args.batch, args.seq, hf_dict["vocab_size"], 1.0, device)
    weights = (batch["targets"].flatten() != -100).float()
    opt_ours, opt_hf = tb.make_optimizer(ours), tb.make_optimizer(hf)
    sides = {
        "ours": lambda: tb.ours_step(ours, ours_forward, opt_ours, batch, weights, args.precision,
                                     True, True),
        "transformers": lambda: tb.hf_step(hf, hf_forward, opt_hf, batch, args.precision),
    }
    step_ms, totals = {}, {}
    for name, run in sides.items():
        for _ in range(args.warmup):
            run()
        step_ms[name] = 1e3 * min(tb.timed(run, device)[0] for _ in range(args.steps))
        totals[name] = profile_side(run, args.steps)
    print(f"SmolLM2-135M shape ({hf_dict['num_hidden_layers']} layers), batch {args.batch} x seq "
          f"{args.seq}, {args.precision}, compile={'on' if args.compile else 'off'}, "
          f"{torch.get_num_threads()} threads, load avg {tb.load_average()}; ms per step "
          f"(profiled self time, mean of {args.steps} steps)\n")
    print("| bucket | ours ms | transformers ms | transformers - ours |")
    print("|---|---|---|---|")
    for key in BUCKETS:
        o, h = totals["ours"][key], totals["transformers"][key]
        print(f"| {key} | {o:.0f} | {h:.0f} | {h - o:+.0f} |")
    o_sum, h_sum = sum(totals["ours"].values()), sum(totals["transformers"].values())
    print(f"| sum of self times | {o_sum:.0f} | {h_sum:.0f} | {h_sum - o_sum:+.0f} |")
    print(f"| step wall time (best unprofiled) | {step_ms['ours']:.0f} | "
          f"{step_ms['transformers']:.0f} | {step_ms['transformers'] - step_ms['ours']:+.0f} |")
    shared = totals["ours"]["matmul"] + totals["ours"]["attention"]
    print(f"\nspeed-up now: {step_ms['transformers'] / step_ms['ours']:.2f}x; ceiling with "
          f"nothing but ours' matmul + attention ({shared:.0f} ms): "
          f"{h_sum / shared:.2f}x transformers' profiled sum; a 1.3x step needs ours at "
          f"<= {step_ms['transformers'] / 1.3:.0f} ms, i.e. at most "
          f"{step_ms['transformers'] / 1.3 - shared:.0f} ms outside matmul + attention "
          f"(now {step_ms['ours'] - shared:.0f} ms)")


if __name__ == "__main__":
    main()
