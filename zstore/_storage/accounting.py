"""Counting the requests and bytes zstore sends to storage.

Object stores are far away: the number of requests and the bytes on the wire are
the figures that carry from a laptop to S3, so tests and benchmarks state them as
facts instead of timing. Every store zstore opens is wrapped in ``CountingStore``;
each store call maps to one backend request (zstore turns off s3fs's extra HEAD
before a GET), and ``io_stats()`` collects them while it is active.

>>> import numpy as np, zstore
>>> zstore.save({"w": np.zeros((4, 4))}, "memory://doc/io", overwrite=True)  # doctest: +ELLIPSIS
SaveInfo(...)
>>> with zstore.io_stats() as io:
...     _ = zstore.open("memory://doc/io")
>>> io.gets
2
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

from zarr.abc.buffer import Buffer, BufferPrototype
from zarr.abc.store import ByteRequest, Store
from zarr.storage import WrapperStore

from zstore._compat import RangesThroughGet


@dataclass
class IOStats:
    """Requests and bytes seen while an ``io_stats()`` block was active."""

    gets: int = 0
    puts: int = 0
    heads: int = 0
    lists: int = 0
    deletes: int = 0
    copies: int = 0  # server-side copies: a request, but no bytes through this machine
    bytes_read: int = 0
    bytes_written: int = 0
    spans: list[tuple[float, float]] = field(default_factory=list, repr=False)  # GETs' start, end

    @property
    def round_trips(self) -> int:
        """GETs that had to wait for one another: the longest chain in which each GET began
        after the previous one ended. Latency, not request count, is what a far store charges."""
        ordered = sorted(self.spans)
        depth: list[int] = []
        for start, _ in ordered:
            depth.append(1 + max((d for (_, end), d in zip(ordered, depth) if end <= start),
                                 default=0))
        return max(depth, default=0)

    @property
    def requests(self) -> int:
        return self.gets + self.puts + self.heads + self.lists + self.deletes + self.copies

    def __str__(self) -> str:
        parts = [f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                 if f.repr and getattr(self, f.name)]
        return f"{self.requests} requests ({', '.join(parts) or 'none'})"


_active: list[IOStats] = []
_lock = threading.Lock()


@contextmanager
def io_stats() -> Iterator[IOStats]:
    """Count every storage request zstore makes, from any thread, inside the block."""
    stats = IOStats()
    with _lock:
        _active.append(stats)
    try:
        yield stats
    finally:
        with _lock:
            _active.remove(stats)


def record(kind: str, nbytes: int = 0, span: tuple[float, float] | None = None) -> None:
    """Add one request of ``kind`` (a counter name of ``IOStats``) to every active block."""
    with _lock:
        for stats in _active:
            setattr(stats, kind, getattr(stats, kind) + 1)
            if span is not None:
                stats.spans.append(span)
            if kind == "gets":
                stats.bytes_read += nbytes
            elif kind == "puts":
                stats.bytes_written += nbytes


class CountingStore(RangesThroughGet, WrapperStore[Store]):
    """A zarr store that records each call it forwards as one request."""

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        start = time.perf_counter()
        value = await self._store.get(key, prototype, byte_range)
        record("gets", 0 if value is None else len(value), (start, time.perf_counter()))
        return value

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        start = time.perf_counter()
        values = await self._store.get_partial_values(prototype, key_ranges)
        span = (start, time.perf_counter())
        for value in values:
            record("gets", 0 if value is None else len(value), span)
        return values

    async def exists(self, key: str) -> bool:
        record("heads")
        return await self._store.exists(key)

    async def set(self, key: str, value: Buffer) -> None:
        await self._store.set(key, value)
        record("puts", len(value))

    async def delete(self, key: str) -> None:
        await self._store.delete(key)
        record("deletes")

    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        record("lists")
        return self._store.list_prefix(prefix)

    def list_dir(self, prefix: str) -> AsyncIterator[str]:
        record("lists")
        return self._store.list_dir(prefix)
