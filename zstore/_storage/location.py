"""The one place a URL and ``storage_options`` become storage.

``resolve`` picks the URL's backend once (``backend``: local disk, S3, any other fsspec
filesystem) and returns a ``Location``, the checkpoint's place in storage that the rest of
zstore reads and writes through. zarr reads and writes chunks through a ``CountingStore``
over zarr's own ``FsspecStore``; the few operations zarr's store has no verb for (a write
that must not replace an existing object, listing with sizes, deleting a prefix) go to the
backend, counted the same way. What a backend raises becomes a zstore error in ``failures``.
"""

from __future__ import annotations

import asyncio
import atexit
from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

from zstore._compat import sync, zarr_loop
from zstore._storage.accounting import CountingStore
from zstore._storage.backend import Backend, backend_class, protocol_of, shutdown
from zstore._storage.failures import access_error, not_found_reason, storage_errors
from zstore._storage.gate import WriteGate
from zstore.errors import CheckpointNotFoundError, InvalidURLError

T = TypeVar("T")


@dataclass
class Location:
    """A checkpoint's place in storage: its URL, its backend, and the gate of the save that
    is writing there, if one is."""

    url: str
    backend: Backend
    gate: WriteGate | None = None  # every write passes it while a save holds the URL

    @property
    def store(self) -> CountingStore:
        """zarr's store rooted here."""
        return self.backend.store

    @property
    def fs(self) -> Any:
        """The fsspec filesystem (async API)."""
        return self.backend.fs

    @property
    def root(self) -> str:
        return self.backend.root

    @property
    def writes_in_threads(self) -> bool:
        """Whether writes run in worker threads (a synchronous filesystem under zarr's async
        wrapper: local disk, memory://), which cancelling their task would not stop."""
        return self.backend.writes_in_threads

    def writing(self) -> AbstractAsyncContextManager[None]:
        """Around each write: the save's gate (see ``gate``), if a save is writing here."""
        return self.gate.write() if self.gate is not None else nullcontext()

    def path(self, key: str) -> str:
        return self.backend.path(key)

    async def get(self, key: str) -> bytes | None:
        """The object's bytes, or ``None`` when it does not exist."""
        try:
            return await self.backend.get(key)
        except PermissionError as e:
            raise access_error(self.url, e) from None

    async def put(self, key: str, data: bytes) -> None:
        """Write a metadata object whole: a process killed midway leaves the old object or
        the new one, never half of one (on local disk through a temporary file and a rename;
        object stores are atomic per object already)."""
        async with self.writing():
            await self.backend.put(key, data)

    async def put_parts(self, key: str, parts: list[Any]) -> None:
        """Write a data object from buffers laid back to back (a shard's chunks and index),
        in one request. Not atomic on local disk: a data object counts only once the commit
        marker is written, after every one of them."""
        async with self.writing():
            await self.backend.put_parts(key, parts)

    async def put_new(self, key: str, data: bytes) -> str:
        """Write ``key`` only if absent, returning its version (the ETag on S3, see
        ``conditional``); ``FileExistsError`` if another writer got there first.

        Conditional on the server (S3 ``If-None-Match: *``; locally a hard link of a
        complete temporary file, which fails if the name exists), so two savers
        racing for one URL cannot both succeed, and a kill never leaves half of it.
        """
        async with self.writing():
            return await self.backend.put_new(key, data)

    async def sizes(self) -> dict[str, int]:
        """Every object under the root, by key relative to it, with its size in bytes."""
        return await self.backend.sizes()

    async def require_bucket(self) -> None:
        """Called once nothing was found at the URL: raise ``CheckpointNotFoundError`` saying
        the bucket does not exist, if it does not (one listing request on S3; nothing on
        other filesystems, or where listing is not permitted)."""
        try:
            await self.backend.require_bucket()
        except FileNotFoundError as e:
            raise CheckpointNotFoundError(
                f"no checkpoint at {self.url!r}: {not_found_reason(e)}", url=self.url) from None

    async def copy_from(self, source: Location, key: str) -> None:
        """Copy ``source``'s object ``key`` to the same key here, on the server.

        S3 copies with CopyObject (the bytes never pass through this machine);
        local disk makes a hard link, safe because zstore never rewrites an
        object in place (an overwrite deletes first); other backends copy.
        """
        async with self.writing():
            await self.backend.copy_from(source.backend, key)

    async def remove_all(self, keys: list[str]) -> None:
        """Delete these objects (keys relative to the root), concurrently."""
        async with self.writing():
            await self.backend.remove_all(keys)

    def prune_folders(self) -> None:
        """On local disk, remove the folders under the root (and it) left empty by deletions.

        Object stores have no folders; a folder anything else still uses stays.
        """
        self.backend.prune_folders()


def resolve(url: str, storage_options: dict[str, Any] | None = None) -> Location:
    """Turn a URL or local path plus fsspec ``storage_options`` into a ``Location``, its
    backend chosen by the URL's protocol (see ``backend.REGISTRY``)."""
    if not isinstance(url, str) or not url:
        raise InvalidURLError(f"checkpoint URL must be a non-empty string, got {url!r}",
                              url=url if isinstance(url, str) else None)
    backend = backend_class(protocol_of(url)).open(url, dict(storage_options or {}))
    return Location(url=url, backend=backend)


def run(url: str, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` on zarr's event loop; its storage failures raise as zstore errors for
    ``url`` (every read and delete goes through here, saves through ``storage_errors``)."""
    with storage_errors(url):
        return sync(work)


EXIT_GRACE = 5.0  # seconds the requests still running at interpreter exit may take to unwind


def _cancel_leftovers() -> None:
    """At interpreter exit, cancel the tasks still running on zarr's event loop (requests of
    a call that already failed, left by zarr's own fan-outs) and let them unwind there.

    Otherwise zarr stops its loop with them pending and the garbage collector closes their
    coroutines outside their context and loop: a traceback per request on stderr (``Exception
    ignored in: <coroutine ...>``, ``... was created in a different Context``); then the
    backends close their clients (aiohttp's would say "Unclosed client session"). Registered
    after zarr's own exit handler, so it runs first, while the loop still runs.
    """
    running = zarr_loop()
    if running is None or not running.is_running():
        return

    async def cancel_all() -> None:
        leftovers = asyncio.all_tasks() - {asyncio.current_task()}
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=EXIT_GRACE)
        await shutdown()  # then close the connections they were using

    try:
        asyncio.run_coroutine_threadsafe(cancel_all(), running).result(EXIT_GRACE + 1)
    except Exception:  # the loop stopped meanwhile, or a task would not unwind: nothing to do
        pass


atexit.register(_cancel_leftovers)
