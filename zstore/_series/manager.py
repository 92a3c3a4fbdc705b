"""A training job's checkpoint series: save every N steps, in the background, and resume.

Each step is a complete, self-contained checkpoint at ``root/step-<n>/``,
readable on its own by zstore and by plain zarr. A background save first
copies the tree to host memory (the only stall the training loop sees), then
writes on one worker thread, in order: each save copies on the server every
object unchanged since the previous committed step, then retention deletes
what ``keep_last``/``keep_every`` no longer keep, never the newest committed step.

With ``mirrors`` the root is the fast tier of a tiered series: each committed step is
then copied to every mirror on a second thread (see ``mirror``), and reading falls back
to a mirror where the fast tier's copy is gone or damaged.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from zstore._format.crypto import KeySource
from zstore._format.tree import FlatTree, flatten
from zstore._options import concurrency
from zstore._plan.access import Access
from zstore._plan.profiles import BackendProfile
from zstore._ranks import Ranks
from zstore._read.reader import Checkpoint
from zstore._read.reader import open as open_checkpoint
from zstore._series.mirror import Mirror, MirrorWorker, check_mirrors, first_intact, tiers_of
from zstore._series.snapshot import SnapshotPool
from zstore._series.steps import committed_steps, delete_step, retain, scan, step_url
from zstore._storage.location import resolve, run
from zstore._write.writer import SaveInfo, write
from zstore.errors import CheckpointNotFoundError, RetentionError, ZStoreError

T = TypeVar("T")


class CheckpointManager:
    """Numbered checkpoints under one root, with async saves, retention and resume.

    Args:
        root: where the steps go: ``"s3://bucket/run1"``, ``"runs/run1"``.
        keep_last: how many of the newest committed steps retention keeps
            (default: all).
        keep_every: also keep every step divisible by this (``1000``: a
            permanent record every 1000 steps).
        max_pending: saves queued or running at once; the next ``save`` waits
            for a slot (each queued background save holds a host copy of its tree).
        incremental: copy unchanged objects from the previous committed step on
            the server instead of uploading them again.
        storage_options, access, backend, codec, timeout: as for ``zstore.save``
            (``timeout`` bounds each step's save).
        process_group: a multi-rank job's ranks (default: all, once ``torch.distributed``
            is initialized). Every rank makes the manager and calls every ``save`` with its
            own state, as ``zstore.save``; rank 0 commits and applies retention; a
            background save snapshots each rank's parts. Saves across ranks are not
            incremental yet (every object is written).
        max_concurrency, progress: as for ``zstore.save`` and ``zstore.load``, for
            every save and restore: arrays written or read at once (None: the
            ``zstore.Settings`` default when each starts, ``save_concurrency`` or
            ``load_concurrency``), and the progress bar.
        mirrors: ``zstore.Mirror`` roots (S3, say) that every committed step is copied to
            in the background, root (the fast tier: local disk, say) first. A save returns
            once the fast tier committed it; the copies follow on a thread of their own,
            object by object as stored (so a mirror holds the fast tier's codec: pass
            ``codec="blosc"`` to compress for a slow mirror), each committed last, its
            unchanged objects copied on the mirror's server. ``wait()`` waits for them and
            raises a failed copy's error (which never undoes the fast save); retention
            runs per tier, and keeps a fast-tier step until its copies finished.
            ``steps()`` lists the steps of every tier; ``restore``/``open`` read the fast
            tier's copy unless it is missing or damaged, then a mirror's. Not with several
            ranks yet (``ValueError``).
        encryption_key: encrypt every step (see ``zstore.save``) and read steps with it.
            A provider is asked for the key to save with (None) at each save, and for
            each step's recorded key id when reading it, so keys can rotate between
            steps; an unchanged object is copied only from a step under the same key.

    Example:
        >>> import numpy as np, zstore
        >>> mgr = zstore.CheckpointManager("memory://doc/run", keep_last=2)
        >>> for step in (100, 200, 300):
        ...     _ = mgr.save(step, {"w": np.full(4, step, "float32")}, blocking=False)
        >>> mgr.wait()
        >>> mgr.steps()
        [200, 300]
        >>> step, state = mgr.restore()
        >>> step, state["w"][0]
        (300, np.float32(300.0))
    """

    def __init__(self, root: str, *, keep_last: int | None = None, keep_every: int | None = None,
                 max_pending: int = 1, incremental: bool = True,
                 storage_options: dict[str, Any] | None = None, access: Access = None,
                 backend: str | BackendProfile | None = None, codec: str = "auto",
                 timeout: float | None = None, progress: bool | None = None,
                 max_concurrency: int | None = None, process_group: Any = None,
                 mirrors: Sequence[Mirror] = (), encryption_key: KeySource | None = None
                 ) -> None:
        for name, value in (("keep_last", keep_last), ("keep_every", keep_every)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"max_pending must be a positive int, got {max_pending!r}")
        if max_concurrency is not None:
            concurrency(max_concurrency, saving=True)  # a bad value fails here, not in a save
        self.root = root.rstrip("/")
        self.keep_last, self.keep_every = keep_last, keep_every
        self.incremental = incremental
        resolve(self.root, storage_options)  # an unusable URL or options fail here
        self._options = storage_options
        self._save_options: dict[str, Any] = {
            "access": access, "backend": backend, "codec": codec, "progress": progress,
            "timeout": timeout, "max_concurrency": max_concurrency,
            "encryption_key": encryption_key}
        self._load_options: dict[str, Any] = {
            "progress": progress, "max_concurrency": max_concurrency}
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zstore-save")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._snapshots = SnapshotPool()  # background saves' host copies, reused
        self._pending: list[tuple[int, Future[SaveInfo]]] = []
        self._lock = threading.Lock()
        self._newest: int | None = None  # newest step this manager committed
        self._closed = False
        # A multi-rank job: every rank makes the manager and calls each save; the save's
        # gloo group is made here, on the caller's thread, not on the background worker.
        self._ranks = Ranks.current(self.root, process_group)
        self._process_group = process_group
        self.mirrors = check_mirrors(self.root, mirrors)
        if self.mirrors and self._ranks is not None and self._ranks.size > 1:
            raise ValueError(
                f"mirrors= is not supported by a manager of {self._ranks.size} ranks yet "
                "(rank 0 would copy each step after the collective save): create it without "
                "mirrors=; each committed step is a self-contained folder that a copy tool "
                "(aws s3 sync, rclone) can replicate")
        self._mirroring = MirrorWorker(
            self.root, storage_options, self.mirrors,
            lambda: concurrency(max_concurrency, saving=True),
            lambda step: self._retain(after=step)) if self.mirrors else None

    def __repr__(self) -> str:
        return (f"CheckpointManager({self.root!r}, keep_last={self.keep_last}, "
                f"keep_every={self.keep_every})")

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        try:
            self.close()
        except Exception:
            if exc_type is None:  # never mask the exception already leaving the block
                raise

    def url(self, step: int) -> str:
        """Where ``step`` is (or would be) stored on the fast tier (the root)."""
        return step_url(self.root, step)

    # saving

    def save(self, step: int, tree: Any, *, metadata: dict[str, Any] | None = None,
             blocking: bool = True, overwrite: bool = False) -> SaveInfo | Future[SaveInfo]:
        """Save ``tree`` as step ``step``; with ``blocking=False`` return once it is copied.

        Keys and types are checked here, before anything is queued or written.
        A background save holds a host copy of every array, so the caller may
        change its tensors as soon as this returns; the copy goes into the buffers of
        a save that finished (``snapshot``), so at most ``max_pending + 1`` copies
        of the state exist and none pays for fresh memory after the first two. Its
        result (a ``SaveInfo``) or error comes from the returned future, ``wait()``,
        or, for an error, the next call to this manager.

        Raises:
            the error of an earlier background save that nobody has seen yet.
        """
        if self._closed:
            raise ValueError(f"{self!r} is closed; create a new CheckpointManager to save")
        if self._ranks is not None and self._ranks.size > 1:
            # a collective save: every rank must see the same earlier saves finished, or
            # one raises here while the others begin the next save without it
            futures.wait([f for _, f in self._pending])
        self._raise_failures()
        url = self.url(step)
        flat = flatten(tree)
        snapshot = None
        if not blocking:
            snapshot = self._snapshots.snapshot(flat.arrays)
            flat = FlatTree(flat.skeleton, dict(snapshot))
        self._slots.acquire()
        future = self._worker.submit(self._write, step, url, flat, metadata, overwrite)
        future.add_done_callback(lambda _: self._slots.release())
        if snapshot is not None:
            future.add_done_callback(lambda _: self._snapshots.give_back(snapshot))
        if blocking:
            return future.result()
        with self._lock:
            self._pending.append((step, future))
        return future

    def _write(self, step: int, url: str, flat: FlatTree, metadata: dict[str, Any] | None,
               overwrite: bool) -> SaveInfo:
        ranks = self._ranks if self._ranks is not None and self._ranks.size > 1 else None
        incremental = self.incremental and ranks is None  # not yet across ranks
        base = self._base(step) if incremental else None
        info = write(flat, url, storage_options=self._options, metadata=metadata,
                     overwrite=overwrite, base=base, hashes=incremental,
                     process_group=self._process_group, **self._save_options)
        self._newest = max(step, self._newest if self._newest is not None else step)
        if self._mirroring is not None:  # the copies first, then retention, on their thread
            self._mirroring.submit(step, overwrite)
        elif ranks is None:
            self._retain(after=step)  # a RetentionError, never a failed save: it committed
        elif ranks.rank == 0:  # retention is rank 0's; its failure must not fail only
            try:  # rank 0's future, or the ranks' saves would fall out of step
                self._retain(after=step)
            except RetentionError as e:
                warnings.warn(str(e), RuntimeWarning, stacklevel=2)
        return info

    def _base(self, step: int) -> str | None:
        """The newest committed step before ``step``: the one to copy unchanged objects from."""
        if self._newest is not None and self._newest < step:
            try:  # usually the step this manager saved last: 2 GETs instead of a scan
                open_checkpoint(self.url(self._newest), storage_options=self._options)
                return self.url(self._newest)
            except ZStoreError:  # deleted or damaged since
                pass
        older = [s for s in committed_steps(self.root, self._options) if s < step]
        return self.url(older[-1]) if older else None

    def apply_retention(self) -> list[int]:
        """Delete the steps ``keep_last``/``keep_every`` do not keep (done after every save),
        and on each mirror those its own rules do not keep; returns the steps deleted from
        any tier. Without any rule, nothing is deleted.

        Raises:
            RetentionError: some of them could not be deleted (each is tried; the others
                are deleted): ``not_deleted`` lists them, ``errors`` says why.
        """
        gone: set[int] = set()
        errors: list[RetentionError] = []
        for mirror in (None, *self.mirrors):  # None: the fast tier
            try:
                gone.update(self._retain(after=None) if mirror is None else retain(
                    mirror.url, mirror.storage_options, mirror.keep_last, mirror.keep_every,
                    after=None))
            except RetentionError as e:  # every tier gets its try
                errors.append(e)
        if errors:
            for other in errors[1:]:
                errors[0].add_note(f"also: {other}")
            raise errors[0]
        return sorted(gone)

    def _retain(self, after: int | None) -> list[int]:
        """The fast tier's retention, run after the save of step ``after`` committed (None:
        on its own); a step whose copies to the mirrors have not finished stays."""
        protected = self._mirroring.protected() if self._mirroring is not None else set()
        return retain(self.root, self._options, self.keep_last, self.keep_every, after=after,
                      protected=protected)

    def wait(self) -> None:
        """Block until every background save, and every copy to a mirror, has finished;
        raise the first save's error, else the first failed copy's (a note names its step,
        its mirror and that the step is committed on the fast tier)."""
        with self._lock:
            pending, self._pending = self._pending, []
        errors = []
        for step, future in pending:
            error = future.exception()
            if error is not None:
                errors.append((step, error))
        copies = self._mirroring.wait() if self._mirroring is not None else []
        if errors:
            if copies:
                errors[0][1].add_note(f"mirroring failed too, for step(s) {[s for s, _ in copies]}")
            _raise(*errors[0], more=len(errors) - 1)
        if copies:
            error = copies[0][1]
            if len(copies) > 1:
                error.add_note(f"mirroring step(s) {[s for s, _ in copies[1:]]} failed too")
            raise error

    def _raise_failures(self) -> None:
        with self._lock:
            failed = [(s, f) for s, f in self._pending if f.done() and f.exception() is not None]
            self._pending = [(s, f) for s, f in self._pending if (s, f) not in failed]
        if failed:
            step, future = failed[0]
            _raise(step, future.exception(), more=len(failed) - 1)  # type: ignore[arg-type]

    def close(self) -> None:
        """Wait for background saves, then release the worker thread."""
        self._closed = True
        try:
            self.wait()
        finally:
            self._worker.shutdown(wait=True)
            if self._mirroring is not None:  # after the saves, which queue copies
                self._mirroring.shutdown()
            self._snapshots.clear()

    # finding and reading

    def steps(self) -> list[int]:
        """Committed steps, oldest first, on any tier (the root, or a mirror). A step whose
        save has not committed is never listed."""
        return list(self.tiers())

    def tiers(self) -> dict[int, list[str]]:
        """Each committed step, oldest first, and the roots holding it committed: the
        root (the fast tier) first, then the mirrors in order. A mirror that cannot be
        listed is left out with a ``RuntimeWarning``."""
        return tiers_of((self.root, self._options), self.mirrors)

    def latest_step(self) -> int | None:
        """The newest committed step, or None when there is none."""
        steps = self.steps()
        return steps[-1] if steps else None

    def open(self, step: int | None = None) -> Checkpoint:
        """Step ``step`` (default: the newest committed one), opened lazily; with mirrors, the
        fast tier's copy unless it is missing or lost an object, then a mirror's."""
        return self._on_first_intact(self._resolve(step), lambda ckpt: ckpt)

    def _on_first_intact(self, step: int, use: Callable[[Checkpoint], T]) -> T:
        key = self._save_options["encryption_key"]
        if not self.mirrors:
            return use(open_checkpoint(self.url(step), storage_options=self._options,
                                       encryption_key=key))
        return first_intact(step, self._tiers(), use, key)

    def _tiers(self) -> list[tuple[str, dict[str, Any] | None]]:
        """Each tier's root and storage options, the fast tier first."""
        return [(self.root, self._options), *((m.url, m.storage_options) for m in self.mirrors)]

    def _resolve(self, step: int | None) -> int:
        self._raise_failures()
        if step is not None:
            return step
        latest = self.latest_step()
        if latest is None:
            raise CheckpointNotFoundError(f"no committed step under {self.root!r}",
                                          url=self.root)
        return latest

    def restore(self, step: int | None = None, *, into: Any = None, framework: str | None = None,
                device: Any = None, strict: bool = True) -> tuple[int, Any]:
        """``(step, tree)`` of step ``step``, default the newest committed one.

        ``into`` fills existing objects in place: a torch module (or state
        dict) for the whole checkpoint, or a mapping from the tree's top-level
        keys to targets: modules and state dicts are streamed into tensor by
        tensor, anything with ``load_state_dict`` (optimizers, schedulers)
        receives its loaded entry. The tree returned then holds only the
        other top-level entries (step counters, RNG states, config).

        With mirrors, the fast tier's copy is read unless it is missing, uncommitted or
        damaged (an object gone, a chunk failing its crc32c): then the first mirror
        holding the step committed, with a ``RuntimeWarning`` naming the damage. A load
        into targets that failed midway is redone whole from the mirror.
        """
        chosen = self._resolve(step)
        return chosen, self._on_first_intact(chosen, lambda ckpt: self._restore_from(
            ckpt, into, framework, device, strict))

    def _restore_from(self, ckpt: Checkpoint, into: Any, framework: str | None, device: Any,
                      strict: bool) -> Any:
        if into is None:
            return ckpt.load(framework=framework, device=device, **self._load_options)
        if not isinstance(into, Mapping) or _is_state_dict(into):
            ckpt.load(into=into, strict=strict, **self._load_options)
            return {}
        missing = [k for k in into if k not in ckpt.entries]
        if missing:
            raise KeyError(f"{ckpt.url!r} has no entries {missing}; it has {ckpt.entries}")
        streamed = [k for k, t in into.items() if _is_module(t) or isinstance(t, Mapping)]
        unfit = [k for k, t in into.items()
                 if k not in streamed and not hasattr(t, "load_state_dict")]
        if unfit:
            raise TypeError(f"restore(into=...) cannot fill {unfit}: each target must be a "
                            "torch module, a state dict, or have load_state_dict")
        rest = ckpt.load(framework=framework, device=device,
                         entries=[k for k in ckpt.entries if k not in streamed],
                         **self._load_options)
        for key, target in into.items():
            if key in streamed:
                ckpt.load(into=target, strict=strict, prefix=f"{key}/", **self._load_options)
            else:
                target.load_state_dict(rest[key])
        return {k: v for k, v in rest.items() if k not in into}

    def delete(self, step: int, *, force: bool = False) -> None:
        """Delete step ``step`` from every tier: its commit marker first, so a crash midway
        leaves it incomplete.

        The newest committed step is refused unless ``force``: it is what a
        crashed job resumes from.
        """
        self._raise_failures()
        roots = self._tiers()
        scans = [run(root, scan(resolve(root, options))) for root, options in roots]
        holding = [tier for tier, steps in zip(roots, scans) if step in {s.step for s in steps}]
        if not holding:
            raise CheckpointNotFoundError(f"no step {step} under {self.root!r}"
                                          + (" nor its mirrors" if self.mirrors else ""),
                                          url=self.url(step))
        committed = sorted({s.step for steps in scans for s in steps if s.complete})
        if committed and step == committed[-1] and not force:
            raise ValueError(f"step {step} is the newest committed step of {self.root!r}, "
                             "the one a crashed job resumes from; pass force=True "
                             "(zstore rm --force) to delete it")
        for root, options in holding:
            delete_step(root, options, step)


def _raise(step: int, error: BaseException, more: int) -> None:
    also = f"{more} more background save(s) failed too" if more else ""
    if not isinstance(error, RetentionError):  # that one says its step committed: no note
        error.add_note(f"raised by the background save of step {step}"
                       + (f" ({also})" if also else ""))
    elif also:
        error.add_note(also)
    raise error


def _is_module(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.nn.Module)


def _is_state_dict(value: Mapping[str, Any]) -> bool:
    """A mapping of tensors (fill it whole), as opposed to one of named targets."""
    torch = sys.modules.get("torch")
    return torch is not None and bool(value) and all(
        isinstance(v, torch.Tensor) for v in value.values())
