"""The timing and memory helpers the benchmark scripts share."""

from __future__ import annotations

import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch


def timed(action: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls, so one slow outlier (a page fault, a GC pass) does not count."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_gb(device: torch.device) -> float:
    """This process's peak so far: PyTorch's peak allocation on a CUDA device, the resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def peak_allocated_bytes(action: Callable[[], object]) -> int:
    """Peak bytes PyTorch allocates during `action` above what was allocated before it.

    On a GPU this is the CUDA allocator's own peak. On a CPU PyTorch keeps no such counter, so the
    allocations and frees the profiler records are replayed in order; that counts tensors only
    (not the Python heap or library workspaces), which is what differs between model variants.
    """
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        action()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as recording:
        action()
    changes = sorted(
        (event.time_range.start, event.self_cpu_memory_usage)
        for event in recording.events()
        if event.self_cpu_memory_usage
    )
    current = peak = 0
    for _, change in changes:
        current += change
        peak = max(peak, current)
    return peak


def peak_rss_gb(command: list[str], env: dict) -> tuple[float, float, str]:
    """Wall time, the command's peak RSS in GB (its own rusage, read by a small wrapper process) and its stdout."""
    start = time.perf_counter()
    wrapper = [sys.executable, "-c", (
        "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
        "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
    ), *command]  # fmt: skip
    done = subprocess.run(wrapper, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"refface restore failed:\n{done.stderr[-2000:]}")
    peak = int(re.search(r"PEAK_RSS_KB (\d+)", done.stdout).group(1)) / 1024**2
    return seconds, peak, done.stdout
