"""One writer per checkpoint URL: a lease object taken before a save touches anything.

Two savers racing for one URL would otherwise both clear it and write the same
keys, and the one that commits could commit the other's shards. So a save first
creates ``zstore.lease.json`` only if absent (S3 ``If-None-Match: *``,
``O_EXCL`` locally): of two savers exactly one gets it, the other fails at once
with a message naming the holder.

The holder renews the lease every ``Settings.lease_renewal`` seconds (a quarter
of ``Settings.lease_ttl``) while it writes; a lease not renewed for
``lease_ttl`` seconds, or held by a process of this machine that no
longer exists, belongs to a save that crashed or hung, and the next save takes
it over. Taking over, renewing and releasing are each conditional on the
version last seen (S3 ``If-Match``, see ``conditional``): of two savers taking
over one abandoned lease exactly one succeeds, and a stalled holder's late
renewal cannot overwrite its successor's lease.

A holder that could not renew stops writing on its own clock before anyone
else may take over: ``Settings.lease_fence`` (3/4 of the TTL) after the last
renewal, every write not yet started is refused and every write in flight is
cancelled (the fence and the watch, through the save's ``WriteGate``), so a
writer that stalled or lost its storage cannot write shards into its
successor's checkpoint; it fails with ``LeaseLostError`` and never commits. The
lease is released when the save ends, after the gate has stopped all of its
writes.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from zstore._format.manifest import parse_json
from zstore._format.names import LEASE
from zstore._options import Settings, current
from zstore._storage.conditional import get_versioned, remove, replace
from zstore._storage.gate import WriteGate
from zstore._storage.location import Location
from zstore.errors import LeaseHeldError, LeaseLostError

# The lease's timing (TTL, renewals, fence, release timeout) is in zstore.Settings.
_given_up: set[str] = set()  # tokens of this process's leases, once their save ended


def _pid_namespace() -> str:
    """Which process IDs a pid in a lease refers to: containers sharing a host name (host
    networking) have their own, and must not judge each other's processes dead."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""  # no /proc: the host name alone


def _alive(holder: dict[str, Any]) -> bool:
    """Whether a lease's holder may still be writing: renewed recently, not ended in this
    process, and, when it ran in this machine's process namespace, its process still exists
    (a crashed save is taken over at once)."""
    expires = _expires(holder)
    if expires is None or expires <= time.time():  # lapsed, or unreadable: abandoned
        return False
    if holder.get("token") in _given_up:
        return False
    pid = holder.get("pid")
    if (holder.get("host") == socket.gethostname() and holder.get("pidns") == _pid_namespace()
            and isinstance(pid, int) and pid > 0):
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
    return raw is not None and _alive(_parse(raw))


