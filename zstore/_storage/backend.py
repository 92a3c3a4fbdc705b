"""Backends: what differs between kinds of storage, chosen once when a URL is resolved.

A backend is the storage under one checkpoint's root: the fsspec filesystem, zarr's store
over it (counted, see ``accounting``), and the few operations zarr's store has no verb for,
each done the way that kind of storage makes it safe: a write that must not replace an
existing object, compare-and-swap on one small object (``conditional``), a server-side copy.
``backend_class`` picks the class by the URL's protocol from ``REGISTRY``, the way fsspec's
own registry of implementations does: named by import path, so that only a URL that needs
S3 imports its client. Nothing later asks which backend it is.

- ``FsspecBackend``: any filesystem with an async implementation (gcs, azure...);
- ``ThreadedBackend``: a synchronous filesystem under fsspec's async wrapper (memory://...),
  whose calls run in worker threads;
- ``zstore._storage.local.LocalBackend``, ``zstore._storage.s3.S3Backend``.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import fsspec
from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper
from fsspec.implementations.memory import MemoryFileSystem
from zarr.abc.buffer import Buffer, BufferPrototype
from zarr.abc.store import ByteRequest, Store
from zarr.buffer import default_buffer_prototype
from zarr.storage import FsspecStore, WrapperStore

from zstore._compat import RangesThroughGet
from zstore._storage.accounting import CountingStore, record
from zstore._storage.failures import opening_errors

REGISTRY: dict[str, str] = {
    "file": "zstore._storage.local:LocalBackend",
    "local": "zstore._storage.local:LocalBackend",
    "s3": "zstore._storage.s3:S3Backend",
    "s3a": "zstore._storage.s3:S3Backend",
}

TEMPORARY = ".zstore-tmp-"  # in the names of files being written; a leftover is a crash's

# Compare-and-swap on a synchronous filesystem holds it: atomic among this process's savers,
# which is all memory:// needs (local disk adds an flock, see ``LocalBackend``).
_process_lock = threading.Lock()
_loaded: set[type[Backend]] = set()  # the classes ``backend_class`` chose, for ``shutdown``


def protocol_of(url: str) -> str:
    return fsspec.core.split_protocol(url)[0] or "file"


def backend_class(protocol: str) -> type[Backend]:
    """The backend for URLs of ``protocol``: a registered one, else the generic one."""
    target = REGISTRY.get(protocol)
    if target is None:
        return FsspecBackend
    module, _, name = target.partition(":")
    found: type[Backend] = getattr(importlib.import_module(module), name)
    _loaded.add(found)
    return found


async def shutdown() -> None:
    """At interpreter exit, on zarr's event loop: let each backend used close what it holds
    open (see ``location._cancel_leftovers``)."""
    for cls in list(_loaded):
        await cls.shutdown()


def is_temporary(key: str) -> bool:
    return TEMPORARY in key.rsplit("/", 1)[-1]


def version_of(data: bytes) -> str:
    """An object's version on a backend with no ETags: a digest of its bytes (lease documents
    are unique per write, so equal digests mean the same write)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def open_store(url: str, options: dict[str, Any]) -> FsspecStore:
    """zarr's store for ``url``, its filesystem made by fsspec from ``options``."""
    with opening_errors(url, protocol_of(url), options):
        return FsspecStore.from_url(url.rstrip("/"), storage_options=options)


