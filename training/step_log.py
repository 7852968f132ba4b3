"""The run's log.jsonl (one line per optimizer step or validation) and the throughput numbers in
each line: model FLOP utilisation against a measured peak, and peak memory."""
import functools
import json
import resource
import time
from pathlib import Path

import torch

from atomic_io import atomic_write
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
        """Keeps the lines a resume from `step` of `stage` does not write again: the earlier stages,
        and this stage's lines up to the checkpoint's step (step 0's validation included) when it
        has one; the rest, and a torn last line left by a kill, go."""
        if not self.path.exists():
            return
        records, torn = self._read()
        if torn:
            print(f"{self.path}: dropped a torn last line left by the killed run ({torn!r:.60})")
        kept = [r for r in records if r["stage"] < stage or (r["stage"] == stage and step > 0 and r["step"] <= step)]
        with atomic_write(self.path) as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)

    def records(self):
        return self._read()[0] if self.path.exists() else []

    def _read(self):
        """(records, the torn last line or None): a line that is not JSON is an error naming the file
        and line, except the last one when it lacks its newline (a write cut short by a kill)."""
        text = self.path.read_text()
        lines = text.splitlines()
        torn = lines.pop() if lines and not text.endswith("\n") else None
        records = []
        for number, line in enumerate(lines, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.path}:{number}: not a JSON line ({e})") from None
        if torn is not None:
            try:
                records.append(json.loads(torn))
                torn = None  # complete but for its newline
            except json.JSONDecodeError:
                pass
        return records, torn


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
