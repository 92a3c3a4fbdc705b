"""Errors raised by zstore.

Every error is a ``ZStoreError``; where a built-in error fits, it is that too, so
``except FileNotFoundError`` keeps working for callers who do not know zstore::

    ZStoreError
    ├── CheckpointNotFoundError   (FileNotFoundError)  nothing saved at the URL
    ├── IncompleteCheckpointError                       data without a commit marker
    ├── CheckpointExistsError     (FileExistsError)    save would replace something
    │   └── LeaseLostError                             another save took this one's URL over
    ├── CorruptCheckpointError                          metadata or chunks fail their checks
    ├── UnsupportedFormatError                          written by a newer zstore
    ├── InvalidKeyError           (ValueError)         a key cannot name a stored array
    ├── UnsupportedTypeError      (TypeError)          a leaf or dtype zstore cannot store
    ├── InvalidURLError           (ValueError)         the URL or storage options are unusable
    ├── StorageAccessError        (PermissionError)    the backend refused the request
    ├── StorageFailedError        (OSError)            unreachable, or kept failing after retries
    ├── SaveTimeoutError          (TimeoutError)       a save ran past its deadline
    ├── StateMismatchError        (RuntimeError)       load(into=...) keys or shapes disagree
    ├── PartialLoadError          (RuntimeError)       load(into=...) failed after changing the target
    └── DeviceUnavailableError    (RuntimeError)       the torch device asked for does not exist here

Messages name the offending value and say how to fix it; they never contain
credentials.
"""

from __future__ import annotations


class ZStoreError(Exception):
    """Base class of every error zstore raises on purpose."""


class CheckpointNotFoundError(ZStoreError, FileNotFoundError):
    """No checkpoint exists at the URL."""


class IncompleteCheckpointError(ZStoreError):
    """The URL holds a checkpoint whose save never committed (crashed or still running)."""


class CheckpointExistsError(ZStoreError, FileExistsError):
    """A save would replace a committed checkpoint or objects zstore did not write."""


class LeaseLostError(CheckpointExistsError):
    """Another save took this save's write lease over (or deleted it): this one must not commit."""


class CorruptCheckpointError(ZStoreError):
    """Stored metadata or data does not match what the commit recorded."""


class UnsupportedFormatError(ZStoreError):
    """The checkpoint was written in a format version this zstore cannot read."""


class InvalidKeyError(ZStoreError, ValueError):
    """A tree key would escape the checkpoint, is reserved, or collides with another key."""


class UnsupportedTypeError(ZStoreError, TypeError):
    """A leaf's Python type or array dtype cannot be stored losslessly."""


class InvalidURLError(ZStoreError, ValueError):
    """The URL names no usable filesystem, or its storage options were rejected."""


class StorageAccessError(ZStoreError, PermissionError):
    """The storage backend denied access (credentials, permissions, read-only store)."""


class StorageFailedError(ZStoreError, OSError):
    """The backend cannot be reached (connection refused, unknown host: at once, not retried)
    or kept failing (errors, resets, timeouts) after every retry."""


class SaveTimeoutError(ZStoreError, TimeoutError):
    """A save did not finish within its ``timeout``; it was stopped before committing."""


class StateMismatchError(ZStoreError, RuntimeError):
    """``load(into=...)``: the checkpoint and the target disagree on keys or shapes."""


class PartialLoadError(ZStoreError, RuntimeError):
    """``load(into=...)`` failed after it began writing into the target.

    Every check that can be made before writing (keys, shapes, devices) is made
    first, so this is a storage or data failure midway. The attributes say exactly
    what the target holds: ``loaded`` (filled from the checkpoint), ``partial``
    (being filled when the load stopped: contents undefined) and ``untouched``
    (as before the call).
    """

    def __init__(self, message: str, *, loaded: list[str], partial: list[str],
                 untouched: list[str]) -> None:
        super().__init__(message)
        self.loaded, self.partial, self.untouched = loaded, partial, untouched


class DeviceUnavailableError(ZStoreError, RuntimeError):
    """The torch device a load asked for (``device="cuda:1"``) is not available here."""
