"""Training step at one model shape, ours against transformers, eager then compiled, on one device:
tokens/s, MFU, peak memory, and our stage 2 / stage 1 step time.

    python benchmarks/step_table.py --device cuda --json step.json     # Qwen2.5-0.5B, 8 x 2048, bf16
    python benchmarks/step_table.py --device cpu --layers 2 --vocab 4096 --batch 2 --seq 64   # smoke

One step as train_bench.py defines it (forward, loss, backward, clip, fused AdamW step, zero_grad),
bf16 autocast over fp32 master weights. Ours: Decoder with row selection + the fused loss.
transformers: Qwen2ForCausalLM built from a config, with our random weights copied in, logits +
F.cross_entropy. Both models live in one process; steps alternate (ours, theirs, theirs, ours,
...) and medians are reported. "compiled": regional torch.compile of every decoder layer on both
sides (and our loss kernel, which is compiled in both modes, as train.py's compile_loss default).

MFU = flops_per_token(seq) x tokens/s / the bf16 rate of an 8192^3 matmul (2048^3 on CPU)
measured in the same process. Peak memory (CUDA only): max_memory_allocated during one step minus
what was allocated before it (both models' weights and optimizer states), plus the side's own
weights and AdamW state: the peak a process holding only that side would reach.
Stage 2 / stage 1: the same batch, stage 1 weighting every target, stage 2 only the Key tokens
(--key-fraction of each row), each with row selection (train.py's default) and without, in a
rotating order. Results go to --json as they are measured, so a run cut short keeps what it had.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from benchmarks.train_bench import (QWEN25_05B, build_hf, build_ours, copy_ours_into_hf, hf_step,  # noqa: E402
                                    make_batch, make_optimizer, matmul_rate, ours_step, timed)


def state_bytes(model, optimizer):
    """Bytes of the model's parameters and of its optimizer's state tensors."""
    tensors = list(model.parameters()) + [t for s in optimizer.state.values() for t in s.values()
                                          if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors)


def measure_peak(run, device):
    """Bytes one call of run() allocates above what was allocated before it (CUDA), else None."""
    if device.type != "cuda":
        run()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


class Results:
    """Rows appended to a JSON file as they come (rewritten whole each time)."""

    def __init__(self, path, meta):
        self.path, self.data = path, dict(meta, speed=[], stages=[])

    def add(self, table, row):
        self.data[table].append(row)
        print(f"  {table}: {json.dumps(row)}", flush=True)
        if self.path:
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.data, f, indent=1)
            os.replace(tmp, self.path)


def speed_rows(mode, ours, hf, batch, weights, args, device, results):
    """Both sides in alternating pairs; a side whose warm-up (compilation) fails is recorded with
    its error and left out, so the other side's row is still measured."""
    sides = {"ours": (ours, make_optimizer(ours)), "transformers": (hf, make_optimizer(hf))}
    runs = {"ours": lambda: ours_step(ours, ours, sides["ours"][1], batch, weights, "bf16", True, True, True),
            "transformers": lambda: hf_step(hf, hf, sides["transformers"][1], batch, "bf16")}
    losses, warmup_s = {}, {}
    for name in list(runs):
        started = time.perf_counter()
        try:
            for _ in range(args.warmup):  # compiles in compiled mode; creates the AdamW state
                losses[name] = runs[name]()
        except Exception as e:  # noqa: BLE001 (recorded, and the other side still runs)
            results.add("speed", dict(mode=mode, side=name, error=f"{type(e).__name__}: {e}"[:2000]))
            del runs[name]
        warmup_s[name] = time.perf_counter() - started
    peaks = {name: measure_peak(run, device) for name, run in runs.items()}
    times = {name: [] for name in runs}
    order = list(runs.items())
    for pair in range(args.pairs):
        for name, run in order if pair % 2 == 0 else order[::-1]:
            times[name].append(timed(run, device)[0])
    rate = matmul_rate("bf16", device)
    tokens, flops = args.batch * args.seq, ours.flops_per_token(args.seq)
    for name in runs:
        model, optimizer = sides[name]
        step_s, peak = statistics.median(times[name]), peaks[name]
        total = None if peak is None else peak + state_bytes(model, optimizer)
        results.add("speed", dict(mode=mode, side=name, step_s=step_s, steps=times[name],
                                  tokens_per_s=tokens / step_s, mfu=flops * tokens / step_s / rate,
                                  matmul_tflops=rate / 1e12, step_peak_gb=None if peak is None else peak / 2**30,
                                  peak_gb=None if total is None else total / 2**30, loss=losses[name],
                                  warmup_s=warmup_s[name]))


def stage_rows(mode, ours, batch, args, device, results):
    optimizer = make_optimizer(ours)
    targets, roles = batch["targets"].flatten(), batch["roles"].flatten()
    weights = {1: ((targets != -100) & (roles != 0)).float(), 2: (roles == 2).float()}
    runs = {f"{stage}{'' if select else ' full'}": (lambda s=stage, sel=select: ours_step(
        ours, ours, optimizer, batch, weights[s], "bf16", True, True, sel))
        for select in (True, False) for stage in (1, 2)}
    for run in runs.values():
        run()
    times = {name: [] for name in runs}
    names = list(runs)
    for turn in range(args.pairs):
        for name in names[turn % 4:] + names[:turn % 4]:
            times[name].append(timed(runs[name], device)[0])
    median = {name: statistics.median(t) for name, t in times.items()}
    for suffix, label in (("", "rows"), (" full", "full")):
        ratios = [b / a for a, b in zip(times["1" + suffix], times["2" + suffix])]
        results.add("stages", dict(mode=mode, selection=label, stage1_s=median["1" + suffix],
                                   stage2_s=median["2" + suffix], ratio=statistics.median(ratios),
                                   key_tokens=int(weights[2].sum())))
    del optimizer


