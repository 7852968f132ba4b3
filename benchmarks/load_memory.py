"""Peak memory of loading a Qwen2.5-0.5B-shaped checkpoint (random weights, bf16, saved by transformers).

    python benchmarks/load_memory.py [--dir .cache/qwen25_05b_random] [--layers 24]

Each loader runs in a fresh subprocess; the table shows the peak resident-memory increase during
the load (VmHWM after minus VmRSS before, with the high-water mark reset first) as a ratio of the
checkpoint's weight bytes, right after loading and again after reading every page of every weight
(a loader that memory-maps the file has its weights resident only once they are read).
transformers is only the reference here, never a dependency of model/.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                  rope_theta=1000000.0, tie_word_embeddings=True, rms_norm_eps=1e-6)

LOADERS = {
    "model.load_pretrained (ours)": "from model import load_pretrained\nm = load_pretrained(path, dtype=torch.bfloat16)",
    "transformers from_pretrained": "import transformers\n"
                                    "m = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)",
    "naive: init + load_file + load_state_dict": (
        "import transformers\nfrom safetensors.torch import load_file\n"
        "cfg = transformers.AutoConfig.from_pretrained(path)\n"
        "m = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)\n"
        "m.load_state_dict(load_file(path + '/model.safetensors'), strict=False)"),
}

CHILD = """
import os, sys, time, json, torch
sys.path.insert(0, {root!r})
path = {path!r}
from benchmarks.proc_status import reset_peak_rss, status_bytes
{imports}
try:
    reset_peak_rss()  # so the peak is the load's own
except OSError:
    pass
before = status_bytes('VmRSS')
start = time.perf_counter()
{load}
seconds = time.perf_counter() - start
after_load = status_bytes('VmHWM') - before
# read one element per 2 KiB of every weight, so memory-mapped weights become resident too
touched = sum(float(p.detach().reshape(-1)[::1024].float().sum()) for p in m.parameters())
print(json.dumps({{"after_load": after_load, "after_touch": status_bytes('VmHWM') - before, "seconds": seconds}}))
"""


def make_checkpoint(path: Path, layers: int):
    code = f"""
import torch, transformers
cfg = transformers.Qwen2Config(**{ {**QWEN25_05B, 'num_hidden_layers': layers}!r})
torch.manual_seed(0)
model = transformers.Qwen2ForCausalLM(cfg).to(torch.bfloat16)
model.save_pretrained({str(path)!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def weight_bytes(path: Path) -> int:
    total = 0
    for file in path.glob("*.safetensors"):
        with open(file, "rb") as f:
            header = int.from_bytes(f.read(8), "little")
        total += file.stat().st_size - 8 - header
    return total


def measure(path: Path, load: str) -> dict:
    # import everything a loader needs before the baseline, so imports do not count as loading
    imports = "\n".join(line for line in load.splitlines() if line.startswith(("import", "from")))
    body = "\n".join(line for line in load.splitlines() if not line.startswith(("import", "from")))
    code = CHILD.format(root=str(ROOT), path=str(path), imports=imports, load=body)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=str(ROOT / ".cache" / "qwen25_05b_random"))
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--only-ours", action="store_true", help="skip the transformers reference rows")
    args = parser.parse_args()
    path = Path(args.dir)
    if not (path / "config.json").is_file():
        print(f"writing a random Qwen2.5-0.5B-shaped bf16 checkpoint to {path} ...", flush=True)
        t = time.perf_counter()
        make_checkpoint(path, args.layers)
        print(f"  done in {time.perf_counter() - t:.0f}s", flush=True)
    weights = weight_bytes(path)
    print(f"\ncheckpoint {path}: weight bytes {weights / 2**20:.1f} MiB\n")
    print(f"{'loader':45s} {'peak after load':>16s} {'x weights':>10s} {'peak after reading':>19s} "
          f"{'x weights':>10s} {'seconds':>8s}")
    loaders = list(LOADERS.items())[:1] if args.only_ours else LOADERS.items()
    for name, load in loaders:
        r = measure(path, load)
        print(f"{name:45s} {r['after_load'] / 2**20:12.1f} MiB {r['after_load'] / weights:10.3f} "
              f"{r['after_touch'] / 2**20:15.1f} MiB {r['after_touch'] / weights:10.3f} {r['seconds']:8.2f}", flush=True)


if __name__ == "__main__":
    main()
