"""Tiered and replicated series: each step committed on a fast tier, then copied to mirrors.

A ``CheckpointManager`` with ``mirrors`` saves each step to its own root first (the fast
tier: local NVMe, say) and returns as soon as that is committed; a worker thread of its
own then copies the committed step to every mirror (S3, say), step after step in the
order they were saved, so the training loop never waits on the slow tier.

A committed step is self-contained, so a copy is of its stored objects as they are,
never decoded or encoded again. It follows a save's protocol on the mirror: the mirror
step's lease, its destination cleared, every object, then the hashes and the root
``zarr.json``, and the fast step's own commit marker last, created only if absent. The
marker vouches for the root by its hash, and the root is copied byte for byte, so a
mirror step opens exactly when the copy finished: a copy killed or failing at any point
leaves one that does not open. An object the mirror's previous committed step holds
with the same recorded hash (and its array the same ``zarr.json``) is copied on the
mirror's server instead of uploaded, as an incremental save does.

Reading prefers the fast tier and falls back, step by step, to the first mirror whose
copy is committed and intact (``first_intact``).
"""

from __future__ import annotations

import asyncio
import re
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from zstore._budget import ByteBudget
from zstore._compat import sync
from zstore._format.crypto import KeySource
from zstore._format.hashes import decode_hashes
from zstore._format.manifest import read_manifest
from zstore._format.names import COMMIT_MARKER, HASHES, LEASE, ROOT
from zstore._options import current
from zstore._read.reader import Checkpoint
from zstore._read.reader import open as open_checkpoint
from zstore._series.steps import committed_steps, retain, step_url
from zstore._storage.backend import is_temporary
from zstore._storage.failures import storage_errors
from zstore._storage.location import Location, resolve, run
from zstore._tasks import gather_all
from zstore._write.incremental import read_baseline
from zstore._write.lease import Lease
from zstore._write.writer import claim_destination, put_marker
from zstore.errors import (
    CheckpointCommittedError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    IncompleteCheckpointError,
    PartialLoadError,
    RetentionError,
    ZStoreError,
)

T = TypeVar("T")

# What makes a tier's copy of a step unusable, so that reading moves on to the next tier.
DAMAGE = (CorruptCheckpointError, IncompleteCheckpointError, CheckpointNotFoundError)
_OBJECT = re.compile(r"(.+)/c(?:/\d+)*")  # an array's stored object: path/c/i/j


