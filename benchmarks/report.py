"""Collecting result rows, printing them as tables, and writing the JSON record."""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.measure import Stat


@dataclass
class Row:
    section: str
    backend: str
    workload: str
    metric: str
    zstore: str  # zstore's figure, formatted
    baseline: str  # the baseline's name and figure, formatted
    ratio: Stat | None  # per-round ratio, > 1 favours zstore
    data: dict[str, Any] = field(default_factory=dict)


def seconds(stat: Stat) -> str:
    return f"{stat.median:.3f}s ({stat.min:.3f}-{stat.max:.3f})"


class Report:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.rows: list[Row] = []
        self.started = time.time()
        self._started = time.perf_counter()

    def add(self, row: Row) -> None:
        self.rows.append(row)
        ratio = (f"{row.ratio.median:.2f}x [{row.ratio.min:.2f}-{row.ratio.max:.2f}]"
                 if row.ratio else "")
        print(f"  {row.backend:6} {row.workload:14} {row.metric:34} zstore {row.zstore:28} "
              f"vs {row.baseline:40} {ratio}", flush=True)

    def section(self, title: str) -> None:
        print(f"\n== {title}  [{time.perf_counter() - self._started:.0f} s into the run]",
              flush=True)

    def machine(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "cpus": os.cpu_count(),
                "python": platform.python_version(), "platform": platform.platform()}

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{time.strftime('%Y-%m-%d')}-{socket.gethostname()}.json"
        rows = [{**{k: v for k, v in vars(r).items() if k != "ratio"},
                 "ratio": r.ratio.as_dict() if r.ratio else None} for r in self.rows]
        path.write_text(json.dumps({"machine": self.machine(), "config": self.config,
                                    "seconds": time.time() - self.started, "rows": rows},
                                   indent=1, default=str))
        return path

    def markdown(self) -> str:
        """The results as a Markdown table (for the README and closing notes)."""
        lines = ["| section | backend | workload | metric | zstore | baseline "
                 "| ratio (median [min-max]) |",
                 "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in self.rows:
            ratio = (f"{r.ratio.median:.2f}x [{r.ratio.min:.2f}-{r.ratio.max:.2f}]"
                     if r.ratio else "")
            lines.append(f"| {r.section} | {r.backend} | {r.workload} | {r.metric} | {r.zstore} "
                         f"| {r.baseline} | {ratio} |")
        return "\n".join(lines)
