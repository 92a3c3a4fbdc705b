"""Measuring a real backend: latency, per-stream bandwidth and useful concurrency, and
this machine's CPU speed relative to the time model's reference machine.

``zstore calibrate URL`` writes a few scratch objects under ``URL``, times
reads of them and a few uploads of new ones, deletes them, and stores the
resulting ``BackendProfile`` so that ``plan`` and ``save`` can use it by name.
"""

from __future__ import annotations

import asyncio
import math
import mmap
import os
import statistics
import time
import uuid
from dataclasses import replace
from typing import Any

import crc32c
import numpy as np

from zstore._compat import sync
from zstore._plan.costs import CPU_PROBE_BYTES, CPU_PROBE_SECONDS
from zstore._plan.profiles import BackendProfile, profile_for
from zstore._storage.failures import storage_errors
from zstore._storage.location import resolve

LEVELS = (1, 2, 4, 8, 16, 32)


async def _timed_get(fs: object, path: str) -> float:
    started = time.perf_counter()
    await fs._cat_file(path)  # type: ignore[attr-defined]
    return time.perf_counter() - started


async def _measure(url: str, fs: object, root: str, name: str, small: int, large: int,
                   rounds: int) -> BackendProfile:
    # One object of each size: concurrent GETs of one object measure the same streams as
    # GETs of many, without uploading max(LEVELS) copies first.
    tiny_path, big_path = f"{root}/latency", f"{root}/stream"
    await fs._pipe_file(tiny_path, os.urandom(small))  # type: ignore[attr-defined]
    await fs._pipe_file(big_path, os.urandom(large))  # type: ignore[attr-defined]
    latency = statistics.median([await _timed_get(fs, tiny_path) for _ in range(rounds)])
    stream = min([await _timed_get(fs, big_path) for _ in range(3)])
    bandwidth = large / max(stream - latency, stream / 10)
    aggregate: dict[int, float] = {}
    for level in LEVELS:
        started = time.perf_counter()
        await asyncio.gather(*(_timed_get(fs, big_path) for _ in range(level)))
        aggregate[level] = level * large / (time.perf_counter() - started)
    best = max(aggregate.values())
    concurrency = min(level for level, rate in aggregate.items() if rate >= 0.9 * best)
    uploads = []
    for i in range(3):  # new objects, as a save writes: on local disk new files cost more
        data = os.urandom(large)
        started = time.perf_counter()
        await fs._pipe_file(f"{root}/upload-{i}", data)  # type: ignore[attr-defined]
        uploads.append(time.perf_counter() - started)
    upload = min(uploads)
    write_bandwidth = large / max(upload - latency, upload / 10)
    return replace(profile_for(url), name=name, latency=latency, bandwidth=bandwidth,
                   concurrency=concurrency, cpu_speed=cpu_speed(),
                   write_bandwidth=write_bandwidth)


def cpu_speed() -> float:
    """This machine's speed at the data path's per-byte work relative to the reference machine
    (``costs.CPU_PROBE_SECONDS``): the best of 5 copies of fresh bytes with their crc32c
    (the ``crc32c`` package, as zstore's data path), so a busy moment lowers it little.

    Each copy goes to a new anonymous mapping, so it pays the page faults a save or load
    pays on fresh memory whatever the allocator kept: a copy from malloc ran 3.3x faster
    after a few saves in the same process than in a fresh one, which said nothing about
    the CPU."""
    source = np.random.default_rng(0).integers(0, 256, CPU_PROBE_BYTES, dtype=np.uint8)
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        with mmap.mmap(-1, source.nbytes) as fresh:
            target = np.frombuffer(fresh, dtype=np.uint8)
            np.copyto(target, source)
            crc32c.crc32c(target.data)
            del target  # the mapping closes only once no array views it
        best = min(best, time.perf_counter() - started)
    return round(CPU_PROBE_SECONDS / best, 3)


def calibrate(url: str, *, name: str | None = None, storage_options: dict[str, Any] | None = None,
              small: int = 4096, large: int = 16 << 20, rounds: int = 20) -> BackendProfile:
    """Measure the backend at ``url`` (a prefix zstore may write scratch objects under).

    Returns a profile named ``name`` (default: the built-in it refines, such
    as ``"s3"``); keep it with ``zstore._plan.profiles.store_profile``.
    """
    location = resolve(url, storage_options)
    root = location.path(f".zstore-calibrate-{uuid.uuid4().hex[:8]}")
    fs = location.fs
    with storage_errors(url):
        try:
            return sync(_measure(url, fs, root, name or profile_for(url).name, small, large,
                                 rounds))
        finally:
            sync(fs._rm(root, recursive=True))
