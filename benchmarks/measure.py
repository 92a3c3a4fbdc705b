"""Interleaved repetitions and the statistics every figure is reported with."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stat:
    """Median, min and max of repeated samples."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    def as_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.min, "max": self.max, "n": len(self.samples)}


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds ``fn`` took and its result.

    A collection runs first, so no earlier garbage is paid for.
    """
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def interleave(ops: dict[str, Callable[[int], float]], reps: int) -> dict[str, Stat]:
    """Run each op once per round, A B C A B C ..., so drift hits every contender alike."""
    stats = {name: Stat() for name in ops}
    for rep in range(reps):
        for name, op in ops.items():
            stats[name].samples.append(op(rep))
    return stats


def ratio(baseline: Stat, candidate: Stat) -> Stat:
    """Per-round speed ratios baseline time / candidate time: > 1 means the candidate is faster."""
    return Stat([b / c for b, c in zip(baseline.samples, candidate.samples)])
