"""zstore's tunables in one place: ``Settings``, the process-wide current value, ``configure``.

>>> import zstore
>>> zstore.Settings.current().lease_ttl
60.0
>>> with zstore.configure(lease_ttl=1.0) as settings:   # for the saves in this block
...     settings.lease_fence, zstore.Settings.current().lease_renewal
(0.75, 0.25)
>>> zstore.Settings.current().lease_ttl                 # restored on exit
60.0

Code that uses a tunable reads ``Settings.current()`` when it starts its work (a save
when it takes its lease, a load when it starts reading), so a change applies to the next
save or load, and one already running keeps what it started with. The current value is
one per process, not per thread: the background saves of ``CheckpointManager`` and zarr's
event loop run on threads of their own and see what the caller configured.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

MiB = 1 << 20

# The lease's timing, as shares of its TTL: renewals every quarter of it, so the fence (the
# moment the holder stops writing, on its own clock) trips only after three failed renewals
# (or a stall as long), and leaves a quarter of the TTL for clock skew and requests still in
# flight before anyone may take the lease over.
_RENEWAL_SHARE = 0.25
_FENCE_SHARE = 0.75


def _seconds(default: float) -> Any:
    return field(default=default, metadata={"unit": "seconds"})


def _arrays(default: int) -> Any:
    return field(default=default, metadata={"unit": "arrays"})


def _bytes(default: int) -> Any:
    return field(default=default, metadata={"unit": "bytes"})


def _choice(default: str, *choices: str) -> Any:
    return field(default=default, metadata={"unit": "choice", "choices": (default, *choices)})


@dataclass(frozen=True)
class Settings:
    """Every zstore tunable, with its unit and default; change them with ``zstore.configure``.

    Attributes:
        lease_ttl: seconds (default 60.0) a save's write lease lasts without renewal; after
            that another save may take the URL over (at once if the holder was a process of
            this machine that is gone). Derived from it: ``lease_renewal`` (renewals every
            quarter, 15 s) and ``lease_fence`` (the holder stops writing three quarters after
            its last renewal, 45 s: three failed renewals, and 15 s before anyone may take
            over, for clock skew and requests in flight). A minute rides out several slow or
            failed renewals on S3 and still frees a crashed save's URL within a minute; a
            shorter TTL makes a stalled storage fail a save sooner (``LeaseLostError``).
        lease_release_timeout: seconds (default 2.0) the release of the lease at the end of a
            save may take. A save that failed or timed out must return promptly; a lease not
            deleted in time counts as abandoned in this process at once (elsewhere once it
            expires).
        save_concurrency: arrays (default 8) a ``save`` writes at once when its
            ``max_concurrency`` is None; up to ``async.concurrency`` objects of each (zarr's
            setting, 10) are encoded and written at once, within ``write_budget``.
        write_budget: bytes (default 256 MiB) of objects a ``save`` holds in memory at once
            while encoding and uploading them, counted at their decoded size (what their
            arrays hold). An object written from the array's own memory (uncompressed, to
            local disk) holds none; one larger than the budget is written alone. With the
            client's copies (s3fs: about four of each upload) this bounds a save's extra
            memory; ``plan``'s save memory models it.
        load_concurrency: arrays (default 32) a ``load``, ``load(into=)``, ``read_many`` or
            ``CheckpointManager.restore`` reads at once when its ``max_concurrency`` is None.
            The bytes in flight are bounded by ``read_budget`` (or ``staging_budget``) anyway,
            so more arrays in flight only overlap the round trips of many small tensors
            (optimizer states, norms, biases: tens of milliseconds each on S3).
        read_budget: bytes (default 64 MiB) of objects a ``load`` or ``read_many`` holds in
            memory at once besides the arrays it returns: objects on their way from storage
            (counted at their decoded size), none where a file is read straight into the
            array (uncompressed, local disk). One larger object is read alone. So a full load
            peaks at the checkpoint's bytes plus about this much (twice it where the client
            copies downloads, as s3fs does); ``plan``'s load memory models it.
        staging_budget: bytes (default 256 MiB) of host buffers (page-locked for CUDA) in
            flight when loading onto a device (``load(device=)``) or into tensors that need a
            cast or live on an accelerator (``load(into=)``); the buffers are allocated once
            per load and reused, since pinned memory is slow to allocate. One larger tensor
            is staged alone.
        s3_reader: choice (default ``"auto"``) of the client that reads from S3. ``"auto"``:
            obstore (Rust; ``pip install 'zstore[obstore]'``), whose GETs ran 1.4-2.6x
            s3fs's in the same run, where it is installed and the ``storage_options`` say
            where and as whom to read in terms it takes (key and secret, or ``AWS_*``
            variables, and a region or an endpoint), else s3fs. ``"obstore"``: an
            ``InvalidURLError`` where it cannot be used. ``"s3fs"``: s3fs for every request.
            Writes always go through s3fs.
        collective_timeout: seconds (default 600.0) a rank of a multi-rank save waits at one
            of the save's collectives (an exchange of shapes, or of outcomes) for the other
            ranks. A rank that crashed or hangs makes every other rank raise after at most
            this long, with nothing committed, instead of waiting forever. It must cover the
            slowest rank's writes.
    """

    lease_ttl: float = _seconds(60.0)
    lease_release_timeout: float = _seconds(2.0)
    save_concurrency: int = _arrays(8)
    load_concurrency: int = _arrays(32)
    read_budget: int = _bytes(64 * MiB)
    write_budget: int = _bytes(256 * MiB)
    staging_budget: int = _bytes(256 * MiB)
    s3_reader: str = _choice("auto", "obstore", "s3fs")
    collective_timeout: float = _seconds(600.0)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check(f.name, f.metadata["unit"], getattr(self, f.name), f.metadata.get("choices"))

    @property
    def lease_renewal(self) -> float:
        """Seconds between a save's lease renewals (a quarter of ``lease_ttl``)."""
        return self.lease_ttl * _RENEWAL_SHARE

    @property
    def lease_fence(self) -> float:
        """Seconds after its last renewal at which a save stops writing (3/4 of the TTL)."""
        return self.lease_ttl * _FENCE_SHARE

    @classmethod
    def current(cls) -> Settings:
        """The settings in effect in this process now."""
        return _current

    def replace(self, **changes: Any) -> Settings:
        """A copy with these fields changed (validated); unknown names are a ``TypeError``."""
        names = [f.name for f in dataclasses.fields(self)]
        for name in changes:
            if name not in names:
                close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
                hint = (f"did you mean {' or '.join(map(repr, close))}?" if close
                        else f"the settings are {', '.join(names)}")
                raise TypeError(f"zstore has no setting {name!r}: {hint}")
        return dataclasses.replace(self, **changes)


