"""The run's log.jsonl (one line per optimizer step or validation) and the throughput numbers in
each line: model FLOP utilisation against a measured peak, and peak memory."""
import functools
import json
import resource
import time
from pathlib import Path

import torch

from model.precision import PRECISIONS


class JsonlLog:
    """One JSON line per optimizer step or validation; on resume, lines past the checkpoint go."""

    def __init__(self, path, enabled=True):
        self.path, self.enabled = Path(path), enabled  # only rank 0 writes

    def write(self, record):
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate(self, stage, step):
        if not self.path.exists():
            return
        records = [json.loads(line) for line in self.path.read_text().splitlines()]
        kept = [r for r in records if r["stage"] < stage or (r["stage"] == stage and 0 < r["step"] <= step)]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def records(self):
        return [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.exists() else []


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@functools.lru_cache
def peak_flops(device, precision):
    """Peak matmul FLOP/s for MFU: measured with a large square matmul in the run's precision."""
    dtype = PRECISIONS.get(precision, torch.float32)
    n = 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):
        a @ b
    sync(device)
    t0, reps = time.perf_counter(), 5
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def peak_memory_gb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux
