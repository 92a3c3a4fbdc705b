"""One writer per checkpoint URL: a lease object taken before a save touches anything.

Two savers racing for one URL would otherwise both clear it and write the same
keys, and the one that commits could commit the other's shards. So a save first
creates ``zstore.lease.json`` only if absent (S3 ``If-None-Match: *``,
``O_EXCL`` locally): of two savers exactly one gets it, the other fails at once
with a message naming the holder. The holder renews the lease every
``TTL / 4`` seconds while it writes; a lease not renewed for ``TTL`` seconds,
or held by a process of this machine that no longer exists, belongs to a save
that crashed or hung, and the next save takes it over (its
owner, if still alive, notices at its next renewal and aborts before
committing). The lease is deleted after the commit.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from zstore.errors import CheckpointExistsError, LeaseLostError
from zstore.storage import Location

LEASE = "zstore.lease.json"
TTL = 60.0  # seconds without renewal after which a lease is abandoned


def _alive(holder: dict[str, Any]) -> bool:
    """Whether a lease's holder may still be writing: renewed recently, and, when it ran on
    this machine, its process still exists (a crashed save is taken over at once)."""
    try:
        if float(holder["expires"]) <= time.time():
            return False
    except (KeyError, TypeError, ValueError):
        return False  # unreadable: abandoned
    pid = holder.get("pid")
    if holder.get("host") == socket.gethostname() and isinstance(pid, int) and pid > 0:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except (PermissionError, OverflowError):
            pass  # it exists, as someone else's process
    return True


async def is_leased(location: Location) -> bool:
    """Whether a save holds a live lease on ``location`` (is writing there now)."""
    raw = await location.get(LEASE)
    try:
        return raw is not None and _alive(dict(json.loads(raw)))
    except (ValueError, TypeError):
        return False


class Lease:
    """This save's claim on its URL; ``held()`` runs the renewals."""

    def __init__(self, location: Location, ttl: float = TTL) -> None:
        self.location = location
        self.ttl = ttl
        self.token = uuid.uuid4().hex
        self._lost: BaseException | None = None

    def _document(self) -> bytes:
        return json.dumps({"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                           "expires": time.time() + self.ttl}).encode()

    async def acquire(self) -> None:
        """Take the lease, or raise ``CheckpointExistsError`` naming the live holder."""
        for _ in range(3):  # a stale lease may be taken over by someone else meanwhile
            try:
                await self.location.put_new(LEASE, self._document())
                return
            except FileExistsError:
                holder = await self._holder()
                if holder is not None and holder.get("token") == self.token:
                    return  # our own create, answered late and retried by the client
                if holder is not None and _alive(holder):
                    raise CheckpointExistsError(
                        f"another save is writing {self.location.url!r} (host "
                        f"{holder.get('host')!r}, pid {holder.get('pid')}); two writers never "
                        "share a URL. Wait for it, or save elsewhere") from None
                await self.location.remove_all([LEASE])  # abandoned: take it over
        raise CheckpointExistsError(f"could not take the write lease of {self.location.url!r}: "
                                    "other savers keep taking it")

    async def _holder(self) -> dict[str, Any] | None:
        raw = await self.location.get(LEASE)
        try:
            return None if raw is None else dict(json.loads(raw))
        except (ValueError, TypeError):
            return {}  # unreadable: treat as abandoned

    async def check(self) -> None:
        """Raise ``LeaseLostError`` unless the lease is still ours (called before committing)."""
        if self._lost is not None:
            raise LeaseLostError(str(self._lost))
        holder = await self._holder()
        if holder is None or holder.get("token") != self.token:
            raise LeaseLostError(
                f"the write lease of {self.location.url!r} was taken over by another save "
                "(this one stalled for longer than the lease lasts); nothing was committed")

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 4)
            try:
                await self.check()
                await self.location.put(LEASE, self._document())
            except LeaseLostError as e:
                self._lost = e
                return
            except Exception:  # a failed renewal is retried; the TTL leaves room for three
                continue

    async def release(self) -> None:
        holder = await self._holder()
        if holder is not None and holder.get("token") == self.token:
            await self.location.remove_all([LEASE])

    @asynccontextmanager
    async def held(self) -> AsyncIterator[Lease]:
        """Acquire, renew in the background while the body runs, release at the end."""
        await self.acquire()
        renewing = asyncio.create_task(self._renew_forever())
        try:
            yield self
        finally:
            renewing.cancel()
            try:
                await asyncio.shield(self.release())
            except Exception:  # an unreleased lease expires on its own
                pass
