"""Peak memory of a call.

On CUDA: the largest ``torch.cuda.max_memory_allocated()`` inside the call minus what was
allocated before it (activations and gradients, not the weights of the models kept resident).

On CPU (Linux): the kernel's resident-set high-water mark is reset to the current RSS
(``echo 5 > /proc/self/clear_refs``) and the peak is ``VmHWM`` after the call minus ``VmRSS``
before it (/proc/self/status), i.e. the physical memory the call really touched. Where the
reset is not allowed: ``ru_maxrss`` after the call minus ``VmRSS`` before it, flagged as an
upper bound when ``ru_maxrss`` did not grow (it then still holds an earlier high-water mark).
"""
import gc
import resource
import time
from typing import Callable, Dict

import torch

from .timing import synchronize


class CudaPeak:
    """Context manager: on CUDA, ``entry["peak_mem_mb"]`` = the largest CUDA memory allocated
    inside the block beyond what was allocated on entry (the call's activations and gradients,
    not the weights of the models kept resident), over all blocks of that entry. No-op on CPU."""

    def __init__(self, entry: Dict, device: str):
        self.entry, self.cuda = entry, device.startswith("cuda")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            self.before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - self.before) / 2**20
            self.entry["peak_mem_mb"] = max(self.entry.get("peak_mem_mb", 0.0), peak)
        return False


def proc_status_kib(field: str) -> int:
    """A "VmRSS"/"VmHWM" line of /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (VmHWM) to the current RSS (Linux >= 4.0,
    ``echo 5 > /proc/self/clear_refs``). False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def first_call_peak(fn: Callable, device: str):
    """Call ``fn()`` once (after ``gc.collect()``), measuring its peak memory as the module
    docstring says. Returns (output, seconds, peak bytes, peak is only an upper bound, method)."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = proc_status_kib("VmRSS") * 1024
        hwm_reset = reset_peak_rss()
        # Without the reset, ru_maxrss still holds the setup's high-water mark.
        before_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    first = time.perf_counter() - start
    if device.startswith("cuda"):
        peak, bound, method = torch.cuda.max_memory_allocated() - before, False, "cuda.max_memory_allocated"
    elif hwm_reset:
        peak, bound, method = proc_status_kib("VmHWM") * 1024 - before, False, "VmHWM after clear_refs"
    else:
        after_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        bound = after_max <= before_max
        peak, method = (after_max if not bound else before_max) - before, "ru_maxrss"
    return out, first, peak, bound, method
