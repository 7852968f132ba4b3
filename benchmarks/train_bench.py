"""Training-step throughput, MFU, peak memory and stage 2 vs stage 1, ours against transformers.

One step = what train.py does per optimizer step with one micro-batch: forward, loss, backward,
clip_grad_norm_, AdamW step, zero_grad.
  * ours: Decoder(..., return_hidden=True) + loss.weighted_linear_cross_entropy (the output layer
    is fused into the chunked loss; no [N, V] logits).
  * transformers: AutoModelForCausalLM(...).logits + F.cross_entropy (materialised logits).
Same random SmolLM2-135M-shaped weights for both (30 layers, hidden 576, 9/3 heads, MLP 1536,
vocab 49152, tied), same batch, sequence length and precision (bf16 autocast over fp32 master
weights, or fp32). Steps run alternately (ours, theirs, ours, theirs, ...) so load from other
processes hits both alike; the ratio is taken per pair and the median reported.

    python benchmarks/train_bench.py                         # all tables, CPU
    python benchmarks/train_bench.py --batch 2 --seq 256 --pairs 3 --tables speed
    python benchmarks/train_bench.py --tables memory         # peak RSS, one subprocess per side
    python benchmarks/train_bench.py --tables stages         # stage 2 vs stage 1, ours only
    python benchmarks/train_bench.py --compile --device cuda

MFU = model.flops_per_token(seq) x tokens/s / matmul rate, the rate measured in the same run
(2048^3 square matmul in the step's precision, right after each pair; the pair's own rate is used).
Memory: each side in a fresh subprocess (no transformers import on our side, as in train.py);
peak RSS (VmHWM) over the whole process, and the peak above the RSS once the model is built.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere
from benchmarks.proc_status import status_bytes  # noqa: E402

SMOLLM2_135M = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=49152,
                    hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                    rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                    bos_token_id=1, eos_token_id=2, pad_token_id=2)
QWEN25_05B = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=151936,
                  hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                  rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                  bos_token_id=151643, eos_token_id=151643, pad_token_id=151643)
# configs/demo.toml's model (the default run) on its synthetic task's shape: 66-token rows of which
# the prompt is 39% and the Key 12% (data: 146,800 prompt, 28,924 Key of 377,540 tokens)
DEMO = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=256, hidden_size=256,
            intermediate_size=704, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            head_dim=64, max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-5,
            tie_word_embeddings=True)


def shape(base, layers):
    return dict(base, num_hidden_layers=layers or base["num_hidden_layers"])


def make_batch(batch, seq, vocab, key_fraction, device, seed=0, prompt_fraction=0.0):
    """Random ids; targets = next id (-100 on the last position); the first prompt_fraction of
    each row are prompt tokens (role 0), the last key_fraction Key tokens (role 2), the rest CoT
    (role 1)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq + 1), generator=gen)
    targets = ids[:, 1:].clone()
    targets[:, -1] = -100
    roles = torch.ones(batch, seq, dtype=torch.long)
    roles[:, seq - max(1, round(key_fraction * seq)):] = 2
    roles[:, :round(prompt_fraction * seq)] = 0
    roles[targets == -100] = 3
    return {k: v.to(device) for k, v in
            dict(input_ids=ids[:, :-1].contiguous(), targets=targets, roles=roles).items()}


def build_ours(hf_dict, device, seed=0):
    from model import Decoder, ModelConfig
    model = Decoder(ModelConfig.from_hf_dict(hf_dict))
    model.init_weights(seed)
    return model.to(device).train()


def build_hf(hf_dict, device):
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.for_model(**{k: v for k, v in hf_dict.items() if k != "architectures"})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa",
                                             dtype=torch.float32)
    return model.to(device).train()


