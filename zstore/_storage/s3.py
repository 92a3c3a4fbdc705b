"""S3 (and S3-compatible stores): conditional requests on the server, zstore's own client.

Compare-and-swap and create-if-absent are conditions the server checks (``If-Match: <ETag>``,
``If-None-Match: *``; S3 and moto support both), so two savers on two machines cannot both
win. The client is s3fs, configured for checkpoints (``S3_CONFIG``, ``S3FS_RETRIES``,
``S3Backend.open``) on an instance of zstore's own, so that nothing changes for code in the
same process that asks fsspec for an s3 filesystem with the same options.
"""

from __future__ import annotations

import copy
import os
import weakref
from typing import Any
from urllib.parse import urlsplit

from s3fs import S3FileSystem
from zarr.storage import FsspecStore

from zstore._storage.accounting import record
from zstore._storage.backend import Backend, protocol_of, version_of
from zstore._storage.failures import (
    RejectedOptions,
    connect,
    endpoint_unreachable,
    is_precondition_failure,
    opening_errors,
    unreachable_reason,
)
from zstore._storage.s3_reads import reader

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
_REACHED: set[str] = set()  # host:port
# The filesystems whose client this process connected, for ``S3Backend.shutdown``.
_CONNECTED: weakref.WeakKeyDictionary[ZStoreS3FileSystem, int] = weakref.WeakKeyDictionary()


class ZStoreS3FileSystem(S3FileSystem):  # type: ignore[misc]  # s3fs ships no types
    """s3fs's filesystem with zstore's count of s3fs's own retries.

    s3fs takes no option for them, only this class attribute; set on the instance fsspec
    caches for a set of options, it changed every other user of that instance in the
    process. A subclass has its own attribute, and its own instance cache (fsspec keeps one
    per class, keyed by the options), so instances are still shared between zstore's calls.
    """

    retries = S3FS_RETRIES

    async def set_session(self, *args: Any, **kwargs: Any) -> Any:
        """s3fs's; options it did not know go to botocore's session only here, at the first
        request, and a ``TypeError`` says botocore refused them."""
        try:
            client = await super().set_session(*args, **kwargs)
        except TypeError as e:
            raise RejectedOptions(str(e)) from None
        _CONNECTED[self] = os.getpid()
        return client


