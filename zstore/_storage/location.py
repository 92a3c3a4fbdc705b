"""The one place a URL and ``storage_options`` become storage.

zarr reads and writes chunks through a ``CountingStore`` over zarr's own
``FsspecStore``; the few operations zarr's store has no verb for (a write that
must not replace an existing object, listing with sizes, deleting a prefix) go
to the same fsspec filesystem here, counted the same way.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import os
import shutil
import socket
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import loop as zarr_loop
from zarr.core.sync import sync
from zarr.storage import FsspecStore

from zstore._storage.accounting import CountingStore, record
from zstore.errors import (
    CheckpointNotFoundError,
    InvalidURLError,
    StorageAccessError,
    StorageFailedError,
    ZStoreError,
)
from zstore._storage.gate import WriteGate

# Every S3 request has a deadline and is retried with backoff (botocore's "standard" mode:
# 500/503/SlowDown, throttling, resets and timeouts); any of it can be overridden through
# storage_options={"config_kwargs": {...}}.
S3_CONFIG: dict[str, Any] = {
    "connect_timeout": 10,
    "read_timeout": 60,
    "retries": {"max_attempts": 8, "mode": "standard"},
}
# s3fs retries each call itself too (5 times, twice over for a GET whose body it reads), on
# top of botocore's attempts: 8 x 25 attempts of a hung GET would take hours. Two attempts of
# its own keep its one distinct use, a body read cut off midway, and bound a request by
# 2 x 2 x max_attempts x (connect_timeout + read_timeout) plus backoff.
S3FS_RETRIES = 2
# A refused connection or an unknown host is no transient fault, yet botocore retries it like
# one (37 s against a closed port, measured). Before the first request to an endpoint the
# caller named, one TCP connect (connect_timeout at most) tells them apart in milliseconds;
# an endpoint that accepted one is not probed again in this process, and anything but a
# refusal or an unknown host (a timeout, no route) is left to the retries.
_REACHED: set[tuple[str, int]] = set()
_UNKNOWN_HOST = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}

T = TypeVar("T")
_CREDENTIAL_OPTIONS = {"key", "secret", "token", "password", "aws_secret_access_key"}


@dataclass
class Location:
    """A checkpoint's place in storage: the zarr store rooted there and its filesystem."""

    url: str
    store: CountingStore
    fs: Any
    root: str
    gate: WriteGate | None = None  # every write passes it while a save holds the URL

    def writing(self) -> AbstractAsyncContextManager[None]:
        """Around each write: the save's gate (see ``gate``), if a save is writing here."""
        return self.gate.write() if self.gate is not None else nullcontext()

    def path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    async def get(self, key: str) -> bytes | None:
        """The object's bytes, or ``None`` when it does not exist."""
        try:
            value = await self.store.get(key, default_buffer_prototype())
        except PermissionError as e:
            raise access_error(self.url, e) from None
        return None if value is None else value.to_bytes()

    @property
    def writes_in_threads(self) -> bool:
        """Whether writes run in worker threads (a synchronous filesystem under zarr's async
        wrapper: local disk, memory://), which cancelling their task would not stop."""
        return hasattr(self.fs, "sync_fs")

    @property
    def is_local(self) -> bool:
        return isinstance(getattr(self.fs, "sync_fs", self.fs), LocalFileSystem)

    async def put(self, key: str, data: bytes) -> None:
        """Write a metadata object whole. On local disk through a temporary file and a rename:
        a process killed midway leaves the old object or the new one, never half of one
        (object stores are atomic per object already)."""
        async with self.writing():
            if self.is_local:
                await asyncio.to_thread(write_atomically, self.path(key), data, False)
                record("puts", len(data))
                return
            await self.store.set(key, default_buffer_prototype().buffer.from_bytes(data))

    async def put_new(self, key: str, data: bytes) -> str:
        """Write ``key`` only if absent, returning its version (the ETag on S3, see
        ``conditional``); ``FileExistsError`` if another writer got there first.

        Conditional on the server (S3 ``If-None-Match: *``; locally a hard link of a
        complete temporary file, which fails if the name exists), so two savers
        racing for one URL cannot both succeed, and a kill never leaves half of it.
        """
        path = self.path(key)
        async with self.writing():
            if self.is_local:
                await asyncio.to_thread(write_atomically, path, data, True)
                record("puts", len(data))
                return version_of(data)
            try:
                answer = await self.fs._pipe_file(path, data, mode="create")
            except FileExistsError:
                raise
            except OSError as e:  # 412, or 409 ConditionalRequestConflict from a racing create
                if is_precondition_failure(e):
                    raise FileExistsError(path) from e
                raise
        record("puts", len(data))
        etag = answer.get("ETag") if isinstance(answer, dict) else None
        return str(etag) if etag else version_of(data)

    async def sizes(self) -> dict[str, int]:
        """Every object under the root, by key relative to it, with its size in bytes."""
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
        """Called once nothing was found at the URL: raise ``CheckpointNotFoundError`` saying
        the bucket does not exist, if it does not (one listing request on S3; nothing on
        other filesystems, or where listing is not permitted)."""
        if not hasattr(self.fs, "_call_s3"):
            return
        bucket, key, _ = self.fs.split_path(self.root)
        record("lists")
        try:
            await self.fs._call_s3("list_objects_v2", Bucket=bucket, Prefix=key, MaxKeys=1)
        except FileNotFoundError as e:
            raise CheckpointNotFoundError(
                f"no checkpoint at {self.url!r}: {_not_found_reason(e)}") from None
        except PermissionError:
            pass

    async def copy_from(self, source: Location, key: str) -> None:
        """Copy ``source``'s object ``key`` to the same key here, on the server.

        S3 copies with CopyObject (the bytes never pass through this machine);
        local disk makes a hard link, safe because zstore never rewrites an
        object in place (an overwrite deletes first); other backends copy.
        """
        src, dst = source.path(key), self.path(key)
        async with self.writing():
            if self.is_local:
                await asyncio.to_thread(_link, src, dst)
            else:
                await self.fs._cp_file(src, dst)
        record("copies")

    async def remove_all(self, keys: list[str]) -> None:
        """Delete these objects (keys relative to the root), concurrently."""
        async with self.writing():
            await asyncio.gather(*(self.store.delete(key) for key in keys))

    def prune_folders(self) -> None:
        """On local disk, remove the folders under the root (and it) left empty by deletions.

        Object stores have no folders; a folder anything else still uses stays.
        """
        if not self.is_local:
            return
        for folder, _, _ in sorted(os.walk(self.root), key=lambda w: -w[0].count(os.sep)):
            try:
                os.rmdir(folder)
            except OSError:  # not empty
                pass