def copy_ours_into_hf(ours, hf):
    """Give transformers our weights, in memory (hf_tensors: our parameters under HF names)."""
    from model.hf_io import hf_tensors
    missing, unexpected = hf.load_state_dict(hf_tensors(ours), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise RuntimeError(f"weight copy: missing {missing}, unexpected {unexpected}")


ADAMW = "fused"  # set from --adamw
SELECT_ROWS = True  # set from --no-select-rows


def compiled(model, args):
    """--compile: regional compilation of each decoder layer, on both sides alike (compiling the
    whole 30-layer model unrolls every layer: minutes of compile time on 2 cores)."""
    if args.grad_ckpt and hasattr(model, "compile_blocks"):
        model.gradient_checkpointing = True
    if args.no_recompute and hasattr(model, "compile_blocks"):
        model.recompute_elementwise = False
    if not args.compile:
        return model
    if hasattr(model, "compile_blocks"):
        return model.compile_blocks()
    for layer in model.model.layers:
        layer.compile()
    return model


def make_optimizer(model):
    # as train.py: decay on 2-D+ parameters only; "unfused": fused only on CUDA
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    fused = ADAMW == "fused" or next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=1e-5, fused=fused)


def autocast_for(precision, device):
    from model.precision import autocast_dtype
    dtype = autocast_dtype(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def ours_step(model, forward, optimizer, batch, weights, precision, compile_loss, loss_in_autocast,
              select_rows=None):
    """select_rows: None = --no-select-rows' setting (SELECT_ROWS)."""
    from loss import weighted_linear_cross_entropy
    autocast = autocast_for(precision, batch["input_ids"].device)
    targets, roles = batch["targets"].flatten(), batch["roles"].flatten()
    rows = None
    if SELECT_ROWS if select_rows is None else select_rows:  # as train.py: the last layer's query path only where a weighted target is
        rows = torch.nonzero((weights != 0) & (targets != -100)).squeeze(1)
        targets, roles, weights = targets[rows], roles[rows], weights[rows]
    with autocast, phase("forward"):
        hidden, output_weight = forward(batch["input_ids"], return_hidden=True, rows=rows,
                                        return_output_weight=True)
        hidden = hidden.flatten(0, -2)
    # --loss-outside-autocast: the output matmuls then run in the weights' dtype
    with (autocast if loss_in_autocast else torch.autocast(batch["input_ids"].device.type, enabled=False),
          phase("loss")):
        loss_sum, _, _ = weighted_linear_cross_entropy(
            hidden, output_weight, targets, weights, roles, compile=compile_loss)
    loss = loss_sum / weights.sum()
    with phase("backward"):
        loss.backward()
    clip_and_step(model, optimizer)
    return loss.item()


def hf_step(model, forward, optimizer, batch, precision):
    with autocast_for(precision, batch["input_ids"].device), phase("forward"):
        logits = forward(input_ids=batch["input_ids"], use_cache=False).logits
    with phase("loss"):
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=-100)
    with phase("backward"):
        loss.backward()
    with phase("clip"):
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    with phase("optimizer"):
        optimizer.step()
    with phase("zero_grad"):
        optimizer.zero_grad(set_to_none=True)
    return loss.item()


def phase(name):
    """A profiler range naming the part of the step (profile_step.py's "where" column)."""
    return torch.profiler.record_function(f"step.{name}")