def _check(name: str, unit: str, value: Any, choices: tuple[str, ...] | None = None) -> None:
    if choices is not None:
        if value not in choices:
            raise ValueError(f"{name} is one of {', '.join(map(repr, choices))}, got {value!r}")
        return
    if unit == "seconds":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} is a number of seconds, got {value!r}")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive, finite number of seconds, "
                             f"got {value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} is a whole number of {unit}, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value!r}")


_current = Settings()
_lock = threading.Lock()


def current() -> Settings:
    """``Settings.current()``: what code that uses a tunable reads when it starts its work."""
    return _current


def concurrency(max_concurrency: int | None, saving: bool) -> int:
    """A call's ``max_concurrency``: its own value, else the current setting for its kind."""
    if max_concurrency is None:
        settings = _current
        return settings.save_concurrency if saving else settings.load_concurrency
    _check("max_concurrency", "arrays", max_concurrency)
    return max_concurrency


class configure:  # noqa: N801 - used as a function: zstore.configure(...)
    """Change zstore's settings for this process: ``zstore.configure(lease_ttl=30.0)``.

    Takes ``Settings`` field names; each value is checked (an unknown name is a
    ``TypeError`` naming the close ones, a negative duration a ``ValueError``) before
    anything changes. The change applies to saves and loads that start after it. Used as a
    context manager, it restores the settings in effect before it on exit, and ``as`` gives
    the new ones::

        with zstore.configure(lease_ttl=1.0, save_concurrency=2) as settings:
            zstore.save(state, url)
    """

    def __init__(self, **changes: Any) -> None:
        global _current
        with _lock:
            self.previous = _current
            self.settings = _current.replace(**changes)
            _current = self.settings

    def __enter__(self) -> Settings:
        return self.settings

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        global _current
        with _lock:
            _current = self.previous

    def __repr__(self) -> str:
        return f"zstore.configure() -> {self.settings!r}"
