"""Each of the step's CPU shortcuts switched off in turn (and all of them), ours only, one process,
steps alternating: what each one is worth here.

    python benchmarks/step_ablation.py --model demo --rounds 20     # configs/demo.toml's model, 32 x 76
    python benchmarks/step_ablation.py --rounds 3                   # SmolLM2-135M shape, 2 x 256

The step is train_bench.ours_step (forward, fused loss, backward, clip, fused AdamW, zero_grad) at
profile_step.py's shapes, bf16 autocast. Variants: "all" (the code as it is), "all but X" for each
shortcut X (X put back to the path it replaced, by patching the module), and "none" (every one
put back: the step as before them). Reported: median step time per variant and its ratio to "all".
"""
import argparse
import contextlib
import os
import statistics
import sys

import torch
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import profile_step  # noqa: E402
import train_bench as tb  # noqa: E402

import loss.linear_cross_entropy as lce  # noqa: E402
import model.decoder as decoder  # noqa: E402
import training.distributed as distributed  # noqa: E402
from training.machine import header  # noqa: E402

# shortcut -> (object, attribute, the value that restores the path it replaced)
SHORTCUTS = {
    "math attention": (decoder, "MATH_ATTENTION_MAX_KEYS", 0),
    "RMSNorm function": (decoder.RMSNorm, "keeps_only_input", lambda self, x: False),
    "SwiGLU function": (decoder.SwiGLU, "apply",
                        staticmethod(lambda gate_up: checkpoint(decoder.swiglu, gate_up, use_reentrant=False))),
    "tied lookup into the loss gradient": (decoder.Decoder, "_tied_lookup", lambda self, ids: False),
    "loss weight cast once": (lce, "_CAST_ONCE_BYTES", 0),
    "clip skips x1.0": (distributed, "clip_grad_norm",
                        lambda params, max_norm: torch.nn.utils.clip_grad_norm_(params, max_norm).item()),
}


MISSING = object()


@contextlib.contextmanager
def without(names):
    saved = [(obj, attr, vars(obj).get(attr, MISSING)) for obj, attr, _ in (SHORTCUTS[n] for n in names)]
    try:
        for name in names:
            obj, attr, old_path = SHORTCUTS[name]
            setattr(obj, attr, old_path)
        yield
    finally:
        for obj, attr, value in saved:
            if value is MISSING:  # inherited (SwiGLU.apply): drop the patch
                delattr(obj, attr)
            else:
                setattr(obj, attr, value)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("smollm2", "demo"), default="smollm2")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--layers", type=int, default=0)
    args = p.parse_args()
    device = torch.device("cpu")
    print(header(device))
    demo = args.model == "demo"
    hf_dict = profile_step.demo_shape() if demo else tb.shape(tb.SMOLLM2_135M, args.layers)
    batch_size, seq = (32, 76) if demo else (2, 256)
    model = tb.build_ours(hf_dict, device)
    if demo:
        batch = tb.make_batch(batch_size, seq, hf_dict["vocab_size"], 0.06, device, prompt_fraction=0.49)
        weights = ((batch["targets"].flatten() != -100) & (batch["roles"].flatten() != 0)).float()
    else:
        batch = tb.make_batch(batch_size, seq, hf_dict["vocab_size"], 1.0, device)
        weights = (batch["targets"].flatten() != -100).float()
    optimizer = tb.make_optimizer(model)
    variants = {"all": []} | {f"all but {n}": [n] for n in SHORTCUTS} | {"none": list(SHORTCUTS)}
    times = {name: [] for name in variants}

    def step():
        tb.ours_step(model, model, optimizer, batch, weights, "bf16", True, True)

    for names in variants.values():
        with without(names):
            step()  # warm-up of each path
    for r in range(args.rounds):
        order = list(variants.items()) if r % 2 == 0 else list(variants.items())[::-1]
        for name, names in order:
            with without(names):
                times[name].append(tb.timed(step, device)[0])
    base = statistics.median(times["all"])
    title = "demo model (configs/demo.toml)" if demo else "SmolLM2-135M shape"
    print(f"{title}, batch {batch_size} x {seq}, bf16, {torch.get_num_threads()} threads, {args.rounds} rounds, "
          f"load avg {tb.load_average()}\n")
    print("| variant | step ms (median) | / all |\n|---|---|---|")
    for name in variants:
        t = statistics.median(times[name])
        print(f"| {name} | {1e3 * t:.1f} | {t / base:.3f}x |")


if __name__ == "__main__":
    main()