def clip_and_step(model, optimizer):
    """Ours after backward: as train.py's optimizer_step (clip to 1.0, AdamW step, zero_grad)."""
    from training.distributed import clip_grad_norm
    with phase("clip"):
        clip_grad_norm(model.parameters(), 1.0)
    with phase("optimizer"):
        optimizer.step()
    with phase("zero_grad"):
        optimizer.zero_grad(set_to_none=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def matmul_rate(precision, device, n=None, reps=3):
    """FLOP/s of an n x n x n matmul in the step's matmul dtype (best of reps). n: 2048 on CPU,
    8192 on CUDA (a 2048 product takes ~20 us on an H100-class GPU: launch overhead, not rate)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    from model.precision import PRECISIONS
    dtype = PRECISIONS[precision]
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(3 if device.type == "cuda" else 1):
        a @ b
    best = min(timed(lambda: a @ b, device)[0] for _ in range(reps))
    return 2 * n ** 3 / best


def load_average():
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def speed_table(args, device):
    hf_dict = shape(SMOLLM2_135M, args.layers)
    ours = build_ours(hf_dict, device)
    hf = build_hf(hf_dict, device)
    copy_ours_into_hf(ours, hf)
    ours_forward, hf_forward = compiled(ours, args), compiled(hf, args)
    batch = make_batch(args.batch, args.seq, hf_dict["vocab_size"], 1.0, device)
    weights = (batch["targets"].flatten() != -100).float()
    tokens = args.batch * args.seq
    flops = ours.flops_per_token(args.seq)
    rows = []
    print(f"\n## Training step, SmolLM2-135M shape ({hf_dict['num_hidden_layers']} layers), "
          f"batch {args.batch} x seq {args.seq}, compile={'on' if args.compile else 'off'}, "
          f"device {device}, threads {torch.get_num_threads()}, load avg {load_average()}\n")
    print(f"model FLOPs/token (6N + attention) = {flops / 1e6:.1f} M; {args.pairs} alternating "
          f"pairs after 1 warm-up step each; medians\n", flush=True)
    for precision in args.precisions.split(","):
        opt_ours, opt_hf = make_optimizer(ours), make_optimizer(hf)
        run_ours = lambda: ours_step(ours, ours_forward, opt_ours, batch, weights, precision,
                                     args.compile_loss, not args.loss_outside_autocast)
        run_hf = lambda: hf_step(hf, hf_forward, opt_hf, batch, precision)
        loss_ours, loss_hf = run_ours(), run_hf()  # warm-up (and first-step optimizer state)
        t_ours, t_hf, ratios, mfus = [], [], [], []
        for pair in range(args.pairs):
            first, second = (run_ours, run_hf) if pair % 2 == 0 else (run_hf, run_ours)
            a, _ = timed(first, device)
            b, _ = timed(second, device)
            dt_ours, dt_hf = (a, b) if pair % 2 == 0 else (b, a)
            rate = matmul_rate(precision, device)
            t_ours.append(dt_ours)
            t_hf.append(dt_hf)
            ratios.append(dt_hf / dt_ours)
            mfus.append(flops * tokens / dt_ours / rate)
            print(f"  {precision} pair {pair}: ours {dt_ours:.2f}s transformers {dt_hf:.2f}s "
                  f"ratio {dt_hf / dt_ours:.2f}x matmul {rate / 1e9:.0f} GFLOP/s", flush=True)
        rows.append((precision, loss_ours, loss_hf, tokens / statistics.median(t_ours),
                     tokens / statistics.median(t_hf), statistics.median(ratios),
                     statistics.median(mfus), min(ratios), max(ratios),
                     flops * tokens / statistics.median(t_hf)))
        del opt_ours, opt_hf
    print("\n| precision | first loss ours / transformers | ours tok/s | transformers tok/s | "
          "ratio (median, min-max) | ours MFU | transformers MFU |")
    print("|---|---|---|---|---|---|---|")
    for precision, lo, lh, so, sh, r, mfu, rmin, rmax, hf_flops in rows:
        hf_mfu = mfu * sh / so
        print(f"| {precision} | {lo:.4f} / {lh:.4f} | {so:.0f} | {sh:.0f} | {r:.2f}x "
              f"({rmin:.2f}-{rmax:.2f}) | {100 * mfu:.1f}% | {100 * hf_mfu:.1f}% |")
    sys.stdout.flush()


def memory_child(args, side, precision, device):
    """Runs in a fresh process: build one side, run --memory-steps steps, print peak RSS as JSON."""
    hf_dict = shape(SMOLLM2_135M, args.layers)
    model = build_ours(hf_dict, device) if side == "ours" else build_hf(hf_dict, device)
    forward = compiled(model, args)
    optimizer = make_optimizer(model)
    batch = make_batch(args.batch, args.seq, hf_dict["vocab_size"], 1.0, device)
    weights = (batch["targets"].flatten() != -100).float()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    built = torch.cuda.memory_allocated() if device.type == "cuda" else status_bytes("VmRSS")
    for _ in range(args.memory_steps):
        if side == "ours":
            ours_step(model, forward, optimizer, batch, weights, precision, args.compile_loss,
                      not args.loss_outside_autocast)
        else:
            hf_step(model, forward, optimizer, batch, precision)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else status_bytes("VmHWM")
    print(json.dumps(dict(peak=peak, built=built)))


def memory_table(args, device):
    print(f"\n## Peak memory, SmolLM2-135M shape, batch {args.batch} x seq {args.seq}, "
          f"ours gradient_checkpointing={'on' if args.grad_ckpt else 'off'}, "
          f"{args.memory_steps} steps, compile={'on' if args.compile else 'off'}, device {device} "
          f"({'peak RSS, VmHWM' if device.type == 'cpu' else 'max_memory_allocated'}), "
          f"one fresh subprocess per side\n", flush=True)
    print("| precision | ours peak GB | transformers peak GB | ratio | ours above built GB | "
          "transformers above built GB | ratio |")
    print("|---|---|---|---|---|---|---|")
    for precision in args.precisions.split(","):
        result = {}
        for side in ("ours", "hf"):
            cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", side,
                   "--precisions", precision, "--batch", str(args.batch), "--seq", str(args.seq),
                   "--layers", str(args.layers), "--device", args.device,
                   "--memory-steps", str(args.memory_steps), "--adamw", args.adamw]
            cmd += ["--compile"] * args.compile + ["--no-compile-loss"] * (not args.compile_loss)
            cmd += ["--loss-outside-autocast"] * args.loss_outside_autocast
            cmd += ["--grad-ckpt"] * args.grad_ckpt + ["--no-recompute"] * args.no_recompute
            cmd += ["--no-select-rows"] * args.no_select_rows + ["--allocator", args.allocator]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            result[side] = json.loads(out.strip().splitlines()[-1])
        o, h = result["ours"], result["hf"]
        gb = 1024 ** 3
        print(f"| {precision} | {o['peak'] / gb:.2f} | {h['peak'] / gb:.2f} | "
              f"{o['peak'] / h['peak']:.2f}x | {(o['peak'] - o['built']) / gb:.2f} | "
              f"{(h['peak'] - h['built']) / gb:.2f} | "
              f"{(o['peak'] - o['built']) / (h['peak'] - h['built']):.2f}x |", flush=True)


def stages_table(args, device):
    print(f"\n## Stage 2 (only the Key tokens weighted: --key-fraction {args.key_fraction} of each "
          f"row for smollm2 / qwen) vs stage 1 (CoT and Key weighted), ours, same batch, compile="
          f"{'on' if args.compile else 'off'}, load avg {load_average()}\n", flush=True)
    cases = {"smollm2": ("SmolLM2-135M", shape(SMOLLM2_135M, args.layers), args.batch, args.seq,
                         args.key_fraction, 0.0),
             "qwen": ("Qwen2.5-0.5B", shape(QWEN25_05B, args.qwen_layers), args.qwen_batch, args.seq,
                      args.key_fraction, 0.0),
             "demo": ("demo (configs/demo.toml)", DEMO, 32, 66, 0.12, 0.39)}
    rows = []
    unknown = [c for c in args.stage_cases.split(",") if c not in cases]
    if unknown:
        sys.exit(f"--stage-cases: unknown {unknown}; choose from {', '.join(cases)}")
    for case in args.stage_cases.split(","):
        model_name, hf_dict, batch_size, seq, key_fraction, prompt_fraction = cases[case]
        model = build_ours(hf_dict, device)
        forward = compiled(model, args)
        batch = make_batch(batch_size, seq, hf_dict["vocab_size"], key_fraction, device,
                           prompt_fraction=prompt_fraction)
        targets, roles = batch["targets"].flatten(), batch["roles"].flatten()
        # stage 1 weights CoT and Key (every token but the prompt), stage 2 the Key only
        stage_weights = {1: ((targets != -100) & (roles != 0)).float(), 2: (roles == 2).float()}
        for precision in args.precisions.split(","):
            optimizer = make_optimizer(model)

            def run(weights, select):
                return ours_step(model, forward, optimizer, batch, weights, precision,
                                 args.compile_loss, not args.loss_outside_autocast, select)
            # stage 1 and stage 2, each with row selection (train.py's default: the last layer's
            # queries and MLP only where a weighted target is) and without (every position), in a
            # rotating order so that drifting load hits all four alike
            runs = {"1": lambda: run(stage_weights[1], True), "2": lambda: run(stage_weights[2], True),
                    "1 full": lambda: run(stage_weights[1], False),
                    "2 full": lambda: run(stage_weights[2], False)}
            for fn in runs.values():
                fn()
            times = {name: [] for name in runs}
            names = list(runs)
            for pair in range(args.pairs):
                for name in names[pair % 4:] + names[:pair % 4]:
                    times[name].append(timed(runs[name], device)[0])
            median = {name: statistics.median(t) for name, t in times.items()}
            ratio = {sel: statistics.median([b / a for a, b in zip(times["1" + sel], times["2" + sel])])
                     for sel in ("", " full")}
            rows.append((model_name, hf_dict["num_hidden_layers"], batch_size, seq, precision,
                         int(stage_weights[2].sum()), median, ratio))
            print(f"  {model_name} {precision}: {times}", flush=True)
            del optimizer
        del model, forward
    print("\nEach cell: with row selection (train.py's default) / without (the last layer on every "
          "position).\n")
    print("| model | layers | batch x seq | precision | Key tokens | stage 1 s/step | stage 2 s/step | "
          "stage 2 / stage 1 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, layers, b, s, precision, keys, median, ratio in rows:
        print(f"| {name} | {layers} | {b} x {s} | {precision} | {keys} | {median['1']:.2f} / "
              f"{median['1 full']:.2f} | {median['2']:.2f} / {median['2 full']:.2f} | "
              f"{ratio['']:.2f}x / {ratio[' full']:.2f}x |")
    sys.stdout.flush()


def add_allocator_option(parser):
    parser.add_argument("--allocator", choices=("keep", "default"), default="keep",
                        help="keep: glibc keeps freed memory (training.malloc), as train.py on CPU, for "
                             "the whole process (both sides of a speed table; our side of the memory "
                             "table, transformers' side runs with glibc's defaults); default: glibc's defaults")


def keep_memory(args):
    if args.allocator == "keep" and args.memory_child != "hf":
        from training.malloc import keep_freed_memory  # here: --allocator default runs in older checkouts
        keep_freed_memory()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--layers", type=int, default=0, help="SmolLM2 layers (0: all 30)")
    p.add_argument("--qwen-layers", type=int, default=0, help="Qwen2.5-0.5B layers (0: all 24)")
    p.add_argument("--qwen-batch", type=int, default=1)
    p.add_argument("--key-fraction", type=float, default=0.07)
    p.add_argument("--stage-cases", default="smollm2,qwen",
                   help="models of the stages table: smollm2, qwen, demo (the default run's model "
                        "and row shape: 32 x 66, 39%% prompt, 12%% Key)")
    p.add_argument("--precisions", default="bf16,fp32")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--tables", default="speed,memory,stages")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--no-compile-loss", dest="compile_loss", action="store_false",
                   help="eager chunk kernel in our loss (train.py's compile_loss = false)")
    p.add_argument("--loss-outside-autocast", action="store_true",
                   help="call our loss outside autocast (its output matmuls then run in fp32; "
                        "train.py calls it inside)")
    p.add_argument("--adamw", choices=("fused", "unfused"), default="fused",
                   help="fused: AdamW(fused=True) on every device (both sides, as train.py); "
                        "unfused: fused only on CUDA (the per-tensor CPU step is ~4x slower)")
    p.add_argument("--grad-ckpt", action="store_true",
                   help="our model with gradient_checkpointing = True (transformers' side unchanged)")
    p.add_argument("--no-recompute", action="store_true",
                   help="our model with recompute_elementwise = False (norm and SwiGLU outputs "
                        "saved for backward instead of recomputed)")
    p.add_argument("--no-select-rows", action="store_true",
                   help="ours without Decoder(rows=...): the last layer's queries, attention and "
                        "MLP for every position, not only where a weighted target is")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--memory-steps", type=int, default=2)
    p.add_argument("--memory-child", choices=("ours", "hf"), help=argparse.SUPPRESS)
    add_allocator_option(p)
    args = p.parse_args()
    keep_memory(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    global ADAMW, SELECT_ROWS
    ADAMW, SELECT_ROWS = args.adamw, not args.no_select_rows
    device = torch.device(args.device)
    if args.memory_child:
        return memory_child(args, args.memory_child, args.precisions, device)
    from training.machine import header
    print(header(device))
    tables = dict(speed=speed_table, memory=memory_table, stages=stages_table)
    for name in args.tables.split(","):
        tables[name](args, device)


if __name__ == "__main__":
    main()
