"""The machine a run or a benchmark ran on, in the terms its speed numbers depend on.

tokens/s and MFU (log.jsonl, BENCHMARKS.md) mean little without the machine: on CPUs the bf16
matmul rate differs several-fold between cores with AMX tiles, cores with AVX-512 bf16 only and
cores with neither, so every record names the CPU model and those flags, the cores this process
may run on, torch's thread count, the GPU if one is used, the torch version and the commit.
train.py prints it and appends it to the run's machine.json (one entry per start that trains or
evaluates, so a run resumed elsewhere says so); the benchmark scripts print it above their tables.
"""
import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch

from atomic_io import read_json, write_json

ROOT = Path(__file__).resolve().parents[1]
CPU_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")  # /proc/cpuinfo's names


def cpu_info(cpuinfo="/proc/cpuinfo"):
    """{"model": the first processor's model name, flag: bool for each of CPU_FLAGS}; the model
    from platform.processor() and the flags None where cpuinfo cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return {"model": platform.processor() or platform.machine(), **{flag: None for flag in CPU_FLAGS}}
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:  # x86 / arm64 spelling
            flags = set(value.split())
    return {"model": model or platform.machine(), **{flag: flag in flags for flag in CPU_FLAGS}}


def git_commit(root=ROOT):
    """HEAD's hash, with "+changes" when tracked files differ from it; None outside a checkout or
    without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def machine(device=None, cpuinfo="/proc/cpuinfo"):
    """The record (a JSON-able dict); device: the torch.device the work runs on (default CPU)."""
    device = torch.device(device or "cpu")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count()
    gpu = None
    if device.type == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(device)
    return {"cpu": cpu_info(cpuinfo), "cores": cores, "threads": torch.get_num_threads(),
            "device": str(device), "gpu": gpu, "torch": torch.__version__,
            "python": platform.python_version(), "commit": git_commit()}


def describe(record):
    """One line of a machine() record, e.g. "AMD EPYC (AVX-512 bf16: yes, AMX bf16: no), 2 cores,
    2 threads, torch 2.13.0+cpu, commit 9a7874a"."""
    cpu = record["cpu"]

    def yes_no(flag):
        return "unknown" if cpu[flag] is None else ("yes" if cpu[flag] else "no")

    parts = [f"{cpu['model']} (AVX-512 bf16: {yes_no('avx512_bf16')}, AMX bf16: {yes_no('amx_bf16')})",
             f"{record['cores']} cores", f"{record['threads']} threads"]
    if record["gpu"]:
        parts.append(f"GPU {record['gpu']}")
    parts.append(f"torch {record['torch']}")
    commit = record["commit"]
    parts.append(f"commit {commit[:7] + commit[40:] if commit else 'unknown'}")
    return ", ".join(parts)


def header(device=None):
    """The line the benchmark scripts print above their tables."""
    return f"machine: {describe(machine(device))}"


def append_start(path, record, resume):
    """Add this start's record to the run's machine.json (a list, one entry per start of train.py
    on the run: the first, and each --resume that trains or evaluates), with the time and whether
    it resumed; returns True."""
    path = Path(path)
    starts = read_json(path) if path.exists() else []
    if not isinstance(starts, list):
        raise ValueError(f"{path}: expected a list of starts, found {type(starts).__name__}")
    entry = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "resume": bool(resume), **record}
    write_json(path, starts + [entry])
    return True