class Backend:
    """The storage under one root. Its defaults are those of an object store reached through
    fsspec's async API; subclasses replace what their kind of storage does differently."""

    writes_in_threads: ClassVar[bool] = False
    """Whether writes run in worker threads, which cancelling their task would not stop."""
    read_parts: bool = True
    """Whether the data path reads a large object in ranged parts (``shards.READ_PART``)
    rather than in one GET: where a GET's body is a copy the client makes (and s3fs makes
    two), parts bound what a read holds; a file, or a store in this process, gains nothing."""

    def __init__(self, store: FsspecStore, reader: Store | None = None) -> None:
        """``reader``: where reads go instead of ``store`` (see ``s3_reads``)."""
        self.store = CountingStore(store if reader is None else ReadsThrough(store, reader))
        self.fs: Any = store.fs
        self.root: str = store.path.rstrip("/")

    @classmethod
    def open(cls, url: str, options: dict[str, Any]) -> Backend:
        """The backend for ``url``, its filesystem made from ``options`` (the caller's
        ``storage_options``, a copy this may add defaults to)."""
        return cls(open_store(url, options))

    @classmethod
    async def shutdown(cls) -> None:
        """At interpreter exit: close the clients of this kind this process opened."""

    def path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def local_file(self, key: str) -> str | None:
        """The path of ``key``'s file where objects are files of this machine (then the data
        path reads and writes them with ``preadv``/``writev``, straight from and into the
        arrays' memory); None elsewhere."""
        return None

    async def get(self, key: str) -> bytes | None:
        value = await self.store.get(key, default_buffer_prototype())
        return None if value is None else value.to_bytes()

    async def put(self, key: str, data: bytes) -> None:
        """Write a metadata object whole (an object store replaces objects atomically)."""
        await self.store.set(key, default_buffer_prototype().buffer.from_bytes(data))

    async def put_parts(self, key: str, parts: list[Any]) -> None:
        """Write one data object from buffers laid back to back (an object store takes one
        body: they are joined)."""
        body = b"".join(parts)
        await self.store.set(key, default_buffer_prototype().buffer.from_bytes(body))

    async def put_new(self, key: str, data: bytes) -> str:
        """Write ``key`` only if absent, returning its version; ``FileExistsError`` if it
        exists (fsspec's ``mode="create"``)."""
        await self.fs._pipe_file(self.path(key), data, mode="create")
        record("puts", len(data))
        return version_of(data)

    async def sizes(self) -> dict[str, int]:
        record("lists")
        try:
            found = await self.fs._find(self.root, detail=True)
        except FileNotFoundError:
            return {}
        prefix = self.root.rstrip("/") + "/"
        return {
            path[len(prefix):]: int(info.get("size") or 0)
            for path, info in found.items()
            if path.startswith(prefix) and info.get("type", "file") == "file"
        }

    async def require_bucket(self) -> None:
        """``FileNotFoundError`` if the container the root lives in does not exist; nothing
        where the backend has none, or cannot tell."""

    async def copy_from(self, source: Backend, key: str) -> None:
        """Copy ``source``'s object ``key`` to the same key here (on the server, where the
        backend can)."""
        await self.fs._cp_file(source.path(key), self.path(key))
        record("copies")

    async def remove_all(self, keys: list[str]) -> None:
        await asyncio.gather(*(self.store.delete(key) for key in keys))

    def prune_folders(self) -> None:
        """Remove the folders deletions left empty; object stores have none."""

    # Compare-and-swap, see ``conditional``.

    async def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        data = await self.get(key)
        return None if data is None else (data, version_of(data))

    async def replace(self, key: str, data: bytes, version: str) -> str | None:
        raise NotImplementedError

    async def remove(self, key: str, version: str) -> bool:
        raise NotImplementedError


class ReadsThrough(RangesThroughGet, WrapperStore[Store]):
    """A store whose reads go to ``reader`` and everything else to the wrapped store."""

    def __init__(self, store: Store, reader: Store) -> None:
        super().__init__(store)
        self._reader = reader

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        return await self._reader.get(key, prototype, byte_range)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return await self._reader.get_partial_values(prototype, key_ranges)


class FsspecBackend(Backend):
    """Any fsspec filesystem; one with an async implementation (gcs, azure) compares, then
    writes: atomic nowhere, as docs/reliability.md says."""

    @classmethod
    def open(cls, url: str, options: dict[str, Any]) -> Backend:
        store = open_store(url, options)
        if isinstance(store.fs, AsyncFileSystemWrapper):  # zarr wrapped a synchronous one
            return ThreadedBackend(store)
        return cls(store)

    async def replace(self, key: str, data: bytes, version: str) -> str | None:
        current = await self.get(key)
        if current is None or version_of(current) != version:
            return None
        await self.fs._pipe_file(self.path(key), data)
        record("puts", len(data))
        return version_of(data)

    async def remove(self, key: str, version: str) -> bool:
        current = await self.get(key)
        if current is not None and version_of(current) != version:
            return False
        await self.store.delete(key)
        return True


class ThreadedBackend(Backend):
    """A synchronous filesystem (memory://, and others fsspec has no async implementation
    of) under fsspec's async wrapper: its calls run in worker threads, and compare-and-swap
    runs in one too, under this process's lock."""

    writes_in_threads = True

    def __init__(self, store: FsspecStore) -> None:
        super().__init__(store)
        self.sync_fs: Any = store.fs.sync_fs  # the wrapped filesystem, called from threads
        self.read_parts = self.read_parts and not isinstance(self.sync_fs, MemoryFileSystem)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Held while comparing and swapping."""
        with _process_lock:
            yield

    def overwrite(self, key: str, data: bytes) -> None:
        self.sync_fs.pipe_file(self.path(key), data)

    async def replace(self, key: str, data: bytes, version: str) -> str | None:
        return await asyncio.to_thread(self._replace_here, key, data, version)

    async def remove(self, key: str, version: str) -> bool:
        return await asyncio.to_thread(self._remove_here, key, version)

    def _current(self, key: str) -> bytes | None:
        try:
            data = self.sync_fs.cat_file(self.path(key))
        except FileNotFoundError:
            return None
        record("gets", len(data))
        return bytes(data)

    def _replace_here(self, key: str, data: bytes, version: str) -> str | None:
        with self.exclusive():
            current = self._current(key)
            if current is None or version_of(current) != version:
                return None
            self.overwrite(key, data)
        record("puts", len(data))
        return version_of(data)

    def _remove_here(self, key: str, version: str) -> bool:
        with self.exclusive():
            current = self._current(key)
            if current is None:
                return True
            if version_of(current) != version:
                return False
            self.sync_fs.rm_file(self.path(key))
        record("deletes")
        return True
