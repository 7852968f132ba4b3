"""Where a training step's time goes, ours against transformers, by kind of work (torch.profiler).

    python benchmarks/profile_step.py                        # SmolLM2-135M shape, 2 x 256, bf16
    python benchmarks/profile_step.py --compile --batch 4 --seq 512
    python benchmarks/profile_step.py --model demo            # configs/demo.toml's model, 32 x 76
    python benchmarks/profile_step.py --ours-only             # our step alone in the process

The step is train_bench.py's (forward, loss, backward, clip_grad_norm_, AdamW, zero_grad) on the
same weights and batch. Each side runs --warmup steps, --steps timed unprofiled steps, then (after
touching and freeing 768 MiB of heap, so that the profiler's own records do not push the step onto
fresh pages) --steps profiled steps; the minor page faults per step of both are printed. Every op's
self time (time on the calling thread, children excluded) is put in one bucket:

  matmul      aten::mm / addmm / bmm / linear-like GEMMs (the model's FLOPs)
  attention   scaled_dot_product_* forward and backward kernels; model.decoder.math_attention's
              ops (short training rows on CPU) and the backward of the nodes they recorded
  casts       aten::copy_ / _to_copy (autocast's weight and activation casts, grad casts)
  optimizer   AdamW's fused step, clip_grad_norm_'s norms, zero_grad
  compiled    inductor-generated kernels (our loss chunk; with --compile, the fused layers)
  other       every other op (elementwise, reductions, embedding, fills, ...)
  python      the own time of the step's ranges and autograd's node wrappers: Python, the
              autograd engine and dispatch between ops (train_bench.phase names the ranges)

A second table per side lists the largest ops of every bucket but matmul and attention, with the
phase they run in (forward, loss, backward and its autograd node, clip, optimizer, zero_grad), their
first input's shape and why they run.

The last table is the ceiling argument: matmul + attention run the same kernels on the same
shapes on both sides, so a side can be at most t_transformers / (matmul + attention) faster than
transformers even with everything else removed.
"""
import argparse
import collections
import os
import resource
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_bench as tb  # noqa: E402
from training.machine import header  # noqa: E402  (train_bench put the repository on the path)

MATH_RANGE = "decoder.math_attention"  # the profiler range label_math_attention puts around it
BUCKETS = ("matmul", "attention", "casts", "optimizer", "compiled", "other", "python")


def bucket(name):
    lowered = name.lower()
    if name == MATH_RANGE:
        return "attention"
    if name.startswith("step.") or name.startswith("autograd::engine::evaluate_function"):
        return "python"  # a range's own time: Python, autograd's engine and dispatch between ops
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


def where(event):
    """(phase, autograd node): the step.* range around the op (train_bench.phase) and, in
    backward, the autograd node whose backward ran it."""
    if event.name.startswith("step."):
        return event.name[5:], ""
    phase, node, parent = "outside", "", event.cpu_parent
    while parent is not None:
        if parent.name.startswith("autograd::engine::evaluate_function: ") and not node:
            node = parent.name.split(": ", 1)[1]
        if parent.name.startswith("step."):
            phase = parent.name[5:]
            break
        parent = parent.cpu_parent
    return phase, node


def label_math_attention():
    """Run model.decoder.math_attention (plain ops) inside a profiler range, so that its ops and
    their backward count as attention; a no-op for code without it."""
    import model.decoder as decoder
    if hasattr(decoder, "math_attention"):
        inner = decoder.math_attention

        def labelled(*args):
            with torch.profiler.record_function(MATH_RANGE):
                return inner(*args)
        decoder.math_attention = labelled


def inside(event, name):
    parent = event.cpu_parent
    while parent is not None:
        if name in parent.name:
            return True
        parent = parent.cpu_parent
    return False


