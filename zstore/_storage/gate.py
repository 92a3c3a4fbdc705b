"""The writes of one save: none starts once the save may no longer write, none outlives it.

A save writes hundreds of objects concurrently, through zarr's task fan-out as
well as its own. When one write fails, ``asyncio.gather`` raises at once but
leaves the sibling tasks running, and zarr's nested gathers leave theirs: without
a gate, a failed save's writes went on landing after it had raised, into the
checkpoint the next save committed at the same URL (found in review: that
checkpoint loaded as a mix of two saves, every chunk's checksum valid).

So every write of a save passes the gate: it checks the lease's fence before it
starts, and the gate knows which tasks are in the middle of a write. Closing the
gate (when the save ends, however it ends, or when its lease lapses) refuses any
further write and waits until none is in flight. On object stores it first
cancels them (a request still retrying could otherwise go on for minutes); local
disk and memory:// write in threads, which a cancel would not stop, in
milliseconds, so there it only waits.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from zstore.errors import LeaseLostError

GRACE = 5.0  # seconds a cancelled write may take to unwind (closing its connection)


class WriteGate:
    """Admits the writes of one save while ``fence()`` allows them; see the module docstring."""

    def __init__(self, fence: Callable[[], None], cancel: bool) -> None:
        self._fence = fence
        self._cancel = cancel
        self._closed: str | None = None
        self._writing: Counter[asyncio.Task[object]] = Counter()
        self._idle = asyncio.Event()
        self._idle.set()
        self._cancelled: set[asyncio.Task[object]] = set()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[None]:
        """Around one write: raises ``LeaseLostError`` instead of starting it once closed."""
        if self._closed is not None:
            raise LeaseLostError(self._closed)
        self._fence()
        task = asyncio.current_task()
        assert task is not None
        self._writing[task] += 1
        self._idle.clear()
        try:
            yield
        except asyncio.CancelledError:
            if task not in self._cancelled:
                raise
            task.uncancel()  # stopped by the gate, not by its caller: say why
            raise LeaseLostError(self._closed or "") from None
        finally:
            self._writing[task] -= 1
            if not self._writing[task]:
                del self._writing[task]
            if not self._writing:
                self._idle.set()

    async def close(self, reason: str) -> None:
        """Refuse every further write (with ``reason``), stop those in flight and wait until
        none is left (at most ``GRACE`` seconds). Idempotent; the first reason stays."""
        if self._closed is None:
            self._closed = reason
        if self._cancel:
            for task in self._writing:
                if task is not asyncio.current_task():
                    self._cancelled.add(task)
                    task.cancel()
        try:
            await asyncio.wait_for(self._idle.wait(), GRACE)
        except TimeoutError:
            pass
