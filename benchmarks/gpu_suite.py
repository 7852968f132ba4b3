"""The CUDA path in one run of a few minutes: the device tests, the default training run with
compile, the training, loss and generation tables, a one-GPU FSDP run.

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_suite.py --out $OUT --commit <hash>   # CUDA, < 6 min
    python benchmarks/gpu_suite.py --smoke --device cpu --out /tmp/gpu_out          # same steps, tiny, CPU

Sections, each a subprocess with its own time limit (unused time passes on to the next section);
one that fails or runs out of time is recorded and the suite goes on:
  tests     pytest tests/device with SFTKEY_TEST_DEVICE set to the device
  train     python train.py --set compile=true (configs/demo.toml, fewer steps): both stages, eval
  step      benchmarks/step_table.py: Qwen2.5-0.5B shape, 8 x 2048, bf16, ours vs transformers,
            eager and compiled: tokens/s, MFU, peak memory, stage 2 / stage 1
  loss      benchmarks/loss_bench.py: 16,384 tokens, vocab 151,936, bf16, stage 1 and stage 2
  generate  benchmarks/generate_bench.py: batch 64, bf16, ours vs transformers
  fsdp      torchrun --standalone --nproc_per_node 1 train.py --parallel fsdp, a few steps
Files written under --out (rewritten after every section, so a run cut short keeps what it had):
gpu_suite.md (environment, section status, every table), gpu_suite.json (the same, raw),
sections.log (every subprocess's whole output), train_log.jsonl (the training run's step log).
"""
import argparse
import collections
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# seconds per section on CUDA; their sum is the default --budget
LIMITS = {"tests": 90, "train": 75, "step": 100, "loss": 35, "generate": 20, "fsdp": 25}
SMOKE_SCALE = 12  # CPU limits: the CUDA ones times this
TRAIN_SETS = ["compile=true", "stage1.max_steps=120", "stage2.max_steps=40", "val_every=40"]
SMOKE_DATA_SETS = ["synthetic.n_train=400", "synthetic.n_test=16"]
SMOKE_TRAIN_SETS = ["compile=true", "stage1.max_steps=4", "stage2.max_steps=2", "val_every=0",
                    "eval_max_new_tokens=24"] + SMOKE_DATA_SETS
FSDP_SETS = ["stage1.max_steps=4", "stage2.max_steps=2", "val_every=0", "limit_eval=16",
             "eval_max_new_tokens=24"]


def section_commands(args, tmp):
    """name -> (argv, extra environment, JSON file the section writes or None)."""
    py, dev, smoke = sys.executable, args.device, args.smoke
    json_of = {name: str(tmp / f"{name}.json") for name in ("step", "loss", "generate")}
    train_sets = SMOKE_TRAIN_SETS if smoke else TRAIN_SETS
    step = (["--layers", "2", "--vocab", "4096", "--batch", "2", "--seq", "64", "--pairs", "2", "--warmup", "1"]
            if smoke else ["--pairs", "4"])
    loss = (["--tokens", "256", "--hidden", "64", "--vocab", "4096", "--repeats", "1"] if smoke else
            ["--tokens", "16384", "--hidden", "896", "--vocab", "151936", "--repeats", "3"])
    generate = (["--layers", "2", "--batches", "4", "--new", "4", "--repeats", "1"] if smoke else
                ["--batches", "64", "--new", "32", "--repeats", "3"])
    fsdp_sets = FSDP_SETS + (SMOKE_DATA_SETS if smoke else [])
    sets = lambda items: [a for item in items for a in ("--set", item)]
    return {
        "tests": ([py, "-m", "pytest", "-v", "-rfE", "--durations=15", "tests/device"],
                  {"SFTKEY_TEST_DEVICE": dev}, None),
        "train": ([py, "train.py", "--device", dev, "--out", str(tmp / "train_demo")] + sets(train_sets), {}, None),
        "step": ([py, "benchmarks/step_table.py", "--device", dev, "--json", json_of["step"]] + step, {},
                 json_of["step"]),
        "loss": ([py, "benchmarks/loss_bench.py", "--device", dev, "--dtypes", "bf16", "--stages", "1,2",
                  "--json", json_of["loss"]] + loss, {}, json_of["loss"]),
        "generate": ([py, "benchmarks/generate_bench.py", "--device", dev, "--dtypes", "bfloat16",
                      "--json", json_of["generate"]] + generate, {}, json_of["generate"]),
        "fsdp": ([py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "train.py",
                  "--parallel", "fsdp", "--device", dev, "--out", str(tmp / "fsdp")] + sets(fsdp_sets), {}, None),
    }


