"""Foreign errors, mapped by type in one place into the zstore errors that name the URL.

Backends raise what their libraries raise: fsspec filesystems the built-in errors (s3fs turns
S3's error codes into ``FileNotFoundError``, ``PermissionError`` or ``OSError``, keeping
botocore's ``ClientError`` as the cause); botocore its own connection, timeout and credential
errors once its retries are spent; aiohttp and urllib3 theirs; obstore (S3 reads, see
``s3_reads``) its own, subclasses of one base. ``RULES`` says, in order, which zstore error
each class becomes, and an S3 answer is read from the structured error code the
server sent, never from message text, which differs between servers (AWS, moto, MinIO, Ceph)
and versions. Messages name the URL and the fix, and never a credential.

A foreign class is named by import path and looked up only once its module is loaded: one
that was never imported cannot have raised anything, and local disk never imports botocore.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from zstore.errors import InvalidURLError, StorageAccessError, StorageFailedError, ZStoreError


class RejectedOptions(TypeError):
    """Raised by a backend whose client refused the storage options only at its first request
    (s3fs hands the ones it does not know to its botocore session then), so that the table
    can name the URL."""


Converter = Callable[[str, BaseException, bool], BaseException | None]

_CREDENTIALS = ("botocore.exceptions:NoCredentialsError",
                "botocore.exceptions:PartialCredentialsError",
                "botocore.exceptions:CredentialRetrievalError",
                "obstore.exceptions:PermissionDeniedError",
                "obstore.exceptions:UnauthenticatedError")
# Errors of the storage, not of the data: what retrying later, or elsewhere, could change.
_FAILURES = (OSError, TimeoutError, "botocore.exceptions:BotoCoreError",
             "botocore.exceptions:ClientError", "aiohttp:ClientError",
             "urllib3.exceptions:HTTPError", "obstore.exceptions:BaseError")
_PRECONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_UNKNOWN_HOST = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
_QUOTA_HINT = "the bucket's quota is used up: free space or raise the quota"
_CREDENTIAL_OPTIONS = {"key", "secret", "token", "password", "aws_secret_access_key"}


def loaded(*kinds: str | type[BaseException]) -> tuple[type[BaseException], ...]:
    """The classes among ``kinds`` (classes, or ``"module:Name"``) whose modules are loaded."""
    found: list[type[BaseException]] = []
    for kind in kinds:
        if isinstance(kind, str):
            module, _, name = kind.partition(":")
            kind = getattr(sys.modules.get(module), name, None)  # type: ignore[assignment]
        if isinstance(kind, type):
            found.append(kind)
    return tuple(found)


def s3_answer(error: BaseException) -> tuple[str, int] | None:
    """The error code and HTTP status of S3's answer, when ``error`` is botocore's
    ``ClientError`` or s3fs's translation of one (which keeps it as its cause)."""
    client_error = loaded("botocore.exceptions:ClientError")
    for e in (error, error.__cause__):
        if client_error and isinstance(e, client_error):
            response: dict[str, Any] = getattr(e, "response", None) or {}
            code = str((response.get("Error") or {}).get("Code") or "")
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            return code, int(status or 0)
    return None


def is_precondition_failure(error: BaseException) -> bool:
    """Whether S3 refused a conditional request because its condition did not hold (412), or
    because another conditional write to the key was in progress (409)."""
    answer = s3_answer(error)
    return answer is not None and answer[0] in _PRECONDITION_CODES


def is_quota(error: BaseException) -> bool:
    """A full bucket (S3-compatible stores answer QuotaExceeded, 403, or StorageFull, 507) or a
    disk quota used up."""
    answer = s3_answer(error)
    if answer is not None:
        code, status = answer
        return "quota" in code.lower() or code.endswith("StorageFull") or status == 507
    return isinstance(error, OSError) and error.errno == getattr(errno, "EDQUOT", None)


def is_storage_failure(error: BaseException) -> bool:
    """Whether ``error`` is the storage failing (not the data being bad). botocore raises its
    connection errors (ConnectionClosedError, ReadTimeoutError...) as they are once its
    retries are spent, not as ``OSError``."""
    return isinstance(error, loaded(*_FAILURES))


def unreachable_reason(error: BaseException | None) -> str | None:
    """What no retry can change about connecting: a refused connection or an unknown host."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror) and error.errno in _UNKNOWN_HOST:
        return "unknown host"
    return None


def connect(endpoint: str, timeout: float) -> BaseException | None:
    """One TCP connect to ``endpoint`` (a URL): None where it accepted, else what failed
    (``unreachable_reason`` tells whether any retry could change it); a ``ValueError`` for a
    malformed host or port, which the client's own error will name."""
    parts = urlsplit(endpoint)
    try:
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as e:
        return e
    if not host:
        return ValueError(f"no host in {endpoint!r}")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return e
    return None


def not_found_reason(error: BaseException) -> str:
    """Why a URL's bucket or parent folder cannot be reached (S3: "The specified bucket does
    not exist"), and what to check: what a save and an open both say."""
    return f"{error} (does the bucket or parent folder exist?)"


