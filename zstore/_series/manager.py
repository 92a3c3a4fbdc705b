"""A training job's checkpoint series: save every N steps, in the background, and resume.

Each step is a complete, self-contained checkpoint at ``root/step-<n>/``,
readable on its own by zstore and by plain zarr. A background save first
copies the tree to host memory (the only stall the training loop sees), then
writes on one worker thread, in order: each save copies on the server every
object unchanged since the previous committed step, then retention deletes
what ``keep_last``/``keep_every`` no longer keep, never the newest committed step.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Mapping
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from zstore._format.names import step_name
from zstore._format.tree import FlatTree, flatten
from zstore._options import concurrency
from zstore._plan.access import Access
from zstore._plan.profiles import BackendProfile
from zstore._ranks import Ranks
from zstore._read.reader import Checkpoint
from zstore._read.reader import open as open_checkpoint
from zstore._series.snapshot import SnapshotPool
from zstore._series.steps import Step, doomed, scan
from zstore._storage.location import resolve, run
from zstore._write.delete import delete_checkpoint
from zstore._write.lease import is_leased
from zstore._write.writer import SaveInfo, write
from zstore.errors import CheckpointNotFoundError, RetentionError, ZStoreError


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
                 max_concurrency: int | None = None, process_group: Any = None) -> None:
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
        self._location = resolve(self.root, storage_options)
        self._options = storage_options
        self._save_options: dict[str, Any] = {
            "access": access, "backend": backend, "codec": codec, "progress": progress,
            "timeout": timeout, "max_concurrency": max_concurrency}
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
        """Where ``step`` is (or would be) stored."""
        return f"{self.root}/{step_name(step)}"

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
        if ranks is None:
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
        older = [s for s in self.steps() if s < step]
        return self.url(older[-1]) if older else None

    def apply_retention(self) -> list[int]:
        """Delete the steps ``keep_last``/``keep_every`` do not keep (done after every save);
        returns them. Without either rule, nothing is deleted.

        Raises:
            RetentionError: some of them could not be deleted (each is tried; the others
                are deleted): ``not_deleted`` lists them, ``errors`` says why.
        """
        return self._retain(after=None)

    def _retain(self, after: int | None) -> list[int]:
        """``apply_retention``, run after the save of step ``after`` committed (None: on its
        own); any failure is a ``RetentionError`` saying so, never one of the save."""
        if self.keep_last is None and self.keep_every is None:
            return []
        try:
            steps = self._scan()
            complete = {s.step for s in steps if s.complete}
            gone = [step for step in doomed(steps, self.keep_last, self.keep_every)
                    if step in complete or not self._being_written(step)]
        except Exception as e:  # reported as what failed: the retention
            raise self._retention_failed(after, [], {}, e) from e
        errors: dict[int, BaseException] = {}
        for step in gone:
            try:
                self._delete(step)
            except Exception as e:  # noqa: BLE001 - each step gets its try; all are reported
                errors[step] = e
        if errors:
            first = next(iter(errors.values()))
            raise self._retention_failed(after, list(errors), errors, first) from first
        return gone

    def _retention_failed(self, after: int | None, not_deleted: list[int],
                          errors: dict[int, BaseException], cause: BaseException
                          ) -> RetentionError:
        what = (f"step(s) {not_deleted} could not be deleted" if not_deleted
                else "the steps to delete could not be listed")
        where, saved = f"of {self.root!r}", ""
        if after is not None:
            where = f"after step {after} under {self.root!r}"
            saved = f"; step {after} is committed and opens: only deleting older steps failed"
        return RetentionError(
            f"retention {where} failed: {what} ({type(cause).__name__}: {cause}){saved}. "
            "Retention tries again after the next save, or call apply_retention()",
            url=self.root, step=after, not_deleted=not_deleted, errors=errors)

    def _being_written(self, step: int) -> bool:
        """An incomplete step another saver is still writing (a second manager on this root)."""
        return run(self.url(step), is_leased(resolve(self.url(step), self._options)))

    def wait(self) -> None:
        """Block until every background save has finished; raise the first one's error."""
        with self._lock:
            pending, self._pending = self._pending, []
        errors = []
        for step, future in pending:
            error = future.exception()
            if error is not None:
                errors.append((step, error))
        if errors:
            _raise(*errors[0], more=len(errors) - 1)

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
            self._snapshots.clear()

    # finding and reading

    def _scan(self) -> list[Step]:
        return run(self.root, scan(self._location))

    def steps(self) -> list[int]:
        """Committed steps, oldest first. A step whose save has not committed is never listed."""
        return [s.step for s in self._scan() if s.complete]

    def latest_step(self) -> int | None:
        """The newest committed step, or None when there is none."""
        steps = self.steps()
        return steps[-1] if steps else None

    def open(self, step: int | None = None) -> Checkpoint:
        """Step ``step`` (default: the newest committed one), opened lazily."""
        return open_checkpoint(self.url(self._resolve(step)), storage_options=self._options)

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
        """
        chosen = self._resolve(step)
        ckpt = self.open(chosen)
        if into is None:
            return chosen, ckpt.load(framework=framework, device=device, **self._load_options)
        if not isinstance(into, Mapping) or _is_state_dict(into):
            ckpt.load(into=into, strict=strict, **self._load_options)
            return chosen, {}
        missing = [k for k in into if k not in ckpt.entries]
        if missing:
            raise KeyError(f"step {chosen} of {self.root!r} has no entries {missing}; "
                           f"it has {ckpt.entries}")
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
        return chosen, {k: v for k, v in rest.items() if k not in into}

    def delete(self, step: int, *, force: bool = False) -> None:
        """Delete step ``step``: its commit marker first, so a crash midway leaves it incomplete.

        The newest committed step is refused unless ``force``: it is what a
        crashed job resumes from.
        """
        self._raise_failures()
        steps = self._scan()
        found = {s.step: s for s in steps}
        if step not in found:
            raise CheckpointNotFoundError(f"no step {step} under {self.root!r}",
                                          url=self.url(step))
        committed = [s.step for s in steps if s.complete]
        if committed and step == committed[-1] and not force:
            raise ValueError(f"step {step} is the newest committed step of {self.root!r}, "
                             "the one a crashed job resumes from; pass force=True "
                             "(zstore rm --force) to delete it")
        self._delete(step)

    def _delete(self, step: int) -> None:
        location = resolve(self.url(step), self._options)
        run(self.url(step), delete_checkpoint(location))
        location.prune_folders()


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
