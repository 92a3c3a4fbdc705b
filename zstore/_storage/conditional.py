"""Compare-and-swap on one small object: how a write lease stays with one writer.

Taking over an abandoned lease, renewing one, and releasing one must each
succeed only if the lease is still the version this saver last saw; a read
followed by a plain write would let two savers both believe they hold it
(both read the stale lease, both replace it), and then both write the same
shards. So each step is conditional on the object's version:

- S3: on the server, ``If-Match: <ETag>`` for a replace or a delete (S3 and
  moto support both), the version being the ETag the server answered;
- local disk: compare and replace under an ``flock`` of the checkpoint's folder,
  atomic among processes of every host that shares the lock; where the
  filesystem refuses ``flock`` on a folder (NFS), under this process's lock only;
- memory:// and other synchronous filesystems: under this process's lock, which
  is all memory:// needs;
- other asynchronous filesystems (gcs, azure): compare, then write, atomic
  nowhere; docs/reliability.md says so.

A request answered late and retried by the client can find the object already
replaced by its own first attempt; a replace that fails its condition therefore
reads the object back, and counts as done if it holds exactly the bytes sent.
"""

from __future__ import annotations

import asyncio
import os
import threading
from contextlib import contextmanager
from collections.abc import Iterator
from typing import Any

from zstore._storage.accounting import record
from zstore._storage.location import Location, is_precondition_failure, version_of, write_atomically

_process_lock = threading.Lock()


def _on_s3(location: Location) -> bool:
    return hasattr(location.fs, "_call_s3")


async def get_versioned(location: Location, key: str) -> tuple[bytes, str] | None:
    """The object's bytes and version, or ``None`` when it does not exist."""
    if not _on_s3(location):
        data = await location.get(key)
        return None if data is None else (data, version_of(data))
    bucket, path, _ = location.fs.split_path(location.path(key))
    try:
        answer = await location.fs._call_s3("get_object", Bucket=bucket, Key=path)
    except FileNotFoundError:
        record("gets")
        return None
    try:
        data = await answer["Body"].read()
    finally:
        answer["Body"].close()
    record("gets", len(data))
    return data, answer["ETag"]


async def replace(location: Location, key: str, data: bytes, version: str) -> str | None:
    """Replace ``key`` with ``data`` if it is still at ``version``; the new version, or
    ``None`` when the object changed or vanished meanwhile (nothing was written)."""
    if location.writes_in_threads:
        return await asyncio.to_thread(_replace_here, location, key, data, version)
    if not _on_s3(location):
        current = await location.get(key)
        if current is None or version_of(current) != version:
            return None
        await location.fs._pipe_file(location.path(key), data)
        record("puts", len(data))
        return version_of(data)
    try:
        answer = await location.fs._pipe_file(location.path(key), data, IfMatch=version)
    except FileNotFoundError:
        return None
    except OSError as e:
        if not is_precondition_failure(e):
            raise
        current = await get_versioned(location, key)  # our own retried write, perhaps
        return current[1] if current is not None and current[0] == data else None
    record("puts", len(data))
    return str(answer["ETag"])


async def remove(location: Location, key: str, version: str) -> bool:
    """Delete ``key`` if it is still at ``version``; whether it is gone because of this call
    (or was already gone)."""
    if location.writes_in_threads:
        return await asyncio.to_thread(_remove_here, location, key, version)
    if not _on_s3(location):
        current = await location.get(key)
        if current is not None and version_of(current) != version:
            return False
        await location.remove_all([key])
        return True
    bucket, path, _ = location.fs.split_path(location.path(key))
    try:
        await location.fs._call_s3("delete_object", Bucket=bucket, Key=path, IfMatch=version)
    except FileNotFoundError:
        return True
    except OSError as e:
        if not is_precondition_failure(e):
            raise
        return False
    record("deletes")
    return True


@contextmanager
def _exclusive(location: Location) -> Iterator[None]:
    """This process's lock, and on local disk an ``flock`` of the checkpoint's folder too
    where the filesystem grants one (NFS does not, on a folder: EBADF or ENOLCK)."""
    with _process_lock:
        if not location.is_local:
            yield
            return
        os.makedirs(location.root, exist_ok=True)
        folder = os.open(location.root, os.O_RDONLY)
        try:
            try:
                import fcntl  # POSIX only; imported here so the module loads everywhere

                fcntl.flock(folder, fcntl.LOCK_EX)
            except (ImportError, OSError):
                pass  # no cross-process lock here: this process's lock alone
            yield
        finally:
            os.close(folder)  # releases the flock


def _sync_fs(location: Location) -> Any:
    return location.fs.sync_fs


def _current(location: Location, key: str) -> bytes | None:
    try:
        data = _sync_fs(location).cat_file(location.path(key))
    except FileNotFoundError:
        return None
    record("gets", len(data))
    return bytes(data)


def _replace_here(location: Location, key: str, data: bytes, version: str) -> str | None:
    with _exclusive(location):
        current = _current(location, key)
        if current is None or version_of(current) != version:
            return None
        if location.is_local:
            write_atomically(location.path(key), data, exclusive=False)
        else:
            _sync_fs(location).pipe_file(location.path(key), data)
    record("puts", len(data))
    return version_of(data)


def _remove_here(location: Location, key: str, version: str) -> bool:
    with _exclusive(location):
        current = _current(location, key)
        if current is None:
            return True
        if version_of(current) != version:
            return False
        _sync_fs(location).rm_file(location.path(key))
    record("deletes")
    return True