TEMPORARY = ".zstore-tmp-"  # in the names of files being written; a leftover is a crash's


def is_temporary(key: str) -> bool:
    return TEMPORARY in key.rsplit("/", 1)[-1]


def version_of(data: bytes) -> str:
    """An object's version on a backend with no ETags: a digest of its bytes (lease documents
    are unique per write, so equal digests mean the same write)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


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


def _link(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another device, or a filesystem without hard links
        shutil.copyfile(src, dst)


def resolve(url: str, storage_options: dict[str, Any] | None = None) -> Location:
    """Turn a URL or local path plus fsspec ``storage_options`` into a ``Location``.

    S3 gets ``max_concurrency=1`` unless the caller chose otherwise: s3fs 2026.x
    sends a HEAD before every GET when it is higher, doubling the requests of
    every small read. Its listing cache is off by default too: checkpoints are
    written by other processes, and a stale listing would hide a new step.
    """
    if not isinstance(url, str) or not url:
        raise InvalidURLError(f"checkpoint URL must be a non-empty string, got {url!r}")
    options = dict(storage_options or {})
    protocol = fsspec.core.split_protocol(url)[0] or "file"
    if protocol in ("s3", "s3a"):
        options.setdefault("max_concurrency", 1)
        options.setdefault("use_listings_cache", False)
        config = dict(options.get("config_kwargs") or {})
        for key, value in S3_CONFIG.items():
            config.setdefault(key, value)
        options["config_kwargs"] = config
        endpoint = options.get("endpoint_url") or (options.get("client_kwargs") or {}).get(
            "endpoint_url")
        if isinstance(endpoint, str):
            _probe(url, endpoint, config)
    if protocol in ("file", "local"):
        options.setdefault("auto_mkdir", True)
    try:
        inner = FsspecStore.from_url(url.rstrip("/"), storage_options=options)
    except (ValueError, ImportError) as e:
        raise InvalidURLError(f"cannot use {url!r} as a checkpoint URL: {e}") from e
    except TypeError as e:
        bad = sorted(set(options) - _CREDENTIAL_OPTIONS)
        raise InvalidURLError(
            f"storage_options for {url!r} were not accepted by the {protocol!r} filesystem "
            f"(options given: {bad + ['<credentials>'] * (len(bad) < len(options))}): {e}"
        ) from None
    if protocol in ("s3", "s3a"):
        inner.fs.retries = S3FS_RETRIES  # an instance attribute: s3fs takes no option for it
    return Location(url=url, store=CountingStore(inner), fs=inner.fs, root=inner.path.rstrip("/"))


def _probe(url: str, endpoint: str, config: dict[str, Any]) -> None:
    """Raise ``StorageFailedError`` at once if ``endpoint`` refuses connections or names an
    unknown host (see ``_REACHED``). Requests through a proxy are not probed: the proxy,
    not this machine, reaches the endpoint."""
    parts = urlsplit(endpoint)
    try:
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a malformed port: botocore's own error says so at the first request
        return
    if not host or (host, port) in _REACHED or _proxied(endpoint, parts.scheme, config):
        return
    timeout = config.get("connect_timeout") or S3_CONFIG["connect_timeout"]
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        reason = _why_unreachable(e)
        if reason is not None:
            raise endpoint_unreachable(url, endpoint, reason) from None
        return
    _REACHED.add((host, port))


def _proxied(endpoint: str, scheme: str, config: dict[str, Any]) -> bool:
    from botocore.utils import get_environ_proxies  # s3fs's dependency; botocore's own rule

    return bool((config.get("proxies") or get_environ_proxies(endpoint)).get(scheme))


def _why_unreachable(error: BaseException | None) -> str | None:
    """What no retry can change about connecting: a refused connection or an unknown host."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror) and error.errno in _UNKNOWN_HOST:
        return "unknown host"
    return None


