"""Errors raised by zstore.

Every error about a checkpoint, its storage or its contents is a ``ZStoreError``;
where a built-in error fits, it is that too, so ``except FileNotFoundError`` keeps
working for callers who do not know zstore. A wrong argument is the built-in error
Python code raises for it, as it would be anywhere: an unknown codec or access pattern
``ValueError``, an index out of range ``IndexError``, a name the checkpoint does not
hold ``KeyError`` (a ``Checkpoint`` is a mapping)::

    ZStoreError                                      (every one has .url)
    ├── CheckpointNotFoundError   (FileNotFoundError)  nothing saved at the URL
    ├── IncompleteCheckpointError                      data without a commit marker
    ├── CheckpointExistsError     (FileExistsError)    a save would replace something:
    │   ├── CheckpointCommittedError                   a committed checkpoint, overwrite not asked
    │   ├── ForeignObjectsError                        objects zstore did not write
    │   ├── NestedCheckpointError                      another checkpoint inside this one
    │   ├── CommitRaceLostError                        another save committed the URL first
    │   └── LeaseHeldError                             another live save is writing the URL
    ├── LeaseLostError            (RuntimeError)       this save's own lease lapsed or was taken
    ├── CorruptCheckpointError                         metadata or objects fail their checks
    ├── EncryptionKeyError                             encrypted: no key given, or the wrong one
    ├── UnsupportedFormatError                         written by a newer zstore
    ├── InvalidKeyError           (ValueError)         a key cannot name a stored array
    ├── UnsupportedTypeError      (TypeError)          a leaf or dtype zstore cannot store
    ├── InvalidURLError           (ValueError)         the URL or storage options are unusable
    ├── StorageAccessError        (PermissionError)    the backend refused the request
    ├── StorageFailedError        (OSError)            unreachable, or kept failing after retries
    ├── SaveTimeoutError          (TimeoutError)       a save ran past its deadline
    ├── RetentionError            (OSError)            a step committed; deleting old steps failed
    ├── StateMismatchError        (RuntimeError)       load(into=...) keys or shapes disagree
    ├── PartialLoadError          (RuntimeError)       load(into=...) failed midway, target changed
    ├── DeviceUnavailableError    (RuntimeError)       the torch device asked for is not here
    └── RankFailedError           (RuntimeError)       another rank of a multi-rank save failed

Besides ``url``, the facts each one carries (see its docstring): ``ForeignObjectsError``
``.objects``, ``.example``; ``NestedCheckpointError`` ``.nested``; ``LeaseHeldError``
``.holder``, ``.expires``; ``CorruptCheckpointError`` ``.array``, ``.key``;
``EncryptionKeyError`` ``.key_id``; ``UnsupportedFormatError`` ``.version``;
``InvalidKeyError`` ``.key``;
``SaveTimeoutError`` ``.timeout``; ``RetentionError`` ``.step``, ``.not_deleted``,
``.errors``; ``PartialLoadError`` ``.loaded``, ``.partial``, ``.untouched``;
``DeviceUnavailableError`` ``.device``; ``RankFailedError`` ``.ranks``.

The facts are attributes, so code branches on them rather than on the message:
``except zstore.LeaseHeldError as e: print(e.holder["host"])``. Every attribute is
a keyword argument with a default: ``CheckpointExistsError("...")`` still works.

Messages name the offending value and say how to fix it; they never contain
credentials.
"""

from __future__ import annotations

from typing import Any


class ZStoreError(Exception):
    """Base class of every error zstore raises on purpose.

    ``url`` is the checkpoint (or ``CheckpointManager`` root) the error is about, as the
    caller gave it; None where there is none (a key rejected before any I/O).
    """

    def __init__(self, *args: object, url: str | None = None) -> None:
        super().__init__(*args)
        self.url = url


class CheckpointNotFoundError(ZStoreError, FileNotFoundError):
    """No checkpoint exists at the URL."""


class IncompleteCheckpointError(ZStoreError):
    """The URL holds a checkpoint whose save never committed (crashed or still running)."""


class CheckpointExistsError(ZStoreError, FileExistsError):
    """A save would replace a committed checkpoint or objects zstore did not write.

    Raised as one of its subclasses, which say which: catch this for all of them.
    """


class CheckpointCommittedError(CheckpointExistsError):
    """The URL already holds a committed checkpoint and the save did not ask to overwrite it."""


class ForeignObjectsError(CheckpointExistsError):
    """The URL holds objects zstore did not write: ``objects`` of them, ``example`` one key
    (relative to the URL). zstore deletes only its own checkpoints."""

    def __init__(self, *args: object, url: str | None = None, objects: int = 0,
                 example: str | None = None) -> None:
        super().__init__(*args, url=url)
        self.objects, self.example = objects, example


