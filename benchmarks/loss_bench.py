"""Naive vs fused chunked weighted linear cross-entropy: time (forward + backward) and peak extra memory.

    python benchmarks/loss_bench.py                      # CPU, the full table (several minutes)
    python benchmarks/loss_bench.py --device cuda        # same table on a GPU, with peers if importable
    python benchmarks/loss_bench.py --tokens 512 --vocab 32000   # a quick small run

Cases: 4,096 tokens, hidden 896, vocab 151,936 (the Qwen2.5-0.5B output layer); fp32 and bf16
autocast (fp32 weights, matmuls in bf16); stage 1 (every token weighted) and stage 2 (5% of the
tokens weighted, the rest weight 0). Peers on CUDA when importable: Liger Kernel's fused linear
cross-entropy and Apple's Cut Cross-Entropy (given the 0/1 weights as ignore_index targets).

Memory method. Each (implementation, case) runs in a fresh subprocess so no allocator state leaks
between cases. The child builds the inputs and, except for the naive loss (nothing to compile),
runs forward + backward once as a warm-up (torch.compile), drops the gradients, then measures one
more forward + backward:
  * CPU: it resets the kernel's peak-RSS counter (writing 5 to /proc/self/clear_refs resets VmHWM,
    Linux >= 4.0), reads VmRSS as the baseline, runs, and reports VmHWM - baseline. Tensors this
    size are mmap-ed by glibc and unmapped when freed, so the RSS follows the live tensors; the
    gradients of hidden and weight (needed by every method) are included in the peak.
  * CUDA: torch.cuda.max_memory_allocated() - memory_allocated() before the run.
"grads MiB" is the size of the two gradients every method must return (hidden and weight, fp32
here); "working MiB" = peak extra - grads, the loss's own temporaries (logits, casts, buffers).
Time is the minimum over the timed repeats (the measured run plus --repeats - 1 more), because the
machine is shared and noise only ever adds time.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchmarks.proc_status import reset_peak_rss, status_bytes  # noqa: E402
from training.machine import header as machine_header  # noqa: E402

IMPLEMENTATIONS = ("naive", "ours", "liger", "cce")


def make_case(tokens, hidden_size, vocab, stage, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, hidden_size, generator=gen).to(device).requires_grad_(True)
    weight = (torch.randn(vocab, hidden_size, generator=gen) * 0.02).to(device).requires_grad_(True)
    targets = torch.randint(0, vocab, (tokens,), generator=gen).to(device)
    if stage == 1:
        token_weights = torch.ones(tokens)
    else:
        token_weights = (torch.rand(tokens, generator=gen) < 0.05).float()
    return hidden, weight, targets, token_weights.to(device)


def loss_function(name, chunk_size, compile):
    if name == "naive":
        from loss.reference import naive_weighted_cross_entropy
        return lambda h, w, t, tw: naive_weighted_cross_entropy(h, w, t, tw)[0]
    if name == "ours":
        from loss import weighted_linear_cross_entropy
        return lambda h, w, t, tw: weighted_linear_cross_entropy(
            h, w, t, tw, chunk_size=chunk_size, compile=compile)[0]
    if name == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        liger = LigerFusedLinearCrossEntropyLoss(reduction="sum")
        return lambda h, w, t, tw: liger(w, h, torch.where(tw > 0, t, -100))
    if name == "cce":
        from cut_cross_entropy import linear_cross_entropy
        return lambda h, w, t, tw: linear_cross_entropy(h, w, torch.where(tw > 0, t, -100),
                                                        reduction="sum")
    raise ValueError(f"--impl: unknown implementation {name!r}")


def run_child(args):
    """One implementation on one case; prints a JSON line with seconds and peak extra bytes."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    hidden, weight, targets, token_weights = make_case(args.tokens, args.hidden, args.vocab,
                                                       args.stage, device)
    fn = loss_function(args.impl, args.chunk_size, not args.no_compile)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def step():
        with autocast:
            loss = fn(hidden, weight, targets, token_weights)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        value = loss.item()
        hidden.grad = weight.grad = None
        return value

    if args.impl != "naive":
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        baseline = status_bytes("VmRSS")
    start = time.perf_counter()
    loss_value = step()
    times = [time.perf_counter() - start]
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda" else status_bytes("VmHWM"))
    for _ in range(args.repeats - 1):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    grad_bytes = sum(t.numel() * t.element_size() for t in (hidden, weight))
    print(json.dumps({"seconds": min(times), "peak_extra_bytes": peak - baseline,
                      "grad_bytes": grad_bytes, "loss": loss_value}))


