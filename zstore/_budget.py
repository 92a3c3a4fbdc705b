"""A bound on the bytes of reads in flight, so concurrency never multiplies memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ByteBudget:
    """At most ``limit`` bytes held at once; one holder larger than the limit runs alone."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: self._used == 0 or
                                         self._used + nbytes <= self.limit)
            self._used += nbytes
        try:
            yield
        finally:
            async with self._changed:
                self._used -= nbytes
                self._changed.notify_all()
