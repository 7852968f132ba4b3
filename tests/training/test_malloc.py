"""training.malloc: with the thresholds raised, a 64 MiB buffer comes from the heap and its pages
stay there after it is freed, ready for the next step; with glibc's defaults it is a fresh mmap,
unmapped on free (so the next one faults page by page). glibc's own counters (mallinfo2), each
case in its own process (mallopt cannot be undone)."""
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from training import malloc

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import ctypes, json, sys, torch
from training.malloc import keep_freed_memory
done = keep_freed_memory() if sys.argv[1] == "keep" else "defaults"
class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                      "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
start = libc.mallinfo2()
x = torch.empty(16 << 20).fill_(1.0)  # 64 MiB: above glibc's largest automatic mmap threshold (32 MiB)
during = libc.mallinfo2()
del x
after = libc.mallinfo2()
print(json.dumps({"done": done, "mmapped": (during.hblkhd - start.hblkhd) >> 20,
                  "unmapped": (during.hblkhd - after.hblkhd) >> 20, "heap_free_after": after.fordblks >> 20}))
"""

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="glibc's mallopt")


def probe(mode, **env):
    clean = {k: v for k, v in os.environ.items() if k not in malloc.ENV}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, env=dict(clean, OMP_NUM_THREADS="1", **env),
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


@glibc
def test_freed_buffer_stays_in_the_heap():
    default, kept = probe("defaults"), probe("keep")
    assert default == {"done": "defaults", "mmapped": 64, "unmapped": 64, "heap_free_after": default["heap_free_after"]}
    assert default["heap_free_after"] < 64
    assert kept["done"] == "glibc mmap threshold 256 MiB, trim threshold 1024 MiB"
    assert kept["mmapped"] == kept["unmapped"] == 0
    assert kept["heap_free_after"] >= 64  # kept mapped: the next 64 MiB need not fault


@glibc
def test_thresholds_from_the_environment_stand():
    assert probe("keep", MALLOC_TRIM_THRESHOLD_="0")["done"] == "glibc thresholds from the environment"


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(malloc.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert malloc.keep_freed_memory() == "not glibc: allocator left as it is"