def run_case(args, impl, dtype, stage):
    command = [sys.executable, os.path.abspath(__file__), "--child", "--impl", impl, "--dtype", dtype,
               "--stage", str(stage), "--device", args.device, "--tokens", str(args.tokens),
               "--hidden", str(args.hidden), "--vocab", str(args.vocab),
               "--chunk-size", str(args.chunk_size), "--repeats", str(args.repeats)]
    if args.no_compile:
        command.append("--no-compile")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(f"{impl} {dtype} stage {stage} failed:\n{result.stderr[-3000:]}\n")
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def peers_available(device):
    found = []
    for name, module in (("liger", "liger_kernel"), ("cce", "cut_cross_entropy")):
        try:
            __import__(module)
            found.append(name)
        except Exception:
            pass
    return found if device == "cuda" else []


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="default: loss.DEFAULT_CHUNK_SIZE")
    parser.add_argument("--no-compile", action="store_true", help="run our kernel eagerly")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per case (min is kept)")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--stages", default="1,2")
    parser.add_argument("--impls", default=None, help="default: naive,ours + importable peers")
    parser.add_argument("--json", default=None, help="also write every case's result here (a list)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    parser.add_argument("--stage", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.chunk_size is None:
        from loss import DEFAULT_CHUNK_SIZE
        args.chunk_size = DEFAULT_CHUNK_SIZE
    if args.child:
        return run_child(args)

    impls = args.impls.split(",") if args.impls else ["naive", "ours"] + peers_available(args.device)
    print(machine_header(args.device))
    print(f"device {args.device}, {args.tokens} tokens, hidden {args.hidden}, vocab {args.vocab}, "
          f"chunk {args.chunk_size}, compile {not args.no_compile}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    header = ("| dtype | stage | impl | time s | x naive | peak extra MiB | x naive | grads MiB "
              "| working MiB | x naive | loss |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    cases = []
    for dtype in args.dtypes.split(","):
        for stage in (int(s) for s in args.stages.split(",")):
            naive = None
            for impl in impls:
                result = run_case(args, impl, dtype, stage)
                cases.append(dict(impl=impl, dtype=dtype, stage=stage, tokens=args.tokens,
                                  hidden=args.hidden, vocab=args.vocab, result=result))
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump(cases, f, indent=1)
                if result is None:
                    print(f"| {dtype} | {stage} | {impl} | failed |" + " |" * 7, flush=True)
                    continue
                if impl == "naive":
                    naive = result
                time_ratio = f"{result['seconds'] / naive['seconds']:.3f}" if naive else "-"
                mem_ratio = (f"{result['peak_extra_bytes'] / naive['peak_extra_bytes']:.3f}"
                             if naive else "-")
                working = result["peak_extra_bytes"] - result["grad_bytes"]
                working_ratio = (f"{working / (naive['peak_extra_bytes'] - naive['grad_bytes']):.3f}"
                                 if naive else "-")
                print(f"| {dtype} | {stage} | {impl} | {result['seconds']:.2f} | {time_ratio} | "
                      f"{result['peak_extra_bytes'] / 2**20:.0f} | {mem_ratio} | "
                      f"{result['grad_bytes'] / 2**20:.0f} | {working / 2**20:.0f} | "
                      f"{working_ratio} | {result['loss']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
