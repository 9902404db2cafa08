"""Freed tensor memory goes back to the operating system (glibc only).

glibc's malloc raises its mmap threshold to the size of each large block freed (up to 32 MiB).
From then on blocks below that size come from the heap, and a heap freed behind one live small
object stays resident. A decode loop whose KV cache grows by one column a step frees and
reallocates blocks of a few MiB every step, so the default eval peaked at 2.4-2.7 GiB, against
1.4-1.5 GiB with the fix (`benchmarks/steered_throughput.py` prints the peak). Fixing the thresholds keeps
every block above 128 KiB in a mapping of its own, unmapped when freed. torch has no option for
its CPU allocator, and glibc reads `MALLOC_MMAP_THRESHOLD_` only at process start, hence `mallopt`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value, kept fixed

_applied = False


def return_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (once). False where malloc is not
    glibc's, or where the user set the thresholds through the environment (theirs stand)."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    _applied = bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, THRESHOLD_BYTES))
    return _applied