class Lease:
    """This save's claim on its URL; ``held()`` runs the renewals and sets the fence."""

    def __init__(self, location: Location, ttl: float | None = None) -> None:
        self.location = location
        # read once, when the save starts: a change of settings applies to the next save
        self.settings: Settings = current() if ttl is None else current().replace(lease_ttl=ttl)
        self.ttl = self.settings.lease_ttl
        self.token = uuid.uuid4().hex
        self._version = ""  # of the lease object as this save last wrote it
        self._writable_until = 0.0  # this machine's clock
        self._lost: BaseException | None = None
        # one renewal at a time: two at once would both replace the same version, and the
        # one that lost would take the lease for lost (a collective save renews on its own
        # too, beside the renewals of ``held``)
        self._renewing = asyncio.Lock()

    def _document(self) -> tuple[bytes, float]:
        now = time.time()
        document = {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                    "pidns": _pid_namespace(), "expires": now + self.ttl}
        return json.dumps(document).encode(), now + self.settings.lease_fence

    async def acquire(self) -> None:
        """Take the lease, or raise ``LeaseHeldError`` naming the live holder."""
        for _ in range(5):  # a stale lease may be taken over by someone else meanwhile
            document, writable_until = self._document()
            try:
                self._version = await self.location.put_new(LEASE, document)
                self._writable_until = writable_until
                return
            except FileExistsError:
                pass
            current = await get_versioned(self.location, LEASE)
            if current is None:
                continue  # released meanwhile: try to create it again
            holder = _parse(current[0])
            if holder.get("token") == self.token:  # our own create, answered late and retried
                self._version, self._writable_until = current[1], writable_until
                return
            if _alive(holder):
                raise LeaseHeldError(
                    f"another save is writing {self.location.url!r} (host "
                    f"{holder.get('host')!r}, pid {holder.get('pid')}); two writers never "
                    "share a URL. Wait for it, or save elsewhere",
                    url=self.location.url, holder=holder, expires=_expires(holder))
            version = await replace(self.location, LEASE, document, current[1])  # take over
            if version is not None:
                self._version, self._writable_until = version, writable_until
                return
        raise LeaseHeldError(f"could not take the write lease of {self.location.url!r}: "
                             "other savers keep taking it", url=self.location.url)

    def fence(self) -> None:
        """Raise ``LeaseLostError`` if this save may no longer write: its lease was taken over,
        or not renewed for long enough that another save may take it over."""
        if self._lost is not None:
            raise LeaseLostError(str(self._lost), url=self.location.url)
        if time.time() > self._writable_until:
            self._lost = LeaseLostError(
                f"the write lease of {self.location.url!r} was not renewed for "
                f"{self.settings.lease_fence:.0f} s (storage unreachable, or this process "
                "stalled), so another save may take the URL over: this save stopped writing "
                "and committed nothing", url=self.location.url)
            raise self._lost

    async def check(self) -> None:
        """Raise ``LeaseLostError`` unless the lease is still ours (called before committing)."""
        self.fence()
        current = await get_versioned(self.location, LEASE)
        if current is None or _parse(current[0]).get("token") != self.token:
            self._lost = LeaseLostError(
                f"the write lease of {self.location.url!r} was taken over by another save "
                "(this one stalled for longer than the lease lasts); nothing was committed",
                url=self.location.url)
            raise self._lost

    async def renew(self) -> None:
        """Extend the lease, only if it is still the version this save wrote last."""
        async with self._renewing:
            await self._renew()

    async def _renew(self) -> None:
        document, writable_until = self._document()
        version = await replace(self.location, LEASE, document, self._version)
        if version is None:
            self._lost = LeaseLostError(
                f"the write lease of {self.location.url!r} was taken over by another save "
                "(this one could not renew it in time); nothing was committed",
                url=self.location.url)
            return
        self._version, self._writable_until = version, writable_until

    async def _renew_forever(self, gate: WriteGate) -> None:
        while self._lost is None:
            await asyncio.sleep(self.settings.lease_renewal)
            try:
                await self.renew()
            except Exception:  # a failed renewal is retried; the watch stops writes in time
                continue
        await gate.close(str(self._lost))

    async def _watch(self, gate: WriteGate) -> None:
        """Close the gate the moment the fence lapses, cancelling writes still in flight (a
        request retrying for minutes must not land after a successor took the URL over)."""
        while (left := self._writable_until - time.time()) > 0:
            await asyncio.sleep(left)
        try:
            self.fence()
        except LeaseLostError as e:
            await gate.close(str(e))

    async def _follow_forever(self, since: float, gate: WriteGate) -> None:
        """A follower's renewals: it reads the lease its leader renews, twice per renewal
        period. A new version seen by a read that started at ``t`` was written after the
        previous read, started at ``p``, saw the old one: so the lease holds until at least
        ``p + lease_ttl``, and the follower may write until ``p + lease_fence``, as the leader
        itself may (only this machine's clock is compared with itself)."""
        previous = since
        while self._lost is None:
            await asyncio.sleep(self.settings.lease_renewal / 2)
            started = time.time()
            try:
                current = await get_versioned(self.location, LEASE)
            except Exception:  # a failed read is retried; the watch stops writes in time
                continue
            if current is None or _parse(current[0]).get("token") != self.token:
                self._lost = LeaseLostError(
                    f"the write lease of {self.location.url!r}, held by rank 0 of this save, "
                    "was released or taken over; this rank stopped writing and nothing was "
                    "committed", url=self.location.url)
                break
            if current[1] != self._version:
                self._version = current[1]
                self._writable_until = max(self._writable_until,
                                           previous + self.settings.lease_fence)
            previous = started
        await gate.close(str(self._lost))

    @asynccontextmanager
    async def followed(self, token: str, version: str, since: float) -> AsyncIterator[Lease]:
        """For the other ranks of a multi-rank save, whose rank 0 holds the lease (``token``,
        last written as ``version``, acquired after ``since`` on this machine's clock): every
        write passes a gate that the same fence guards, kept by reading the lease instead of
        renewing it; at the end the gate closes. The leader releases the lease."""
        self.token, self._version = token, version
        self._writable_until = since + self.settings.lease_fence
        async with self._gated(lambda gate: self._follow_forever(since, gate),
                               f"this rank's part of the save to {self.location.url!r} has "
                               "ended"):
            yield self

    @asynccontextmanager
    async def _gated(self, keep: Callable[[WriteGate], Coroutine[Any, Any, None]], ended: str
                     ) -> AsyncIterator[None]:
        """While the body runs: every write of this location passes a gate that the fence
        guards, kept by ``keep`` (renewing, or following) and by the watch of the fence;
        at the end the gate closes (``ended`` is why), so no write outlives the body."""
        gate = WriteGate(self.fence, cancel=not self.location.writes_in_threads)
        self.location.gate = gate
        helpers = [asyncio.create_task(keep(gate)), asyncio.create_task(self._watch(gate))]
        try:
            yield
        finally:
            closing = asyncio.ensure_future(gate.close(ended))
            try:
                await asyncio.shield(closing)
            except asyncio.CancelledError:  # a deadline: still, no write may outlive the save
                await closing
                raise
            finally:
                for helper in helpers:
                    helper.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)

    @property
    def version(self) -> str:
        """The lease object's version as this save last wrote it (for the followers)."""
        return self._version

    async def release(self) -> None:
        """Delete the lease if it is still this save's; bounded, since a save that failed or
        timed out must return promptly. One not deleted counts as abandoned in this process
        at once (elsewhere once it expires)."""
        released = False
        try:
            released = await asyncio.wait_for(self._remove_own(),
                                              self.settings.lease_release_timeout)
        except Exception:
            pass
        finally:
            if not released:
                _given_up.add(self.token)

    async def _remove_own(self) -> bool:
        """Delete the lease while it is this save's, whatever version: a renewal cancelled
        as the save ended may still have been applied, leaving a version this save never
        learnt."""
        version = self._version
        for _ in range(3):
            if await remove(self.location, LEASE, version):
                return True
            current = await get_versioned(self.location, LEASE)
            if current is None or _parse(current[0]).get("token") != self.token:
                return True  # gone, or another save's now: nothing of ours is left
            version = current[1]
        return False

    @asynccontextmanager
    async def held(self) -> AsyncIterator[Lease]:
        """Acquire; while the body runs, renew, and pass every write through a gate that the
        fence guards; at the end close the gate (no write of this save outlives it), then
        release."""
        await self.acquire()
        try:
            async with self._gated(self._renew_forever, f"the save to {self.location.url!r} "
                                   "has ended; no write of it may start now"):
                yield self
        finally:
            await self.release()


def _expires(holder: dict[str, Any]) -> float | None:
    """When a lease lapses unless renewed (Unix time), if it says so readably."""
    try:
        return float(holder["expires"])
    except (KeyError, TypeError, ValueError):
        return None


def _parse(raw: bytes) -> dict[str, Any]:
    """A lease document; an unreadable one parses as empty (abandoned)."""
    try:
        document = parse_json(raw)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}
