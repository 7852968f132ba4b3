"""Training tokens/s and MFU of the paper's model shapes on one GPU, for configs/paper/ time estimates.

    python benchmarks/paper_throughput.py --device cuda               # all five shapes
    python benchmarks/paper_throughput.py --models qwen2.5-1.5b --seq 512 --batch 8

One step = what train.py does per micro-batch and optimizer step: forward (bf16 autocast over fp32
master weights, the decoder's norm/SwiGLU recompute, whole-block gradient checkpointing as in
configs/paper/), fused chunked loss on the response tokens, backward, clip, fused AdamW. Random
weights of each model's real shape (config.json values); the 7B/8B shapes run with --big-layers of
their layers on one GPU (16 bytes per parameter of weights, gradients and AdamW state do not fit
whole) and are reported per full model by FLOPs. MFU = model FLOPs/token x tokens/s / the measured
bf16 rate of a large square matmul on the same device. One process, no FSDP communication.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

QWEN2 = dict(architectures=["Qwen2ForCausalLM"], rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=32768)
SHAPES = {  # the hub config.json values of each model of the paper's table
    "qwen2.5-1.5b": dict(QWEN2, vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-3b": dict(QWEN2, vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True),
    "smollm3-3b-base": dict(architectures=["SmolLM3ForCausalLM"], vocab_size=128256, hidden_size=2048,
                            intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                            num_key_value_heads=4, tie_word_embeddings=True, rope_theta=5000000.0,
                            rms_norm_eps=1e-6, max_position_embeddings=65536, no_rope_layer_interval=4),
    "qwen2.5-7b": dict(QWEN2, vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
    "qwen3-8b-base": dict(architectures=["Qwen3ForCausalLM"], vocab_size=151936, hidden_size=4096,
                          intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                          num_key_value_heads=8, head_dim=128, tie_word_embeddings=False, rope_theta=1000000.0,
                          rms_norm_eps=1e-6, max_position_embeddings=32768),
}
BIG = ("qwen2.5-7b", "qwen3-8b-base")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(device, n=8192, reps=5):
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def measure(name, hf_dict, args, device):
    from loss import weighted_linear_cross_entropy
    from model import Decoder, ModelConfig
    with torch.device("meta"):  # the whole model's FLOPs, without its memory
        full = Decoder(ModelConfig.from_hf_dict(hf_dict))
    layers = hf_dict["num_hidden_layers"] if name not in BIG else args.big_layers
    model = Decoder(ModelConfig.from_hf_dict(dict(hf_dict, num_hidden_layers=layers)))
    model.init_weights(0)
    model = model.to(device).train()
    model.gradient_checkpointing = args.grad_ckpt
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-6, weight_decay=0.1, fused=device.type == "cuda")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, hf_dict["vocab_size"], (args.batch, args.seq + 1), generator=gen)
    targets = ids[:, 1:].clone().flatten().to(device)
    ids = ids[:, :-1].contiguous().to(device)
    weights = torch.ones(args.batch, args.seq)
    weights[:, :int(args.prompt_fraction * args.seq)] = 0  # prompt tokens carry no loss
    weights = weights.flatten().to(device)
    rows = torch.nonzero(weights).squeeze(1)
    times = []
    for step in range(args.warmup + args.steps):
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            hidden, output_weight = model(ids, return_hidden=True, rows=rows, return_output_weight=True)
            loss_sum, _, _ = weighted_linear_cross_entropy(hidden, output_weight, targets[rows], weights[rows])
        (loss_sum / weights.sum()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    tokens = args.batch * args.seq
    step_s = statistics.median(times)
    measured_flops = model.flops_per_token(args.seq) * tokens / step_s
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return dict(model=name, layers_run=layers, layers=hf_dict["num_hidden_layers"], batch=args.batch, seq=args.seq,
                step_s=step_s, tokens_per_s_run=tokens / step_s, flops_per_token_full=full.flops_per_token(args.seq),
                achieved_tflops=measured_flops / 1e12,
                tokens_per_s_full=measured_flops / full.flops_per_token(args.seq), peak_gib=peak)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(SHAPES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--prompt-fraction", type=float, default=0.3)
    p.add_argument("--big-layers", type=int, default=8, help="layers of the 7B/8B shapes run on one GPU")
    p.add_argument("--no-grad-ckpt", dest="grad_ckpt", action="store_false")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rate = matmul_rate(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"## {name}: bf16 matmul rate {rate / 1e12:.0f} TFLOP/s (8192^3); batch {args.batch} x seq {args.seq}, "
          f"grad checkpointing {args.grad_ckpt}, torch {torch.__version__}\n")
    print("| model | layers run | step s | tokens/s (full model) | TFLOP/s | MFU | peak GiB |\n|---|---|---|---|---|---|---|")
    rows = []
    for model_name in args.models.split(","):
        row = measure(model_name, SHAPES[model_name], args, device)
        row["mfu"] = row["achieved_tflops"] * 1e12 / rate
        row["matmul_tflops"] = rate / 1e12
        rows.append(row)
        print(f"| {model_name} | {row['layers_run']}/{row['layers']} | {row['step_s']:.3f} | "
              f"{row['tokens_per_s_full']:.0f} | {row['achieved_tflops']:.0f} | {row['mfu']:.2f} | "
              f"{row['peak_gib']:.1f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=name, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