@dataclass(frozen=True)
class Mirror:
    """A second series root that a ``CheckpointManager`` copies each committed step to.

    Args:
        url: the mirror's series root (``"s3://bucket/run1"``); step ``n`` goes to
            ``url/step-<n>``, as on the fast tier.
        storage_options: fsspec options for the mirror alone (the manager's are the fast
            tier's); None: none. Never shown in the repr: they may hold credentials.
        keep_last, keep_every: the mirror's own retention, applied after each copy to it,
            as the manager's are on the fast tier (default: the mirror keeps every step).

    Example:
        >>> import numpy as np, zstore
        >>> mgr = zstore.CheckpointManager("memory://doc/fast", keep_last=1,
        ...                                mirrors=[zstore.Mirror("memory://doc/slow")])
        >>> for step in (1, 2):
        ...     _ = mgr.save(step, {"w": np.full(4, step, "float32")})
        >>> mgr.wait()  # every copy to the mirrors has finished
        >>> mgr.tiers()
        {1: ['memory://doc/slow'], 2: ['memory://doc/fast', 'memory://doc/slow']}
    """

    url: str
    storage_options: dict[str, Any] | None = field(default=None, repr=False, hash=False)
    keep_last: int | None = None
    keep_every: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url.strip("/"):
            raise ValueError(f"a Mirror's url must be a non-empty string, got {self.url!r}")
        for name in ("keep_last", "keep_every"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError(f"Mirror {name} must be a positive int or None, got {value!r}")
        if self.storage_options is not None and not isinstance(self.storage_options, dict):
            raise ValueError("Mirror storage_options must be a dict of fsspec options or None, "
                             f"got {type(self.storage_options).__name__}")
        object.__setattr__(self, "url", self.url.rstrip("/"))


def check_mirrors(root: str, mirrors: Any) -> list[Mirror]:
    """The mirrors as given, refused where one would overlap the fast tier or another."""
    if isinstance(mirrors, (Mirror, str)):
        raise TypeError(f"mirrors takes a list: mirrors=[zstore.Mirror(...)], got {mirrors!r}")
    urls = [root]
    for mirror in mirrors:
        if not isinstance(mirror, Mirror):
            raise TypeError(f"mirrors must be zstore.Mirror objects, got {mirror!r}: write "
                            "zstore.Mirror(url, storage_options=...)")
        clash = next((u for u in urls if mirror.url == u or mirror.url.startswith(f"{u}/")
                      or u.startswith(f"{mirror.url}/")), None)
        if clash is not None:
            raise ValueError(
                f"the mirror {mirror.url!r} overlaps {clash!r}: each tier of a series needs a "
                "root of its own, neither inside another (its steps would mix with theirs)")
        urls.append(mirror.url)
    return list(mirrors)


def is_damage(error: BaseException) -> bool:
    """Whether ``error`` says a tier's copy of a step is missing, uncommitted or damaged (a
    load into a target that failed midway for such a reason counts too)."""
    cause = error.__cause__ if isinstance(error, PartialLoadError) else error
    return isinstance(cause, DAMAGE)


def tiers_of(fast: tuple[str, dict[str, Any] | None], mirrors: list[Mirror]
             ) -> dict[int, list[str]]:
    """Each step committed on any tier, oldest first, and the roots holding it committed.

    A mirror that cannot be listed is left out with a ``RuntimeWarning``, so an outage of
    the slow tier never stops a job resuming from the fast one; the fast tier's errors
    raise.
    """
    found: dict[int, list[str]] = {}
    for step in committed_steps(*fast):
        found[step] = [fast[0]]
    for mirror in mirrors:
        try:
            steps = committed_steps(mirror.url, mirror.storage_options)
        except (ZStoreError, OSError) as e:
            warnings.warn(f"the mirror {mirror.url!r} could not be listed ({type(e).__name__}: "
                          f"{e}); going on with the other tiers", RuntimeWarning, stacklevel=4)
            continue
        for step in steps:
            found.setdefault(step, []).append(mirror.url)
    return dict(sorted(found.items()))


def open_intact(url: str, options: dict[str, Any] | None, key: KeySource | None = None
                ) -> Checkpoint:
    """The committed checkpoint at ``url`` (encrypted under ``key``, if it is), once every
    object its hashes list exists and each array's objects add up to the bytes its commit
    recorded (one listing more than ``open``): a tier whose copy lost an object, or holds
    one cut short or grown, is passed over before a load begins to fill anything from it.
    What the listing cannot see (bytes changed in place) fails the load's crc32c checks."""
    ckpt = open_checkpoint(url, storage_options=options, encryption_key=key)
    location = resolve(url, options)
    recorded, listed = run(url, gather_all([location.get(HASHES), location.sizes()]))
    stored = cast(dict[str, int], listed)
    missing = sorted(set(decode_hashes(cast(bytes | None, recorded))) - set(stored))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CorruptCheckpointError(
            f"object {missing[0]!r}{more} of the committed checkpoint {url!r} is missing: it "
            "was deleted after the save committed; run `zstore verify` to list the damage",
            url=url, key=missing[0])
    for path, (_, expected) in ckpt.array_documents().items():
        found = sum(n for k, n in stored.items() if k.startswith(f"{path}/c"))
        if found != expected:
            raise CorruptCheckpointError(
                f"the objects of array {path!r} in {url!r} hold {found} bytes where its commit "
                f"recorded {expected}: one was cut short, grown or lost after the save "
                "committed; run `zstore verify` to list the damage", url=url, array=path)
    return ckpt


def first_intact(step: int, tiers: list[tuple[str, dict[str, Any] | None]],
                 use: Callable[[Checkpoint], T], key: KeySource | None = None) -> T:
    """``use`` applied to step ``step`` of the first tier (fast first) whose copy opens,
    has every object and survives ``use`` (a load checks every chunk's crc32c).

    Moving past a damaged or uncommitted copy warns (``RuntimeWarning``), naming the tier
    and the damage; past a copy that is not there (retention kept fewer steps on that
    tier, or its disk was lost) it does not. When no tier serves, the first damage found
    is raised (else the first tier's error), with a note per tier saying what it had.
    """
    failures: list[tuple[str, BaseException]] = []
    for root, options in tiers:
        if failures and not isinstance(failures[-1][1], CheckpointNotFoundError):
            previous, error = failures[-1]
            warnings.warn(f"step {step} on {previous!r} cannot be used ({type(error).__name__}: "
                          f"{error}); loading it from {root!r}", RuntimeWarning, stacklevel=4)
        try:
            return use(open_intact(step_url(root, step), options, key))
        except Exception as e:
            if not is_damage(e):
                raise
            failures.append((root, e))
    damaged = [e for _, e in failures if not isinstance(e, CheckpointNotFoundError)]
    raised = damaged[0] if damaged else failures[0][1]
    for root, error in failures:
        if error is not raised:
            raised.add_note(f"step {step} on {root!r}: {type(error).__name__}: {error}")
    raise raised


class MirrorWorker:
    """One manager's copies of its committed steps to its mirrors, on a thread of their own.

    Steps are copied in the order ``submit`` receives them, to each mirror in turn; then
    that mirror's retention runs, then ``after`` (the fast tier's retention, which must
    not delete a step before its copies finished: ``protected`` says which to keep).
    """

    def __init__(self, root: str, options: dict[str, Any] | None, mirrors: list[Mirror],
                 max_concurrency: Callable[[], int], after: Callable[[int], object]) -> None:
        self.root, self.options, self.mirrors = root, options, mirrors
        self._max_concurrency, self._after = max_concurrency, after
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zstore-mirror")
        self._pending: list[tuple[int, Future[None]]] = []
        self._lock = threading.Lock()
        self._copied: dict[str, int] = {}  # mirror url -> the step copied there last
        self._missed: dict[int, set[str]] = {}  # step -> mirrors its copy failed to reach
        # queued, being copied, or missed by a mirror: the fast tier keeps them
        self._unmirrored: set[int] = set()

    def protected(self) -> set[int]:
        """The fast-tier steps retention must keep: copies queued, running or failed (a
        failed copy is tried again before the next step's, so a transient error never
        leaves a step on no tier)."""
        with self._lock:
            return set(self._unmirrored)

    def submit(self, step: int, overwrite: bool) -> None:
        """Queue the copy of fast-tier step ``step`` (just committed) to every mirror."""
        with self._lock:
            self._unmirrored.add(step)
            self._pending = [(s, f) for s, f in self._pending  # seen to succeed: forget
                             if not f.done() or f.exception() is not None]
            self._pending.append((step, self._thread.submit(self._copy_all, step, overwrite)))

    def wait(self) -> list[tuple[int, BaseException]]:
        """Block until every queued copy has finished; their errors, oldest first."""
        with self._lock:
            pending, self._pending = self._pending, []
        return [(step, error) for step, future in pending
                if (error := future.exception()) is not None]

    def shutdown(self) -> None:
        self._thread.shutdown(wait=True)

    def _copy_all(self, step: int, overwrite: bool) -> None:
        errors: list[BaseException] = []
        with self._lock:
            retries = sorted(self._missed.items())
        for earlier, urls in retries:  # copies that failed before, tried again first
            self._copy_to(earlier, [m for m in self.mirrors if m.url in urls], False, errors)
        self._copy_to(step, self.mirrors, overwrite, errors)
        try:
            self._after(step)
        except RetentionError as e:
            errors.append(e)
        if errors:
            warnings.warn(f"mirroring step {step} failed: {type(errors[0]).__name__}: "
                          f"{errors[0]}; training goes on from the fast tier {self.root!r}, "
                          "and wait() raises this error", RuntimeWarning, stacklevel=1)
            for other in errors[1:]:
                errors[0].add_note(f"also: {type(other).__name__}: {other}")
            raise errors[0]

    def _copy_to(self, step: int, mirrors: list[Mirror], overwrite: bool,
                 errors: list[BaseException]) -> None:
        """Copy ``step`` to each of ``mirrors`` and apply its retention; the errors go to
        ``errors``, the mirrors missed to ``_missed`` (dropped where the fast tier no
        longer holds the step: there is nothing left to copy)."""
        missed = set()
        for mirror in mirrors:
            try:
                self._copy(mirror, step, overwrite)
            except Exception as e:  # noqa: BLE001 - every mirror gets its copy; all reported
                e.add_note(f"raised while mirroring step {step} to {mirror.url!r}; the step "
                           f"is committed on the fast tier {self.root!r}")
                errors.append(e)
                gone = is_damage(e) and getattr(e, "url", None) == step_url(self.root, step)
                if not gone:
                    missed.add(mirror.url)
                continue
            try:
                retain(mirror.url, mirror.storage_options, mirror.keep_last,
                       mirror.keep_every, after=step)
            except RetentionError as e:
                errors.append(e)
        with self._lock:
            if missed:
                self._missed[step] = missed
            else:
                self._missed.pop(step, None)
                self._unmirrored.discard(step)

    def _copy(self, mirror: Mirror, step: int, overwrite: bool) -> None:
        """Copy fast-tier step ``step`` to ``mirror``, reusing its newest committed step
        before ``step`` on its server."""
        base = self._copied.get(mirror.url)
        if base is None or base >= step:
            older = [s for s in committed_steps(mirror.url, mirror.storage_options) if s < step]
            base = older[-1] if older else None
        url = step_url(mirror.url, step)
        target = resolve(url, mirror.storage_options)
        work = copy_step(
            resolve(step_url(self.root, step), self.options), target,
            None if base is None else resolve(step_url(mirror.url, base), mirror.storage_options),
            overwrite=overwrite, max_concurrency=self._max_concurrency())
        with storage_errors(url, saving=True):
            sync(work)
        self._copied[mirror.url] = step


async def copy_step(source: Location, target: Location, base: Location | None, *,
                    overwrite: bool, max_concurrency: int) -> None:
    """Copy the committed checkpoint at ``source`` to ``target``, object by object as
    stored, committing it there last; what ``base`` (a committed checkpoint on the
    target's backend) holds unchanged is copied on the target's server."""
    root, marker, hashes = await gather_all(
        [source.get(ROOT), source.get(COMMIT_MARKER), source.get(HASHES)])
    manifest = read_manifest(root, marker, source.url)  # gone or damaged since: nothing to copy
    assert root is not None and marker is not None
    existing = await target.get(COMMIT_MARKER)
    if existing == marker:
        return  # copied before (a retried copy, or a second manager): the same bytes
    if existing is not None and not overwrite:
        raise CheckpointCommittedError(
            f"{target.url!r} already holds another committed checkpoint; save the step with "
            "overwrite=True to replace its copies too, or give the mirror a root of its own",
            url=target.url)
    reusable = await _reusable(base, manifest.arrays, decode_hashes(hashes))
    sizes = await source.sizes()
    keys = [k for k in sizes
            if k not in (COMMIT_MARKER, ROOT, HASHES, LEASE) and not is_temporary(k)]
    limit, budget = asyncio.Semaphore(max_concurrency), ByteBudget(current().write_budget)

    async def one(key: str) -> None:
        async with limit:
            if base is not None and key in reusable:
                try:
                    await target.copy_from(base, key)
                    return
                except FileNotFoundError:  # the base lost it since: copy the bytes instead
                    pass
            async with budget.hold(sizes[key]):
                data = await source.get(key)
                if data is None:
                    raise CorruptCheckpointError(
                        f"object {key!r} of {source.url!r} vanished while it was being "
                        "mirrored; nothing was committed on the mirror", url=source.url, key=key)
                if key.rsplit("/", 1)[-1] == ROOT:
                    await target.put(key, data)  # an array's or group's zarr.json: whole
                else:
                    await target.put_parts(key, [data])

    async with Lease(target).held() as lease:
        await claim_destination(target, overwrite)
        await gather_all(one(key) for key in keys)
        if hashes is not None:
            await target.put(HASHES, hashes)
        await target.put(ROOT, root)
        if await source.get(COMMIT_MARKER) != marker:
            return  # the step was saved again meanwhile: its own copy follows, this one is void
        await lease.check()
        await put_marker(target, marker, "while this step was being mirrored there; the copy "
                                         "was not committed")


async def _reusable(base: Location | None, documents: dict[str, dict[str, Any]],
                    hashes: dict[str, str]) -> set[str]:
    """The objects ``base`` holds with the same recorded hash, in an array whose
    ``zarr.json`` is the same (so its stored bytes are the same too)."""
    if base is None or not hashes:
        return set()
    try:
        before = await read_baseline(base)
    except ZStoreError:  # deleted or damaged since it was listed: copy every byte
        return set()
    reusable = set()
    for key, digest in hashes.items():
        match = _OBJECT.fullmatch(key)
        path = match.group(1) if match else None
        if path in documents and before.offers(key, path, digest, documents[path]):
            reusable.add(key)
    return reusable
