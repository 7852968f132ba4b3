"""glibc's allocator told to keep freed memory in the process (CPU training).

A CPU training step allocates and frees the same activation and gradient buffers every step.
glibc serves blocks above its mmap threshold (128 KiB, rising to at most 32 MiB as such blocks are
freed) with fresh mmaps and gives them back on free, and it trims the top of the heap whenever more
than twice that threshold lies free there; either way the next step's kernels write into pages the
kernel must map and zero again. In the default run that is ~2,000 page faults per step, ~8 MB of
fresh pages (BENCHMARKS.md section 7). Raising both thresholds keeps those pages mapped for reuse.
"""
import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 256 << 20  # larger blocks (whole weight matrices of big models) are still mmapped
TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top beyond this goes back to the system
ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory():
    """Set glibc's mmap and trim thresholds (above); returns what was done, in words. Nothing on
    other C libraries, or where the user set either threshold through glibc's environment
    variables (theirs stand)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not glibc: allocator left as it is"
    if any(name in os.environ for name in ENV):
        return "glibc thresholds from the environment"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return "glibc refused the thresholds: allocator left as it is"
    return f"glibc mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold {TRIM_THRESHOLD >> 20} MiB"
