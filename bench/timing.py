"""Per-step wall-clock timer and peak memory, shared by the two benchmarked scripts."""

from __future__ import annotations

import json
import resource
import time
from contextlib import contextmanager
from pathlib import Path


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (``VmHWM``), MiB.

    Not ``ru_maxrss``: Linux carries that across ``exec``, so a child started by a large
    parent would report the parent's size.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """This process's resident memory now (``VmRSS``), MiB; NaN where unavailable."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs`` 5); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class StepTimer:
    """Record the wall time and the running peak RSS of named steps (``step``: a context).

    Made after the imports, it also records the baseline RSS of the interpreter and libraries.
    Each step's own peak (``step_peak``) is measured by resetting ``VmHWM`` at its start; the
    process peak is kept as the maximum over steps (and the baseline), so it is unchanged.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_after: dict[str, float] = {}
        self.step_peak: dict[str, float] = {}
        self.rss_after: dict[str, float] = {}
        self.baseline_mib = peak_rss_mib()
        self.process_peak = self.baseline_mib

    @contextmanager
    def step(self, name: str, *, add: bool = False):
        """Time a step; with ``add`` the time adds to earlier steps of that name."""
        self.process_peak = max(self.process_peak, peak_rss_mib())
        reset = reset_peak_rss()
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        self.seconds[name] = elapsed + (self.seconds.get(name, 0.0) if add else 0.0)
        peak = peak_rss_mib()
        self.process_peak = max(self.process_peak, peak)
        self.peak_after[name] = self.process_peak
        self.rss_after[name] = rss_mib()
        if reset:
            self.step_peak[name] = max(peak, self.step_peak.get(name, 0.0))
        print(f"{name}: {elapsed:.2f} s", flush=True)

    def write(self, path: str | Path, **extra) -> None:
        """Write step times and this process's peak RSS (MiB; Linux reports KiB) as JSON."""
        record = {
            "steps": self.seconds,
            "peak_rss_mib": max(self.process_peak, peak_rss_mib()),
            "baseline_rss_mib": self.baseline_mib,
            "peak_after_step_mib": self.peak_after,
            "step_peak_mib": self.step_peak,
            "rss_after_step_mib": self.rss_after,
            **extra,
        }
        Path(path).write_text(json.dumps(record, indent=1))