def endpoint_unreachable(url: str, endpoint: str, reason: str) -> StorageFailedError:
    """The one line for an S3 endpoint no request can reach, whether the probe before the
    first request or the retries found out."""
    return StorageFailedError(f"cannot connect to S3 endpoint {endpoint} (for {url!r}): "
                              f"{reason}; check endpoint_url in storage_options", url=url)


def access_error(url: str, error: BaseException, saving: bool = False) -> StorageAccessError:
    """A ``StorageAccessError`` for ``url`` that carries the backend's reason, never a secret."""
    hint = _QUOTA_HINT if is_quota(error) else (
        "check the credentials (storage_options or the AWS_* environment variables) and "
        "permissions")
    return StorageAccessError(
        f"storage refused access to {url!r} ({type(error).__name__}: {_said(error)}); {hint}",
        url=url)


def storage_failed(url: str, error: BaseException, saving: bool = False) -> StorageFailedError:
    return StorageFailedError(
        f"storage failed while working on {url!r}, after retries ({type(error).__name__}: "
        f"{_said(error)}){'; ' + _QUOTA_HINT if is_quota(error) else ''}"
        f"{'; a save stopped by it commits nothing' if saving else ''}", url=url)


def _said(error: BaseException) -> str:
    """What ``error`` says, without the debug dump obstore adds after a blank line."""
    return str(error).split("\n\n", 1)[0]


def _cannot_reach(url: str, error: BaseException, saving: bool) -> InvalidURLError:
    return InvalidURLError(f"cannot reach {url!r}: {not_found_reason(error)}", url=url)


def _options_rejected(url: str, error: BaseException, saving: bool) -> InvalidURLError:
    return InvalidURLError(f"storage_options for {url!r} were not accepted: {error}", url=url)


def _endpoint_gone(url: str, error: BaseException, saving: bool) -> StorageFailedError | None:
    """botocore's connection error over a refused connection or an unknown host: an endpoint
    that went away after its probe, once the retries are spent; ``None`` for any other."""
    connection_error = loaded("botocore.exceptions:EndpointConnectionError")
    for e in (error, error.__cause__):
        if connection_error and isinstance(e, connection_error):
            inner = getattr(e, "kwargs", {}).get("error")  # aiohttp's; its os_error the socket's
            reason = unreachable_reason(getattr(inner, "os_error", inner))
            if reason is not None:
                parts = urlsplit(str(e.kwargs.get("endpoint_url", "")))  # type: ignore[attr-defined]
                return endpoint_unreachable(url, f"{parts.scheme}://{parts.netloc}", reason)
    return None


# In order; the first rule whose classes match and whose converter gives an error wins. The
# last field says whether the foreign error stays attached as the cause (a storage failure's
# traceback helps; a refusal's would only repeat it).
RULES: tuple[tuple[tuple[str | type[BaseException], ...], Converter, bool], ...] = (
    ((RejectedOptions,), _options_rejected, False),
    (_CREDENTIALS, access_error, False),  # no usable credentials; obstore's 401 and 403
    ((PermissionError,), access_error, False),
    ((FileNotFoundError,), _cannot_reach, False),
    ((OSError, TimeoutError), storage_failed, True),
    ((Exception,), _endpoint_gone, False),  # by its class, or its cause's
    (_FAILURES, storage_failed, True),
)


def translate(url: str, error: BaseException, *, saving: bool = False) -> BaseException | None:
    """The zstore error for ``error`` met while working on ``url``, with its cause set; ``None``
    for one that passes as it is (a zstore error, ``FileExistsError``, a bug)."""
    if isinstance(error, (ZStoreError, FileExistsError)):
        return None
    for kinds, convert, chained in RULES:
        if isinstance(error, loaded(*kinds)):
            mapped = convert(url, error, saving)
            if mapped is not None:
                mapped.__cause__ = error if chained else None
                return mapped
    return None


@contextmanager
def storage_errors(url: str, *, saving: bool = False) -> Iterator[None]:
    """Turn the backend's missing-bucket, permission and other failures (retries spent) into
    zstore errors for ``url`` (see ``RULES``); a zstore error raised inside without a URL
    (a device check, a gate) gets this one."""
    try:
        yield
    except ZStoreError as e:
        if e.url is None:
            e.url = url
        raise
    except Exception as e:
        mapped = translate(url, e, saving=saving)
        if mapped is None:
            raise
        raise mapped from mapped.__cause__


@contextmanager
def opening_errors(url: str, protocol: str, options: dict[str, Any]) -> Iterator[None]:
    """Around making a filesystem for ``url``: an unknown protocol, a missing package or
    options its constructor refuses are an ``InvalidURLError`` that names the options given,
    never their values (credentials among them)."""
    try:
        yield
    except (ValueError, ImportError) as e:
        raise InvalidURLError(f"cannot use {url!r} as a checkpoint URL: {e}", url=url) from e
    except TypeError as e:
        bad = sorted(set(options) - _CREDENTIAL_OPTIONS)
        raise InvalidURLError(
            f"storage_options for {url!r} were not accepted by the {protocol!r} filesystem "
            f"(options given: {bad + ['<credentials>'] * (len(bad) < len(options))}): {e}",
            url=url) from None