class S3Backend(Backend):
    """Objects under a prefix of an S3 bucket (``s3://``, ``s3a://``)."""

    @classmethod
    def open(cls, url: str, options: dict[str, Any]) -> Backend:
        """``max_concurrency=1`` unless the caller chose otherwise: s3fs 2026.x sends a HEAD
        before every GET when it is higher, doubling the requests of every small read. Its
        listing cache is off by default too: checkpoints are written by other processes, and
        a stale listing would hide a new step."""
        options = filesystem_options(options)
        endpoint = options.get("endpoint_url") or (options.get("client_kwargs") or {}).get(
            "endpoint_url")
        if isinstance(endpoint, str):
            _probe(url, endpoint, options["config_kwargs"])
        given = {k: v for k, v in options.items() if k != "asynchronous"}  # named if refused
        with opening_errors(url, protocol_of(url), given):
            fs = ZStoreS3FileSystem(**options)
            path = fs._strip_protocol(url.rstrip("/"))
        bucket, prefix, _ = fs.split_path(path)
        return cls(FsspecStore(fs=fs, path=path), reader(url, bucket, prefix, options))

    @classmethod
    async def shutdown(cls) -> None:
        """Close the clients this process connected, on the loop they run on: one left to
        the garbage collector at exit has aiohttp print "Unclosed client session"."""
        for fs, pid in list(_CONNECTED.items()):
            if pid == os.getpid():
                try:
                    await fs.s3.close()
                except Exception:  # closed already, or broken: nothing is left to close
                    pass
        _CONNECTED.clear()

    async def put_new(self, key: str, data: bytes) -> str:
        """``If-None-Match: *``: S3 answers 412, or 409 ConditionalRequestConflict to a racing
        create, when the key exists; the version is the ETag it answered."""
        path = self.path(key)
        try:
            answer = await self.fs._pipe_file(path, data, mode="create")
        except FileExistsError:
            raise
        except OSError as e:
            if is_precondition_failure(e):
                raise FileExistsError(path) from e
            raise
        record("puts", len(data))
        etag = answer.get("ETag") if isinstance(answer, dict) else None
        return str(etag) if etag else version_of(data)

    async def require_bucket(self) -> None:
        """One listing request; ``FileNotFoundError`` (NoSuchBucket) if the bucket does not
        exist. Where listing is not permitted, nothing is known, and nothing raised."""
        bucket, key, _ = self.fs.split_path(self.root)
        record("lists")
        try:
            await self.fs._call_s3("list_objects_v2", Bucket=bucket, Prefix=key, MaxKeys=1)
        except PermissionError:
            pass

    async def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        bucket, path, _ = self.fs.split_path(self.path(key))
        try:
            answer = await self.fs._call_s3("get_object", Bucket=bucket, Key=path)
        except FileNotFoundError:
            record("gets")
            return None
        try:
            data = await answer["Body"].read()
        finally:
            answer["Body"].close()
        record("gets", len(data))
        return data, answer["ETag"]

    async def replace(self, key: str, data: bytes, version: str) -> str | None:
        """``If-Match``; a request answered late and retried by the client can find the
        object already replaced by its own first attempt, so a replace that fails its
        condition reads the object back, and counts as done if it holds the bytes sent."""
        try:
            answer = await self.fs._pipe_file(self.path(key), data, IfMatch=version)
        except FileNotFoundError:
            return None
        except OSError as e:
            if not is_precondition_failure(e):
                raise
            current = await self.get_versioned(key)  # our own retried write, perhaps
            return current[1] if current is not None and current[0] == data else None
        record("puts", len(data))
        return str(answer["ETag"])

    async def remove(self, key: str, version: str) -> bool:
        bucket, path, _ = self.fs.split_path(self.path(key))
        try:
            await self.fs._call_s3("delete_object", Bucket=bucket, Key=path, IfMatch=version)
        except FileNotFoundError:
            return True
        except OSError as e:
            if not is_precondition_failure(e):
                raise
            return False
        record("deletes")
        return True


def filesystem_options(storage_options: dict[str, Any]) -> dict[str, Any]:
    """The options zstore makes its S3 filesystem with: the caller's, over zstore's
    defaults (see ``S3Backend.open``), async for zarr's event loop."""
    options = {"asynchronous": True, **storage_options}
    options.setdefault("max_concurrency", 1)
    options.setdefault("use_listings_cache", False)
    config = copy.deepcopy(dict(options.get("config_kwargs") or {}))  # botocore edits it
    for key, value in S3_CONFIG.items():
        config.setdefault(key, value)
    options["config_kwargs"] = config
    return options


def _probe(url: str, endpoint: str, config: dict[str, Any]) -> None:
    """Raise ``StorageFailedError`` at once if ``endpoint`` refuses connections or names an
    unknown host (see ``_REACHED``). Requests through a proxy are not probed: the proxy,
    not this machine, reaches the endpoint."""
    parts = urlsplit(endpoint)
    if parts.netloc in _REACHED or _proxied(endpoint, parts.scheme, config):
        return
    failed = connect(endpoint, config.get("connect_timeout") or S3_CONFIG["connect_timeout"])
    if failed is None:
        _REACHED.add(parts.netloc)
        return
    reason = unreachable_reason(failed)
    if reason is not None:
        raise endpoint_unreachable(url, endpoint, reason) from None


def _proxied(endpoint: str, scheme: str, config: dict[str, Any]) -> bool:
    from botocore.utils import get_environ_proxies  # s3fs's dependency; botocore's own rule

    return bool((config.get("proxies") or get_environ_proxies(endpoint)).get(scheme))
