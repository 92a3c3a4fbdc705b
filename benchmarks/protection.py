"""Benchmark sections ``encryption`` and ``tiers``: what protecting a checkpoint costs.

- encryption: a save and a full load with ``encryption_key=``, against the same save and
  load without it, interleaved on the same bytes (ratio = plain time / encrypted time:
  1.0 is free);
- tiers: ``CheckpointManager.restore()`` of the newest step from the fast tier (local
  disk) and, once that tier is gone, from its mirror (S3 on moto), each against reading
  that tier's stored objects raw (files; one fsspec ``cat`` of every object).
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

import zstore
from benchmarks import workloads
from benchmarks.measure import interleave, ratio, timed
from benchmarks.report import Report, Row, seconds

KEY = os.urandom(32)


def encryption(report: Report, backends: Any, backend: str, state: dict[str, np.ndarray],
               reps: int) -> None:
    target = backends.target(backend, "encryption")
    urls = {name: f"{target.url}/{name}" for name in ("plain", "sealed")}
    rounds = itertools.count()

    def save(name: str) -> float:
        key = KEY if name == "sealed" else None
        url = f"{urls[name]}-{next(rounds)}"
        return timed(lambda: zstore.save(state, url, storage_options=target.options,
                                         encryption_key=key))[0]

    saves = interleave({"plain": lambda _: save("plain"), "sealed": lambda _: save("sealed")},
                       reps)
    zstore.save(state, urls["plain"], storage_options=target.options)
    zstore.save(state, urls["sealed"], storage_options=target.options, encryption_key=KEY)
    loads = interleave({
        "plain": lambda _: timed(lambda: zstore.load(urls["plain"],
                                                     storage_options=target.options))[0],
        "sealed": lambda _: timed(lambda: zstore.load(urls["sealed"],
                                                      storage_options=target.options,
                                                      encryption_key=KEY))[0]}, reps)
    size = workloads.nbytes(state)
    for what, stats in (("save", saves), ("full load", loads)):
        report.add(Row("encryption", backend, "bf16", f"{what} encrypted vs plain",
                       f"{size / stats['sealed'].median / 1e6:.0f} MB/s "
                       f"{seconds(stats['sealed'])}",
                       f"plain {seconds(stats['plain'])}", ratio(stats["plain"], stats["sealed"]),
                       {"bytes": size, "sealed": stats["sealed"].as_dict(),
                        "plain": stats["plain"].as_dict()}))
    backends.remove(target)


def tiers(report: Report, backends: Any, state: dict[str, np.ndarray], reps: int) -> None:
    """Restore from the fast tier, then from the mirror alone, against a raw read."""
    assert backends.s3 is not None
    fast = backends.target("local", "tiers")
    mirror = backends.target("s3", "tiers-mirror")
    manager = zstore.CheckpointManager(fast.url, mirrors=[
        zstore.Mirror(mirror.url, storage_options=mirror.options)])
    manager.save(1, state)
    manager.wait()  # the mirror's copy too
    manager.close()
    step = Path(fast.url) / "step-1"
    files = [p for p in step.rglob("*") if p.is_file()]

    def raw(_: int) -> float:
        return timed(lambda: [p.read_bytes() for p in files])[0]

    def restore(_: int) -> float:
        with zstore.CheckpointManager(fast.url, mirrors=[
                zstore.Mirror(mirror.url, storage_options=mirror.options)]) as again:
            return timed(again.restore)[0]

    fs = mirror.fs()
    objects = fs.find(f"{mirror.url}/step-1")

    def raw_s3(_: int) -> float:
        return timed(lambda: fs.cat(objects))[0]

    local = interleave({"raw": raw, "restore": restore}, reps)
    shutil.rmtree(fast.url)  # the fast tier is lost: the same manager restores from S3
    remote = interleave({"raw": raw_s3, "restore": restore}, reps)
    size = workloads.nbytes(state)
    report.add(Row("tiers", "local", "bf16", "restore from the fast tier vs raw file read",
                   f"{size / local['restore'].median / 1e6:.0f} MB/s "
                   f"{seconds(local['restore'])}", f"raw read {seconds(local['raw'])}",
                   ratio(local["raw"], local["restore"]),
                   {"bytes": size, "restore": local["restore"].as_dict(),
                    "raw": local["raw"].as_dict()}))
    report.add(Row("tiers", "s3", "bf16", "restore from the mirror (fast tier lost) vs raw",
                   f"{size / remote['restore'].median / 1e6:.0f} MB/s "
                   f"{seconds(remote['restore'])}; fast tier {seconds(local['restore'])}",
                   f"fsspec cat of its {len(objects)} objects {seconds(remote['raw'])}",
                   ratio(remote["raw"], remote["restore"]),
                   {"bytes": size, "restore": remote["restore"].as_dict(),
                    "raw": remote["raw"].as_dict()}))
    backends.remove(mirror)