def run_section(name, argv, env, limit, log):
    """Runs argv in its own process group for at most limit seconds; returns (status, seconds, tail)."""
    log.write(f"\n===== {name}: {' '.join(argv)} (limit {limit:.0f} s)\n")
    log.flush()
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)
    tail = collections.deque(maxlen=60)

    def pump():
        for line in proc.stdout:
            log.write(line)
            tail.append(line.rstrip("\n"))
        log.flush()
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=limit)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        status = f"timed out after {limit:.0f} s"
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=grace)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
    reader.join(timeout=5)
    seconds = time.perf_counter() - started
    log.write(f"===== {name}: {status} in {seconds:.1f} s\n")
    log.flush()
    return status, seconds, list(tail)


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def summarise_tests(tail):
    counts = next((line.strip("= ") for line in reversed(tail) if " in " in line and
                   any(w in line for w in ("passed", "failed", "error"))), "no pytest summary line")
    failed = [line for line in tail if line.startswith(("FAILED", "ERROR"))]
    return counts, "\n".join([f"pytest: {counts}", ""] + [f"    {line}" for line in failed])


def summarise_train(run_dir, out_dir):
    """Per-stage numbers from a train.py run directory (log.jsonl, results.json)."""
    log_path = run_dir / "log.jsonl"
    records = []
    if log_path.exists():
        if out_dir is not None:
            shutil.copyfile(log_path, out_dir / "train_log.jsonl")
        records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    results = read_json(run_dir / "results.json") or {}
    stages = {}
    for n in (1, 2):
        train = [r for r in records if r["stage"] == n and r["type"] == "train"]
        val = [r for r in records if r["stage"] == n and r["type"] == "val"]
        if not train:
            continue
        steady = train[5:] or train  # the first steps compile
        median = lambda key: sorted(r[key] for r in steady)[len(steady) // 2]
        evaluation = results.get(f"stage{n}", {})
        stages[n] = dict(steps=len(train), first_loss=train[0]["loss"], last_loss=train[-1]["loss"],
                         tokens_per_s=median("tokens_per_s"), mfu=median("mfu"),
                         peak_mem_gb=max(r["peak_mem_gb"] for r in train),
                         val=val[-1] if val else None, acc=evaluation.get("acc"), fmt=evaluation.get("fmt"),
                         score=evaluation.get("score"), n=evaluation.get("n"),
                         eval_tokens_per_s=evaluation.get("new_tokens_per_s"),
                         checkpoint=(run_dir / f"stage{n}" / "final" / "model.safetensors").exists())
    lines = ["| stage | steps | loss first / last | tokens/s (median) | MFU | peak GB | val CoT / Key NLL | "
             "Acc | Fmt | eval new tokens/s | checkpoint |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, s in stages.items():
        val = s["val"] or {}
        nll = f"{val.get('val_cot_nll', float('nan')):.3f} / {val.get('val_key_nll', float('nan')):.3f}"
        acc = "-" if s["acc"] is None else f"{s['acc']:.3f} (n={s['n']})"
        fmt = "-" if s["fmt"] is None else f"{s['fmt']:.3f}"
        lines.append(f"| {n} | {s['steps']} | {s['first_loss']:.4f} / {s['last_loss']:.4f} | "
                     f"{s['tokens_per_s']:,.0f} | {100 * s['mfu']:.2f}% | {s['peak_mem_gb']:.2f} | {nll} | "
                     f"{acc} | {fmt} | {s['eval_tokens_per_s']} | {'written' if s['checkpoint'] else 'MISSING'} |")
    return stages, "\n".join(lines) if stages else "no step was logged"


def loss_markdown(cases):
    lines = ["| dtype | stage | impl | time s | x naive | peak extra MiB | x naive | loss |",
             "|---|---|---|---|---|---|---|---|"]
    naive = {}
    for case in cases:
        r, key = case["result"], (case["dtype"], case["stage"])
        if r is None:
            lines.append(f"| {case['dtype']} | {case['stage']} | {case['impl']} | failed | | | | |")
            continue
        if case["impl"] == "naive":
            naive[key] = r
        base = naive.get(key)
        lines.append(f"| {case['dtype']} | {case['stage']} | {case['impl']} | {r['seconds']:.4f} | "
                     f"{r['seconds'] / base['seconds']:.3f} | {r['peak_extra_bytes'] / 2**20:,.0f} | "
                     f"{r['peak_extra_bytes'] / base['peak_extra_bytes']:.3f} | {r['loss']:.2f} |"
                     if base else f"| {case['dtype']} | {case['stage']} | {case['impl']} | "
                     f"{r['seconds']:.4f} | - | {r['peak_extra_bytes'] / 2**20:,.0f} | - | {r['loss']:.2f} |")
    if cases:
        c = cases[0]
        lines.insert(0, f"{c['tokens']:,} tokens, hidden {c['hidden']}, vocab {c['vocab']:,}; stage 2 weights "
                        "about 5% of the tokens (the rest weight 0)\n")
    return "\n".join(lines)


def generate_markdown(rows):
    lines = ["| dtype | batch | layers | new tokens | ours tok/s | transformers tok/s | ratio | same tokens |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dtype']} | {r['batch']} | {r['layers']} | {r['new']} | {r['ours_tokens_per_s']:,.0f} | "
                     f"{r['transformers_tokens_per_s']:,.0f} | "
                     f"{r['ours_tokens_per_s'] / r['transformers_tokens_per_s']:.2f}x | "
                     f"{r['same_rows']}/{r['batch']} rows |")
    return "\n".join(lines)


def tree_digest():
    """sha256 over the source files that run here, to tell one code version from another."""
    digest = hashlib.sha256()
    files = sorted(p for pattern in ("*.py", "*/*.py", "*/*/*.py", "configs/*.toml", "requirements*.txt")
                   for p in ROOT.glob(pattern) if ".cache" not in p.parts and "runs" not in p.parts)
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def environment(args):
    import torch
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cpus": os.cpu_count(), "device": args.device, "tree_sha256": tree_digest(),
           "commit": args.commit or git_commit()}
    for module in ("transformers", "triton", "tokenizers", "safetensors", "numpy"):
        try:
            env[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 (absent is a fact to record)
            env[module] = None
    if args.device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count)
        try:
            env["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=15).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["nvidia_smi"] = None
    return env


def git_commit():
    from training.machine import git_commit as head
    return head(ROOT) or "unknown (no git here: pass --commit)"


def write_report(out_dir, report):
    (out_dir / "gpu_suite.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    env = report["environment"]
    lines = [f"# gpu_suite ({'smoke, ' if report['smoke'] else ''}device {env['device']})", "",
             f"commit {env['commit']}, tree {env['tree_sha256']}; torch {env['torch']} (CUDA {env['cuda']}), "
             f"transformers {env['transformers']}, triton {env['triton']}, Python {env['python']}, "
             f"{env['cpus']} CPUs" + (f"; {env['gpu']} ({env['gpu_memory_gb']} GB, sm {env['capability']}, "
                                      f"{env['sms']} SMs; nvidia-smi: {env['nvidia_smi']})" if "gpu" in env else ""),
             "", f"wall {report['wall_s']:.0f} s of a {report['budget_s']:.0f} s budget", "",
             "| section | status | seconds | limit s | result |", "|---|---|---|---|---|"]
    for name, s in report["sections"].items():
        lines.append(f"| {name} | {s['status']} | {s['seconds']:.1f} | {s['limit_s']:.0f} | {s.get('headline', '')} |")
    for name, s in report["sections"].items():
        lines += ["", f"## {name}", "", f"`{s['command']}`", ""]
        if s.get("markdown"):
            lines.append(s["markdown"])
        if s["status"] != "ok":
            lines += ["", "Last lines of its output:", "", "```"] + s["tail"][-25:] + ["```"]
    (out_dir / "gpu_suite.md").write_text("\n".join(lines) + "\n")


def headline(name, data):
    """One line for the status table."""
    if name == "step" and data:
        rows = {(r["mode"], r["side"]): r for r in data.get("speed", []) if "error" not in r}
        parts = []
        for mode in ("eager", "compiled"):
            o, t = rows.get((mode, "ours")), rows.get((mode, "transformers"))
            if o:
                parts.append(f"{mode}: MFU {100 * o['mfu']:.1f}%"
                             + (f", {o['tokens_per_s'] / t['tokens_per_s']:.2f}x tokens/s" if t else "")
                             + (f", {o['peak_gb'] / t['peak_gb']:.2f}x memory" if t and o["peak_gb"] else ""))
        return "; ".join(parts)
    if name == "loss" and data:
        by = {(c["impl"], c["stage"]): c["result"] for c in data if c["result"]}
        return "; ".join(f"stage {s}: {by[('ours', s)]['seconds'] / by[('naive', s)]['seconds']:.2f}x time, "
                         f"{by[('ours', s)]['peak_extra_bytes'] / by[('naive', s)]['peak_extra_bytes']:.3f}x memory"
                         for s in (1, 2) if ("ours", s) in by and ("naive", s) in by)
    if name == "generate" and data:
        return "; ".join(f"batch {r['batch']} {r['dtype']}: {r['ours_tokens_per_s'] / r['transformers_tokens_per_s']:.2f}x"
                         f" transformers, {r['same_rows']}/{r['batch']} rows identical" for r in data)
    return ""


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT"), help="result folder (default: $OUT)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--smoke", action="store_true", help="tiny shapes and few steps (for a CPU check)")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds for all sections (default {sum(LIMITS.values())} on CUDA, x{SMOKE_SCALE} with --smoke)")
    p.add_argument("--sections", default=",".join(LIMITS), help="comma-separated subset, in this order")
    p.add_argument("--commit", default=os.environ.get("SFTKEY_COMMIT"), help="git commit to record")
    args = p.parse_args()
    if not args.out:
        sys.exit("gpu_suite: no --out and no $OUT")
    unknown = [s for s in args.sections.split(",") if s not in LIMITS]
    if unknown:
        sys.exit(f"gpu_suite: unknown section(s) {unknown}; choose from {', '.join(LIMITS)}")
    started = time.perf_counter()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    scale = SMOKE_SCALE if args.smoke else 1
    names = args.sections.split(",")
    limits = {name: LIMITS[name] * scale for name in names}
    budget = args.budget or sum(limits.values())
    deadline = started + budget
    tmp = Path(tempfile.mkdtemp(prefix="gpu_suite_"))
    commands = section_commands(args, tmp)
    report = dict(smoke=args.smoke, budget_s=budget, wall_s=0.0, environment=environment(args), sections={})
    env = report["environment"]
    print(f"[gpu_suite] {env.get('gpu', 'cpu')}, torch {env['torch']}, transformers {env['transformers']}, "
          f"commit {env['commit']}, budget {budget:.0f} s, work dir {tmp}", flush=True)
    with open(out_dir / "sections.log", "w") as log:
        for i, name in enumerate(names):
            argv, extra_env, json_path = commands[name]
            # this section's own limit plus whatever the earlier ones left unused
            limit = deadline - time.perf_counter() - sum(limits[n] for n in names[i + 1:])
            command = " ".join(f"{k}={v}" for k, v in extra_env.items()) + (" " if extra_env else "") + \
                " ".join(Path(a).name if a == sys.executable else a for a in argv)
            section = dict(command=command, limit_s=max(limit, 0.0), tail=[])
            if limit < 10:
                section.update(status="skipped (no time left)", seconds=0.0)
            else:
                print(f"[gpu_suite] {time.perf_counter() - started:6.1f} s  {name}: start (limit {limit:.0f} s)",
                      flush=True)
                status, seconds, tail = run_section(name, argv, extra_env, limit, log)
                section.update(status=status, seconds=seconds, tail=tail)
                data = read_json(json_path) if json_path else None
                section["data"] = data
                if name == "tests":
                    section["headline"], section["markdown"] = summarise_tests(tail)
                elif name in ("train", "fsdp"):
                    run_dir = tmp / ("train_demo" if name == "train" else "fsdp")
                    section["data"], section["markdown"] = summarise_train(run_dir, out_dir if name == "train" else None)
                    section["headline"] = "; ".join(
                        f"stage {n}: loss {s['first_loss']:.3f} -> {s['last_loss']:.3f}"
                        + (f", Acc {s['acc']:.3f}" if s["acc"] is not None else "")
                        for n, s in section["data"].items())
                elif data:
                    from benchmarks.step_table import markdown
                    section["markdown"] = {"step": markdown, "loss": loss_markdown,
                                           "generate": generate_markdown}[name](data)
                    section["headline"] = headline(name, data)
                print(f"[gpu_suite] {time.perf_counter() - started:6.1f} s  {name}: {status} in {seconds:.1f} s"
                      + (f"  {section.get('headline')}" if section.get("headline") else ""), flush=True)
                if status != "ok":
                    print("\n".join(f"    | {line}" for line in tail[-20:]), flush=True)
            report["sections"][name] = section
            report["wall_s"] = time.perf_counter() - started
            write_report(out_dir, report)
    print("\n" + (out_dir / "gpu_suite.md").read_text(), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    failed = [n for n, s in report["sections"].items() if s["status"] != "ok"]
    print(f"[gpu_suite] done in {report['wall_s']:.0f} s; "
          + (f"not ok: {', '.join(failed)}" if failed else "every section ok"), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
