"""Local disk: whole-object writes through a temporary file, hard links, an ``flock``.

A process killed midway through a plain write leaves half a file where an object store
leaves the old object or the new one; so every metadata write goes to a temporary file
first and is renamed over its name (or, for a write that must not replace, hard-linked to
it, which fails if the name exists). Compare-and-swap holds an ``flock`` of the checkpoint's
folder, atomic among the processes of every host that shares the lock.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from zstore._storage.accounting import record
from zstore._storage.backend import TEMPORARY, Backend, ThreadedBackend, open_store, version_of
from zstore._storage.vectored import write_from


class LocalBackend(ThreadedBackend):
    """Paths under a folder of this machine (``file://`` or none)."""

    read_parts = False  # whole objects are read from their files, into place

    @classmethod
    def open(cls, url: str, options: dict[str, Any]) -> Backend:
        options.setdefault("auto_mkdir", True)
        return cls(open_store(url, options))

    def local_file(self, key: str) -> str | None:
        return self.path(key)

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(write_atomically, self.path(key), data, False)
        record("puts", len(data))

    async def put_parts(self, key: str, parts: list[Any]) -> None:
        """One ``writev`` from the buffers where they are (the array's memory, for
        uncompressed chunks): no joined copy."""
        written = await asyncio.to_thread(_write_parts, self.path(key), parts)
        record("puts", written)

    async def put_new(self, key: str, data: bytes) -> str:
        await asyncio.to_thread(write_atomically, self.path(key), data, True)
        record("puts", len(data))
        return version_of(data)

    async def copy_from(self, source: Backend, key: str) -> None:
        """A hard link: safe because zstore never rewrites an object in place (an overwrite
        deletes first)."""
        await asyncio.to_thread(_link, source.path(key), self.path(key))
        record("copies")

    def prune_folders(self) -> None:
        """Remove the folders under the root (and it) left empty by deletions; a folder
        anything else still uses stays."""
        for folder, _, _ in sorted(os.walk(self.root), key=lambda w: -w[0].count(os.sep)):
            try:
                os.rmdir(folder)
            except OSError:  # not empty
                pass

    def overwrite(self, key: str, data: bytes) -> None:
        write_atomically(self.path(key), data, exclusive=False)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """This process's lock, and an ``flock`` of the checkpoint's folder too where the
        filesystem grants one (NFS does not, on a folder: EBADF or ENOLCK)."""
        with super().exclusive():
            os.makedirs(self.root, exist_ok=True)
            folder = os.open(self.root, os.O_RDONLY)
            try:
                try:
                    import fcntl  # POSIX only; imported here so the module loads everywhere

                    fcntl.flock(folder, fcntl.LOCK_EX)
                except (ImportError, OSError):
                    pass  # no cross-process lock here: this process's lock alone
                yield
            finally:
                os.close(folder)  # releases the flock


def write_atomically(path: str, data: bytes, exclusive: bool) -> None:
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{name}{TEMPORARY}{uuid.uuid4().hex}")
    with open(temporary, "wb") as out:
        out.write(data)
    try:
        if exclusive:
            os.link(temporary, path)  # FileExistsError when another writer got there first
        else:
            os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _write_parts(path: str, parts: list[Any]) -> int:
    """Write the buffers back to back as the file ``path`` (replaced if present)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        return write_from(fd, parts)
    finally:
        os.close(fd)


def _link(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another device, or a filesystem without hard links
        shutil.copyfile(src, dst)
