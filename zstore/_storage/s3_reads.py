"""S3 reads through obstore (a Rust client), where it is installed and the options allow it.

Measured on the same server in the same run (``make bench``, the clients and throughput
sections): obstore's GETs move a load's objects 1.4-2.6x faster than s3fs's on moto and
on SeaweedFS, and it keeps one copy of a body where s3fs keeps two; its PUTs were
0.85-1.14x s3fs's, no win. So reads (a load's data and metadata objects, whole or by
range) go through obstore, and everything else stays with s3fs: writes, the conditional
writes the lease and the commit rely on, listings, deletes and server-side copies.

``Settings.s3_reader`` chooses: ``"auto"`` (obstore where it is installed and
``obstore_config`` can say the caller's ``storage_options`` to it, else s3fs),
``"obstore"`` (an error where it cannot be used) or ``"s3fs"``. The options stay fsspec's:
``obstore_config`` translates the ones that decide where and as whom requests go, and
declines (s3fs reads then) options it cannot say the same way, so that a read never goes
elsewhere, or as someone else, than a write of the same call.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from zarr.abc.buffer import Buffer, BufferPrototype
from zarr.abc.store import ByteRequest, Store
from zarr.storage import ObjectStore

from zstore._options import Settings
from zstore._storage.failures import connect, endpoint_unreachable, loaded, unreachable_reason
from zstore.errors import InvalidURLError

INSTALL_HINT = "pip install 'zstore[obstore]'"

# Options that change nothing about where or as whom a read goes (zstore's defaults for
# s3fs, s3fs's caching and sizing, server-side encryption, which reads need not name).
_NEUTRAL = {"asynchronous", "max_concurrency", "use_listings_cache", "listings_expiry_time",
            "skip_instance_cache", "default_block_size", "default_fill_cache",
            "default_cache_type", "version_aware", "cache_regions"}
_NEUTRAL_WRITE_ARGS = {"ServerSideEncryption", "SSEKMSKeyId", "ACL", "StorageClass",
                       "BucketKeyEnabled", "SSEKMSEncryptionContext"}
# botocore's timeouts and retries, said to obstore the same way (``s3.S3_CONFIG``).
_CONFIG_KEYS = {"connect_timeout", "read_timeout", "retries"}
# A read's retries stop this long after its first attempt: about what botocore's 8
# attempts with their backoff take against a server answering 503.
_RETRY_TIMEOUT_S = 180


def obstore_config(bucket: str, prefix: str, options: dict[str, Any]) -> dict[str, Any] | None:
    """The keyword arguments of ``obstore.store.S3Store`` that read ``bucket/prefix`` as
    s3fs would with ``options`` (zstore's defaults already applied, see
    ``s3.filesystem_options``), or None where they cannot be said the same way: credentials
    that only botocore finds (a profile, ``~/.aws``), a region only s3fs would discover,
    customer-provided encryption keys, proxies or TLS settings given to botocore."""
    extra = dict(options.get("s3_additional_kwargs") or {})
    client = dict(options.get("client_kwargs") or {})
    config = dict(options.get("config_kwargs") or {})
    known = _NEUTRAL | {"key", "secret", "token", "anon", "endpoint_url", "client_kwargs",
                        "config_kwargs", "s3_additional_kwargs", "use_ssl"}
    if (set(options) - known or set(extra) - _NEUTRAL_WRITE_ARGS
            or set(client) - {"region_name", "endpoint_url"} or set(config) - _CONFIG_KEYS):
        return None
    endpoint = (options.get("endpoint_url") or client.get("endpoint_url")
                or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
    region = (client.get("region_name") or os.environ.get("AWS_REGION")
              or os.environ.get("AWS_DEFAULT_REGION"))
    if region is None and not endpoint:
        return None  # s3fs asks AWS where the bucket lives; obstore would guess us-east-1
    s3: dict[str, Any] = {"region": region or "us-east-1"}
    if options.get("anon"):
        s3["skip_signature"] = True
    elif options.get("key") and options.get("secret"):
        s3["access_key_id"] = options["key"]
        s3["secret_access_key"] = options["secret"]
        if options.get("token"):
            s3["session_token"] = options["token"]
    elif options.get("key") or options.get("secret") or not (
            os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")):
        return None  # botocore's credential chain (profiles, SSO...): s3fs finds them
    client_options: dict[str, Any] = {"connect_timeout": f"{config['connect_timeout']}s",
                                      "read_timeout": f"{config['read_timeout']}s"}
    if endpoint:
        if options.get("use_ssl") is False and endpoint.startswith("https://"):
            return None
        s3["endpoint"] = endpoint
        s3["virtual_hosted_style_request"] = False  # botocore's choice for an endpoint
        client_options["allow_http"] = endpoint.startswith("http://")
    else:
        s3["virtual_hosted_style_request"] = True
    retries = config.get("retries") or {}  # botocore's max_attempts counts the retries
    count = (int(retries["total_max_attempts"]) - 1 if "total_max_attempts" in retries
             else int(retries.get("max_attempts", 8)))
    retry = {"max_retries": max(0, count), "retry_timeout": timedelta(seconds=_RETRY_TIMEOUT_S)}
    return {"bucket": bucket, "prefix": prefix or None, "config": s3,
            "client_options": client_options, "retry_config": retry}


def reader(url: str, bucket: str, prefix: str, options: dict[str, Any]) -> Store | None:
    """zarr's store over obstore for ``bucket/prefix``, or None where s3fs should read (see
    ``Settings.s3_reader``); ``InvalidURLError`` where obstore was asked for and cannot be."""
    choice = Settings.current().s3_reader
    if choice == "s3fs":
        return None
    try:
        from obstore.store import S3Store
    except ImportError:
        if choice == "obstore":
            raise InvalidURLError(f"s3_reader='obstore' for {url!r}, but obstore is not "
                                  f"installed: {INSTALL_HINT}", url=url) from None
        return None
    kwargs = obstore_config(bucket, prefix, options)
    if kwargs is None:
        if choice == "obstore":
            raise InvalidURLError(
                f"s3_reader='obstore' for {url!r}, but its storage_options cannot be said to "
                "obstore the same way (credentials only botocore finds, no region, or options "
                "for botocore alone): pass key, secret and a region or endpoint_url, or use "
                "s3_reader='auto'", url=url)
        return None
    prefix = kwargs.pop("prefix")
    client_key = (os.getpid(), repr(kwargs))  # a forked child makes its own
    client = _CLIENTS.get(client_key)
    if client is None:
        client = _CLIENTS.setdefault(client_key, S3Store(**kwargs))
    timeout = float(options["config_kwargs"]["connect_timeout"])
    return _Reader(client, prefix, url, kwargs["config"].get("endpoint"), timeout)


# obstore clients by their settings: each open or load of the same bucket as the same caller
# reuses one, and with it its open connections (fsspec caches s3fs's instances alike).
_CLIENTS: dict[tuple[int, str], Any] = {}


class _Reader(ObjectStore):  # type: ignore[type-arg]
    """zarr's store over a bucket's obstore client, for the objects under ``prefix``; its
    failure to reach an endpoint the caller named says so, as s3fs's does (obstore's error
    has no structured cause to tell: a TCP connect does)."""

    def __init__(self, client: Any, prefix: str | None, url: str, endpoint: str | None,
                 timeout: float) -> None:
        super().__init__(client, read_only=True)
        self._prefix = f"{prefix}/" if prefix else ""
        self._url, self._endpoint, self._timeout = url, endpoint, timeout

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(key, prototype, byte_range)
                                           for key, byte_range in key_ranges)))

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        try:
            return await super().get(self._prefix + key, prototype, byte_range)
        except Exception as e:
            if self._endpoint and isinstance(e, loaded("obstore.exceptions:BaseError")):
                failed = await asyncio.to_thread(connect, self._endpoint, self._timeout)
                reason = unreachable_reason(failed)
                if reason is not None:
                    raise endpoint_unreachable(self._url, self._endpoint, reason) from None
            raise