def node_seq(event):
    """The sequence number of the autograd node whose backward ran event (-1 outside backward)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("autograd::engine::evaluate_function: "):
            return parent.sequence_nr
        parent = parent.cpu_parent
    return -1


def reason(op, phase, node, weight_shaped):
    """Why the op runs, for the patterns that make up the non-matmul time."""
    if phase == "optimizer":
        return "fused AdamW: reads param, grad, exp_avg, exp_avg_sq, writes param and both moments"
    if phase == "clip":
        return {"aten::linalg_vector_norm": "clip: a norm per gradient (reads every gradient)",
                "aten::mul_": "clip: every gradient times the clip factor (read + write)",
                "aten::_foreach_mul_": "clip: every gradient times the clip factor (read + write)",
                "aten::_foreach_norm": "clip: a norm per gradient (reads every gradient)"}.get(op, "clip")
    if phase == "zero_grad":
        return "zero_grad(set_to_none): frees the gradients"
    if op in ("aten::copy_", "aten::_to_copy"):
        if node.startswith("ToCopyBackward"):
            return ("bf16 weight gradient -> fp32 (backward of autocast's weight cast)" if weight_shaped
                    else "bf16 activation gradient -> fp32 (backward of an autocast cast)")
        if phase == "forward":
            return ("autocast: fp32 weight -> bf16 copy (once per forward: autocast's cache)"
                    if weight_shaped else "autocast: activation cast (matmul input or norm's fp32)")
        if phase == "loss":
            return "loss: output-weight blocks / hidden cast to bf16 (per chunk and pass)"
    if op == "aten::embedding_dense_backward":
        return "dense [V, H] embedding gradient: zero fill + the batch's rows added"
    if op in ("aten::add_", "aten::add") and weight_shaped and phase == "backward":
        return "tied weight: the embedding and output-layer gradients summed ([V, H])"
    if op in ("aten::fill_", "aten::zero_", "aten::zeros"):
        return "fills (zeroed buffers, gradient accumulators)"
    return ""


def minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def profiled(run, steps):
    """The profiler over steps runs of run, and the minor page faults per step inside them."""
    faults = 0
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            before = minor_faults()
            run()
            faults += minor_faults() - before
    return prof, faults / steps


def heap_headroom(mib=768, block_mib=64):
    """Touch mib MiB of heap in blocks and free them. Under --allocator keep (glibc's mmap threshold
    256 MiB, trim threshold 1 GiB) the blocks come from the heap and their pages stay mapped after
    the free; under glibc's defaults they are mmapped and given back (no effect)."""
    blocks = [torch.ones(block_mib << 20, dtype=torch.uint8) for _ in range(mib // block_mib)]
    del blocks


def profile_side(run, steps, param_shapes=()):
    """ms per step per bucket, per (bucket, op, phase, node, first input shape): [ms, calls], and
    the minor page faults per profiled step. Profiled without room made first, the 135M step took
    tens of thousands of page faults (an unprofiled one a few): the profiler's records most likely
    take heap blocks the step would reuse, its fresh buffers land on new pages, and the faults
    count in the self time of the ops that first write them (mostly copy_). heap_headroom makes
    that room, where the allocator keeps it."""
    heap_headroom()
    prof, faults = profiled(run, steps)
    totals, ops = collections.Counter(), collections.defaultdict(lambda: [0.0, 0])
    events = prof.events()
    # SDPA's math kernel runs as ordinary ops (bmm, softmax, ...): those under it, and in backward
    # those of the autograd nodes it recorded (matched by sequence number), count as attention
    in_sdpa = {id(e) for e in events if inside(e, "scaled_dot_product") or inside(e, MATH_RANGE)}
    sdpa_nodes = {e.sequence_nr for e in events if id(e) in in_sdpa and e.sequence_nr >= 0}
    for event in events:
        if event.name.startswith("ProfilerStep") or event.name == "<forward op>":
            continue
        ms = event.self_cpu_time_total / 1e3 / steps
        kind = bucket(event.name)
        phase, node = where(event)
        if kind != "python" and (id(event) in in_sdpa or node_seq(event) in sdpa_nodes):
            kind = "attention"
        totals[kind] += ms
        shape = tuple(event.input_shapes[0]) if event.input_shapes and event.input_shapes[0] else ()
        entry = ops[(kind, event.name, phase, node, shape)]
        entry[0] += ms
        entry[1] += 1 / steps
    return totals, ops, faults


def print_ops(name, ops, param_shapes, top):
    """The largest ops of each bucket, with where they run and why."""
    print(f"\n{name}: the {top} largest ops of each bucket (ms per step, self time; shape = first input)\n")
    print("| bucket | op | where (phase / backward node) | shape | calls | ms | why |")
    print("|---|---|---|---|---|---|---|")
    for kind in BUCKETS:
        rows = sorted(((v[0], v[1], k) for k, v in ops.items() if k[0] == kind), reverse=True)[:top]
        for ms, calls, (_, op, phase, node, shape) in rows:
            if ms < 0.05:
                continue
            why = reason(op, phase, node, shape in param_shapes)
            spot = phase + (f" / {node}" if node else "")
            print(f"| {kind} | `{op}` | {spot} | {list(shape) if shape else ''} | {calls:.0f} | "
                  f"{ms:.1f} | {why} |")


def print_ours_only(totals, step_ms, faults):
    print("| bucket | ours ms |\n|---|---|")
    for key in BUCKETS:
        print(f"| {key} | {totals[key]:.0f} |")
    outside = sum(totals[key] for key in BUCKETS if key not in ("matmul", "attention"))
    print(f"| outside matmul + attention | {outside:.0f} |")
    print(f"| sum of self times | {sum(totals.values()):.0f} |")
    print(f"| step wall time (best unprofiled) | {step_ms:.0f} |")
    print(f"| minor page faults per step, profiled / unprofiled | {faults[0]:.0f} / {faults[1]:.0f} |")


def demo_shape():
    """configs/demo.toml's model on its synthetic tokenizer's 256 tokens (train_bench.DEMO, 2 layers)."""
    return tb.shape(tb.DEMO, 2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("smollm2", "demo"), default="smollm2",
                        help="demo: configs/demo.toml's model, batch 32 x 76 (defaults), stage-1 weights")
    parser.add_argument("--batch", type=int, default=None, help="default 2 (smollm2), 32 (demo)")
    parser.add_argument("--seq", type=int, default=None, help="default 256 (smollm2), 76 (demo)")
    parser.add_argument("--layers", type=int, default=0, help="SmolLM2 layers (0: all 30)")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--compile", action="store_true", help="regional compile, both sides")
    parser.add_argument("--no-recompute", action="store_true",
                        help="ours with recompute_elementwise = False")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--top", type=int, default=6, help="ops listed per bucket")
    parser.add_argument("--ours-only", action="store_true",
                        help="profile our step alone, no transformers model in the process: its heap "
                             "then holds one model, as train.py's (for comparing checkouts)")
    tb.add_allocator_option(parser)
    args = parser.parse_args()
    args.memory_child = None
    tb.keep_memory(args)
    args.grad_ckpt = False
    device = torch.device("cpu")
    label_math_attention()
    demo = args.model == "demo"
    args.batch = args.batch or (32 if demo else 2)
    args.seq = args.seq or (76 if demo else 256)
    hf_dict = demo_shape() if demo else tb.shape(tb.SMOLLM2_135M, args.layers)
    ours = tb.build_ours(hf_dict, device)
    ours_forward = tb.compiled(ours, args)
    if not args.ours_only:
        hf = tb.build_hf(hf_dict, device)
        tb.copy_ours_into_hf(ours, hf)
        hf_forward = tb.compiled(hf, args)
    if demo:  # the synthetic task's rows: 49% prompt, 6% Key; stage 1 weights CoT and Key
        batch = tb.make_batch(args.batch, args.seq, hf_dict["vocab_size"], 0.06, device, prompt_fraction=0.49)
        weights = ((batch["targets"].flatten() != -100) & (batch["roles"].flatten() != 0)).float()
    else:
        batch = tb.make_batch(args.batch, args.seq, hf_dict["vocab_size"], 1.0, device)
        weights = (batch["targets"].flatten() != -100).float()
    opt_ours = tb.make_optimizer(ours)
    sides = {"ours": lambda: tb.ours_step(ours, ours_forward, opt_ours, batch, weights, args.precision,
                                          True, True)}
    models = {"ours": ours}
    if not args.ours_only:
        opt_hf = tb.make_optimizer(hf)
        sides["transformers"] = lambda: tb.hf_step(hf, hf_forward, opt_hf, batch, args.precision)
        models["transformers"] = hf
    shapes = {name: {tuple(p.shape) for p in model.parameters()} for name, model in models.items()}
    step_ms, totals, ops, faults = {}, {}, {}, {}
    for name, run in sides.items():
        for _ in range(args.warmup):
            run()
        before = minor_faults()
        step_ms[name] = 1e3 * min(tb.timed(run, device)[0] for _ in range(args.steps))
        unprofiled = (minor_faults() - before) / args.steps
        totals[name], ops[name], profiled = profile_side(run, args.steps, shapes[name])
        faults[name] = (profiled, unprofiled)
    title = "demo model (configs/demo.toml)" if demo else "SmolLM2-135M shape"
    print(header(device))
    print(f"{title} ({hf_dict['num_hidden_layers']} layers, vocab {hf_dict['vocab_size']}), batch {args.batch} x seq "
          f"{args.seq}, {args.precision}, compile={'on' if args.compile else 'off'}, "
          f"{torch.get_num_threads()} threads, load avg {tb.load_average()}; ms per step "
          f"(profiled self time, mean of {args.steps} steps)\n")
    if args.ours_only:
        print_ours_only(totals["ours"], step_ms["ours"], faults["ours"])
        print_ops("ours", ops["ours"], shapes["ours"], args.top)
        return
    print("| bucket | ours ms | transformers ms | transformers - ours |")
    print("|---|---|---|---|")
    for key in BUCKETS:
        o, h = totals["ours"][key], totals["transformers"][key]
        print(f"| {key} | {o:.0f} | {h:.0f} | {h - o:+.0f} |")
    o_sum, h_sum = sum(totals["ours"].values()), sum(totals["transformers"].values())
    print(f"| sum of self times | {o_sum:.0f} | {h_sum:.0f} | {h_sum - o_sum:+.0f} |")
    print(f"| step wall time (best unprofiled) | {step_ms['ours']:.0f} | "
          f"{step_ms['transformers']:.0f} | {step_ms['transformers'] - step_ms['ours']:+.0f} |")
    print("| minor page faults per step, profiled / unprofiled | "
          + " | ".join("{:.0f} / {:.0f}".format(*faults[side]) for side in ("ours", "transformers"))
          + " | |")
    shared = totals["ours"]["matmul"] + totals["ours"]["attention"]
    print(f"\nspeed-up now: {step_ms['transformers'] / step_ms['ours']:.2f}x; ceiling with "
          f"nothing but ours' matmul + attention ({shared:.0f} ms): "
          f"{h_sum / shared:.2f}x transformers' profiled sum; a 1.3x step needs ours at "
          f"<= {step_ms['transformers'] / 1.3:.0f} ms, i.e. at most "
          f"{step_ms['transformers'] / 1.3 - shared:.0f} ms outside matmul + attention "
          f"(now {step_ms['ours'] - shared:.0f} ms)")
    n = ours.num_params()
    print(f"\nper step, each side: fused AdamW reads param, grad, exp_avg, exp_avg_sq (16 B) and writes "
          f"param, exp_avg, exp_avg_sq (12 B) per parameter: {n / 1e6:.1f} M x 28 B = {28 * n / 1e9:.2f} GB; "
          f"the clip's norms read every gradient ({4 * n / 1e9:.2f} GB), its multiply reads and writes them "
          f"again; the tied [V, H] weight's gradient is {4 * ours.embed.weight.numel() / 1e6:.1f} MB")
    for name in sides:
        print_ops(name, ops[name], shapes[name], args.top)


if __name__ == "__main__":
    main()
