"""Peak memory of a block of work, measured the same way for every method (reports name the definition)."""

from __future__ import annotations

import resource
import threading

import torch


class PeakMemory:
    """Peak memory of the enclosed block: CUDA max_memory_allocated, or RSS growth on CPU (see ErasureResult)."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.peak = 0
        self.definition = "torch.cuda.max_memory_allocated during the erasure (anchor generation + training)"

    def __enter__(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return self
        try:
            import psutil
        except ImportError:
            self._maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.definition = "growth of the process's peak resident set size (ru_maxrss) during the erasure"
            return self
        self.definition = "growth of the process's resident set size during the erasure, sampled every 20 ms"
        process = psutil.Process()
        self._start = self._max = process.memory_info().rss
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.02):
                self._max = max(self._max, process.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.peak = int(torch.cuda.max_memory_allocated())
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.peak = int(self._max - self._start)
        else:
            self.peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self._maxrss)
        return False