class NestedCheckpointError(CheckpointExistsError):
    """Another checkpoint lies inside the URL, at ``nested`` (relative to it): replacing,
    deleting or saving over the URL would delete that one too, so it is refused."""

    def __init__(self, *args: object, url: str | None = None, nested: str = "") -> None:
        super().__init__(*args, url=url)
        self.nested = nested


class CommitRaceLostError(CheckpointExistsError):
    """Another save committed the URL while this one was writing; this one committed nothing."""


class LeaseHeldError(CheckpointExistsError):
    """Another save holds the URL's write lease and is still writing it.

    ``holder`` is the lease as that save recorded it (``host``, ``pid``, ``expires``...),
    None where the lease changed hands too often to read one; ``expires`` is when it
    lapses unless renewed (Unix time), None if unknown.
    """

    def __init__(self, *args: object, url: str | None = None,
                 holder: dict[str, Any] | None = None, expires: float | None = None) -> None:
        super().__init__(*args, url=url)
        self.holder, self.expires = holder, expires


class LeaseLostError(ZStoreError, RuntimeError):
    """This save's own write lease lapsed (not renewed in time) or was taken over by another
    save: it stopped writing and did not commit. Retry the save."""


class CorruptCheckpointError(ZStoreError):
    """Stored metadata or data does not match what the commit recorded.

    ``array`` names the array concerned and ``key`` the (first) stored object found
    damaged or missing, relative to the URL (``"w/c/0/0"``, ``"zarr.json"``); each None
    where not known.
    """

    def __init__(self, *args: object, url: str | None = None, array: str | None = None,
                 key: str | None = None) -> None:
        super().__init__(*args, url=url)
        self.array, self.key = array, key


class EncryptionKeyError(ZStoreError):
    """The checkpoint's arrays are encrypted and no key was given, or a key other than the
    one they were saved with. ``key_id`` is the id the checkpoint recorded (a fingerprint
    or a key provider's name; never the key)."""

    def __init__(self, *args: object, url: str | None = None, key_id: str | None = None
                 ) -> None:
        super().__init__(*args, url=url)
        self.key_id = key_id


class UnsupportedFormatError(ZStoreError):
    """The checkpoint was written in a format ``version`` this zstore cannot read."""

    def __init__(self, *args: object, url: str | None = None, version: Any = None) -> None:
        super().__init__(*args, url=url)
        self.version = version


class InvalidKeyError(ZStoreError, ValueError):
    """A tree key would escape the checkpoint, is reserved, or collides with another key.

    ``key`` is the offending key as given: the path of keys to it in the tree (a tuple),
    or an ``access`` glob that matches no array.
    """

    def __init__(self, *args: object, url: str | None = None, key: Any = None) -> None:
        super().__init__(*args, url=url)
        self.key = key


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
    """A save did not finish within its ``timeout`` (seconds); it was stopped before committing."""

    def __init__(self, *args: object, url: str | None = None,
                 timeout: float | None = None) -> None:
        super().__init__(*args, url=url)
        self.timeout = timeout


class RetentionError(ZStoreError, OSError):
    """A ``CheckpointManager`` could not delete the old steps its retention drops.

    ``step`` is the step whose save committed just before (None when retention ran on
    its own, ``apply_retention()``): it is saved and opens. ``not_deleted`` lists the
    steps still there that retention meant to delete, ``errors`` why each was not (the
    first is also ``__cause__``); ``url`` is the manager's root. Retention runs again
    after the next save. An ``OSError``, as every deletion failure is.
    """

    def __init__(self, *args: object, url: str | None = None, step: int | None = None,
                 not_deleted: list[int] | None = None,
                 errors: dict[int, BaseException] | None = None) -> None:
        super().__init__(*args, url=url)
        self.step = step
        self.not_deleted = [] if not_deleted is None else not_deleted
        self.errors = {} if errors is None else errors


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
                 untouched: list[str], url: str | None = None) -> None:
        super().__init__(message, url=url)
        self.loaded, self.partial, self.untouched = loaded, partial, untouched


class DeviceUnavailableError(ZStoreError, RuntimeError):
    """The torch device a load asked for (``device="cuda:1"``) is not available here;
    ``device`` is what was asked for, as given."""

    def __init__(self, *args: object, url: str | None = None,
                 device: str | None = None) -> None:
        super().__init__(*args, url=url)
        self.device = device


class RankFailedError(ZStoreError, RuntimeError):
    """A multi-rank save stopped, with nothing committed, because of other ranks: they
    raised (their errors are in the message), or did not reach one of the save's
    collectives within ``Settings.collective_timeout`` (crashed or hung). ``ranks`` lists
    the ranks that failed, where known (empty after a timeout)."""

    def __init__(self, *args: object, url: str | None = None,
                 ranks: list[int] | None = None) -> None:
        super().__init__(*args, url=url)
        self.ranks = ranks or []
