"""Peak memory of a stretch of work (a fine-tune's training steps), for the record.

On CUDA it is ``torch.cuda.max_memory_allocated`` over the stretch (everything the process holds on the device:
weights, optimiser state, activations). On a CPU torch keeps no such count (and ``tracemalloc`` sees Python objects
only, not tensors), so it is the growth of the bytes the C allocator has handed out and not yet taken back (glibc's
``mallinfo2``: arena chunks in use plus mmap'd blocks, where large tensors live) over the count at the start, sampled
every 20 ms: it misses peaks shorter than that, but unlike the resident set size it does not stay flat when a
process reuses memory an earlier run freed (runs of one sweep share a process). Without glibc, the resident set size.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

import torch

MB = 1024 * 1024


def _rss() -> int:
    """Resident set size of this process in bytes (Linux ``/proc``; 0 where it is not readable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo2():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


_MALLINFO2 = _mallinfo2()


def _in_use() -> int:
    """Bytes the C allocator has handed out and not taken back (glibc), else the resident set size."""
    if _MALLINFO2 is None:
        return _rss()
    info = _MALLINFO2()
    return info.uordblks + info.hblkhd


CPU_MEASURE = "cpu_malloc_in_use_growth" if _MALLINFO2 is not None else "cpu_rss_growth"


class PeakMemory:
    """``with PeakMemory(device) as peak: ...``; then ``peak.record()``: ``{"peak_memory_mb", "memory_measure"}``."""

    def __init__(self, device: str):
        self.cuda = str(device).startswith("cuda") and torch.cuda.is_available()
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            self.start = _in_use()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _in_use() - self.start)

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _in_use() - self.start)

    def record(self) -> dict:
        return {"peak_memory_mb": round(self.peak / MB, 1),
                "memory_measure": "cuda_max_allocated" if self.cuda else CPU_MEASURE}
