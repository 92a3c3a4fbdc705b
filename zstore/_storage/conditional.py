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

Each backend implements the three steps its own way (``S3Backend``, ``LocalBackend``,
``ThreadedBackend``, ``FsspecBackend``); these functions are the steps the lease takes.
"""

from __future__ import annotations

from zstore._storage.location import Location


async def get_versioned(location: Location, key: str) -> tuple[bytes, str] | None:
    """The object's bytes and version, or ``None`` when it does not exist."""
    return await location.backend.get_versioned(key)


async def replace(location: Location, key: str, data: bytes, version: str) -> str | None:
    """Replace ``key`` with ``data`` if it is still at ``version``; the new version, or
    ``None`` when the object changed or vanished meanwhile (nothing was written)."""
    return await location.backend.replace(key, data, version)


async def remove(location: Location, key: str, version: str) -> bool:
    """Delete ``key`` if it is still at ``version``; whether it is gone because of this call
    (or was already gone)."""
    return await location.backend.remove(key, version)