def markdown(data):
    """The two tables of a result dict (as written to --json), as markdown."""
    lines = [f"Model {data['model']} ({data['layers']} layers, vocab {data['vocab']}), batch "
             f"{data['batch']} x {data['seq']}, bf16 autocast, {data['device_name']}; medians of "
             f"{data['pairs']} alternating pairs",
             "", "| mode | side | step s | tokens/s | MFU | vs transformers | peak GB (step above resident) | "
             "vs transformers | warm-up loss |", "|---|---|---|---|---|---|---|---|---|"]
    by_mode = {}
    for row in data["speed"]:
        by_mode.setdefault(row["mode"], {})[row["side"]] = row
    for mode, sides in by_mode.items():
        theirs = sides.get("transformers")
        theirs = None if theirs is None or "error" in theirs else theirs
        for side, row in sides.items():
            if "error" in row:
                lines.append(f"| {mode} | {side} | failed: {row['error'][:200]} |" + " |" * 6)
                continue
            speed = f"{row['tokens_per_s'] / theirs['tokens_per_s']:.2f}x" if theirs else "-"
            memory = (f"{row['peak_gb'] / theirs['peak_gb']:.2f}x"
                      if theirs and row["peak_gb"] is not None else "-")
            peak = "-" if row["peak_gb"] is None else f"{row['peak_gb']:.1f} ({row['step_peak_gb']:.1f})"
            lines.append(f"| {mode} | {side} | {row['step_s']:.3f} | {row['tokens_per_s']:,.0f} | "
                         f"{100 * row['mfu']:.1f}% of {row['matmul_tflops']:.3g} TFLOP/s | {speed} | "
                         f"{peak} | {memory} | {row['loss']:.4f} |")
    if data["stages"]:
        keys = next((row["key_tokens"] for row in data["stages"] if "key_tokens" in row), "?")
        lines += ["", f"Stage 2 (Key tokens only, {keys} of "
                  f"{data['batch'] * data['seq']}) vs stage 1 (every target), ours:", "",
                  "| mode | last layer | stage 1 s | stage 2 s | stage 2 / stage 1 |", "|---|---|---|---|---|"]
        for row in data["stages"]:
            if "error" in row:
                lines.append(f"| {row['mode']} | failed: {row['error'][:200]} | | | |")
                continue
            lines.append(f"| {row['mode']} | {'selected rows' if row['selection'] == 'rows' else 'every position'} | "
                         f"{row['stage1_s']:.3f} | {row['stage2_s']:.3f} | {row['ratio']:.2f}x |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--layers", type=int, default=0, help="0: all 24")
    p.add_argument("--vocab", type=int, default=0, help="0: 151,936")
    p.add_argument("--key-fraction", type=float, default=0.07)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--modes", default="eager,compiled")
    p.add_argument("--no-stages", action="store_true")
    p.add_argument("--json", default=None, help="write the results here as they are measured")
    args = p.parse_args()
    device = torch.device(args.device)
    hf_dict = dict(QWEN25_05B, num_hidden_layers=args.layers or QWEN25_05B["num_hidden_layers"],
                   vocab_size=args.vocab or QWEN25_05B["vocab_size"])
    if args.vocab:  # special token ids inside the smaller vocabulary
        hf_dict.update(bos_token_id=0, eos_token_id=0, pad_token_id=0)
    started = time.perf_counter()
    ours = build_ours(hf_dict, device)
    hf = build_hf(hf_dict, device)
    copy_ours_into_hf(ours, hf)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    results = Results(args.json, dict(model="Qwen2.5-0.5B shape", layers=hf_dict["num_hidden_layers"],
                                      vocab=hf_dict["vocab_size"], batch=args.batch, seq=args.seq,
                                      pairs=args.pairs, device_name=device_name,
                                      params=ours.num_params(), build_s=time.perf_counter() - started))
    print(f"built both models ({ours.num_params() / 1e6:.0f}M parameters) in "
          f"{time.perf_counter() - started:.1f}s on {device_name}", flush=True)
    batch = make_batch(args.batch, args.seq, hf_dict["vocab_size"], args.key_fraction, device)
    weights = (batch["targets"].flatten() != -100).float()
    for mode in args.modes.split(","):
        if mode == "compiled":
            ours.compile_blocks()
            for layer in hf.model.layers:
                layer.compile()
        elif mode != "eager":
            sys.exit(f"--modes: unknown mode {mode!r}; use eager, compiled")
        speed_rows(mode, ours, hf, batch, weights, args, device, results)
        if not args.no_stages:
            try:
                stage_rows(mode, ours, batch, args, device, results)
            except Exception as e:  # noqa: BLE001 (recorded; the next mode still runs)
                results.add("stages", dict(mode=mode, error=f"{type(e).__name__}: {e}"[:2000]))
    print("\n" + markdown(results.data), flush=True)


if __name__ == "__main__":
    main()