def endpoint_unreachable(url: str, endpoint: str, reason: str) -> StorageFailedError:
    """The one line for an S3 endpoint no request can reach, whether the probe or the
    retries found out."""
    return StorageFailedError(f"cannot connect to S3 endpoint {endpoint} (for {url!r}): "
                              f"{reason}; check endpoint_url in storage_options")


def _endpoint_failure(error: BaseException) -> tuple[str, str] | None:
    """The endpoint and the reason when ``error`` (or its cause) is botocore's connection
    error over a refused connection or an unknown host: an endpoint that went away after
    its probe, once the retries are spent."""
    from botocore.exceptions import EndpointConnectionError  # s3fs's dependency

    for e in (error, error.__cause__):
        if isinstance(e, EndpointConnectionError):
            inner = e.kwargs.get("error")  # aiohttp's error; its os_error is the socket's
            reason = _why_unreachable(getattr(inner, "os_error", inner))
            if reason is not None:
                parts = urlsplit(str(e.kwargs.get("endpoint_url", "")))
                return f"{parts.scheme}://{parts.netloc}", reason
    return None


def run(url: str, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` on zarr's event loop; its storage failures raise as zstore errors for
    ``url`` (every read and delete goes through here, saves through ``storage_errors``)."""
    with storage_errors(url):
        return sync(work)


@contextmanager
def storage_errors(url: str, *, saving: bool = False) -> Iterator[None]:
    """Turn the backend's missing-bucket, permission and other failures (retries spent) into
    zstore errors for ``url``."""
    try:
        yield
    except (ZStoreError, FileExistsError):
        raise
    except PermissionError as e:
        raise access_error(url, e) from None
    except FileNotFoundError as e:
        raise InvalidURLError(f"cannot reach {url!r}: {_not_found_reason(e)}") from None
    except (OSError, TimeoutError) as e:
        raise storage_failed(url, e, saving) from e
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise InvalidURLError(  # s3fs hands unknown options to its session, at the first request
            f"storage_options for {url!r} were not accepted: {e}") from None
    except Exception as e:
        if type(e).__name__.endswith(("CredentialsError", "CredentialRetrievalError")):
            raise access_error(url, e) from None  # botocore: no usable credentials found
        unreachable = _endpoint_failure(e)
        if unreachable is not None:
            raise endpoint_unreachable(url, *unreachable) from None
        if is_storage_failure(e):
            raise storage_failed(url, e, saving) from e
        raise


def _not_found_reason(error: FileNotFoundError) -> str:
    """Why a URL's bucket or parent folder cannot be reached (S3: "The specified bucket does
    not exist"), and what to check: what a save and an open both say."""
    return f"{error} (does the bucket or parent folder exist?)"


def is_precondition_failure(error: BaseException) -> bool:
    """Whether S3 refused a conditional request because its condition did not hold (412), or
    because another conditional write to the key was in progress (409)."""
    cause = error.__cause__ if error.__cause__ is not None else error
    code = getattr(cause, "response", {}).get("Error", {}).get("Code", "")
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409") or (
        "PreconditionFailed" in str(error) or "pre-conditions" in str(error))


def is_storage_failure(error: BaseException) -> bool:
    """Whether ``error`` is the storage failing (not the data being bad). botocore raises its
    connection errors (ConnectionClosedError, ReadTimeoutError...) as they are once its
    retries are spent, not as ``OSError``."""
    return isinstance(error, (OSError, TimeoutError)) or type(error).__module__.split(".")[0] in (
        "botocore", "aiobotocore", "aiohttp", "urllib3")


def storage_failed(url: str, error: BaseException, saving: bool) -> StorageFailedError:
    return StorageFailedError(
        f"storage failed while working on {url!r}, after retries ({type(error).__name__}: "
        f"{error}){'; ' + _QUOTA_HINT if _is_quota(error) else ''}"
        f"{'; a save stopped by it commits nothing' if saving else ''}")


_QUOTA_HINT = "the bucket's quota is used up: free space or raise the quota"


def _is_quota(error: BaseException) -> bool:
    """S3-compatible stores answer a full bucket with QuotaExceeded (403, or 507 storage full)."""
    return "quota" in str(error).lower() or "StorageFull" in str(error)


def access_error(url: str, error: BaseException) -> StorageAccessError:
    """A ``StorageAccessError`` for ``url`` that carries the backend's reason, never a secret."""
    hint = _QUOTA_HINT if _is_quota(error) else (
        "check the credentials (storage_options or the AWS_* environment variables) and "
        "permissions")
    return StorageAccessError(
        f"storage refused access to {url!r} ({type(error).__name__}: {error}); {hint}")


EXIT_GRACE = 5.0  # seconds the requests still running at interpreter exit may take to unwind


def _cancel_leftovers() -> None:
    """At interpreter exit, cancel the tasks still running on zarr's event loop (requests of
    a call that already failed, left by zarr's own fan-outs) and let them unwind there.

    Otherwise zarr stops its loop with them pending and the garbage collector closes their
    coroutines outside their context and loop: a traceback per request on stderr (``Exception
    ignored in: <coroutine ...>``, ``... was created in a different Context``). Registered
    after zarr's own exit handler, so it runs first, while the loop still runs.
    """
    running = zarr_loop[0]
    if running is None or not running.is_running():
        return

    async def cancel_all() -> None:
        leftovers = asyncio.all_tasks() - {asyncio.current_task()}
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=EXIT_GRACE)

    try:
        asyncio.run_coroutine_threadsafe(cancel_all(), running).result(EXIT_GRACE + 1)
    except Exception:  # the loop stopped meanwhile, or a task would not unwind: nothing to do
        pass


atexit.register(_cancel_leftovers)
