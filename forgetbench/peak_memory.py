"""Peak memory of a stretch of work (a fine-tune's training steps), for the record.

On CUDA it is ``torch.cuda.max_memory_allocated`` over the stretch (everything the process holds on the device:
weights, optimiser state, activations). On a CPU the allocator keeps no such count (and ``tracemalloc`` sees Python
objects only, not tensors), so it is the growth of the process's resident set size over its size at the start,
sampled every 20 ms: an approximation that misses peaks shorter than that and counts memory freed but not returned.
"""
from __future__ import annotations

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
            self.start = _rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss() - self.start)

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss() - self.start)

    def record(self) -> dict:
        return {"peak_memory_mb": round(self.peak / MB, 1),
                "memory_measure": "cuda_max_allocated" if self.cuda else "cpu_rss_growth"}
