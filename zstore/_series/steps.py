"""A checkpoint series on storage: ``root/step-<n>/``, which steps count, which may go.

The only source of truth is the steps themselves: a step counts when its
commit marker vouches for its root ``zarr.json``. There is no ``latest``
pointer to fall out of date: finding the newest step is one listing plus two
small concurrent GETs per step directory. Retention runs on one series root at a
time, so a manager applies it to its fast tier and to each mirror by their own rules.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from zstore._format.names import step_name, step_of
from zstore._read.catalog import CheckpointEntry, child_names, entries
from zstore._storage.location import Location, resolve, run
from zstore._write.delete import delete_checkpoint
from zstore._write.lease import is_leased
from zstore.errors import RetentionError


@dataclass(frozen=True)
class Step:
    """One step directory of a series, complete or not."""

    step: int
    entry: CheckpointEntry

    @property
    def complete(self) -> bool:
        return self.entry.complete


async def scan(root: Location) -> list[Step]:
    """Every step directory holding a zstore checkpoint, oldest first."""
    names = [n for n in await child_names(root) if step_of(n) is not None]
    found = await entries(root, names)
    return sorted((Step(step_of(e.name), e) for e in found), key=lambda s: s.step)  # type: ignore[arg-type]


def committed_steps(root: str, options: dict[str, Any] | None) -> list[int]:
    """The committed steps of the series at ``root``, oldest first."""
    return [s.step for s in run(root, scan(resolve(root, options))) if s.complete]


def doomed(steps: list[Step], keep_last: int | None, keep_every: int | None) -> list[int]:
    """The steps retention deletes: committed ones outside ``keep_last``/``keep_every``,
    and incomplete ones older than the newest committed step (a crashed save's
    leftovers). The newest committed step is never among them.
    """
    committed = [s.step for s in steps if s.complete]
    if not committed:
        return []
    newest = committed[-1]
    keep = set(committed[-keep_last:]) if keep_last else set(committed)
    if keep_every:
        keep |= {s for s in committed if s % keep_every == 0}
    keep.add(newest)
    return [s.step for s in steps
            if s.step not in keep and (s.complete or s.step < newest)]


def step_url(root: str, step: int) -> str:
    """Where step ``step`` of the series at ``root`` is (or would be) stored."""
    return f"{root}/{step_name(step)}"


def delete_step(root: str, options: dict[str, Any] | None, step: int) -> None:
    """Delete one step of the series at ``root``, its commit marker first."""
    url = step_url(root, step)
    location = resolve(url, options)
    run(url, delete_checkpoint(location))
    location.prune_folders()


def retain(root: str, options: dict[str, Any] | None, keep_last: int | None,
           keep_every: int | None, *, after: int | None,
           protected: Collection[int] = ()) -> list[int]:
    """Delete the steps of the series at ``root`` that ``keep_last``/``keep_every`` do not
    keep, run after the save of step ``after`` committed (None: on its own); returns them.

    ``protected`` steps stay whatever the rules say (a fast-tier step whose copy to a
    mirror has not finished: it is the copy's source). An incomplete step another saver
    is still writing stays too. Any failure is a ``RetentionError`` saying so, never an
    error of the save: each step gets its try, and the ones not deleted are listed.
    """
    if keep_last is None and keep_every is None:
        return []
    try:
        steps = run(root, scan(resolve(root, options)))
        complete = {s.step for s in steps if s.complete}
        gone = [step for step in doomed(steps, keep_last, keep_every)
                if step not in protected and (step in complete or not _being_written(
                    step_url(root, step), options))]
    except Exception as e:  # reported as what failed: the retention
        raise _failed(root, after, [], {}, e) from e
    errors: dict[int, BaseException] = {}
    for step in gone:
        try:
            delete_step(root, options, step)
        except Exception as e:  # noqa: BLE001 - each step gets its try; all are reported
            errors[step] = e
    if errors:
        first = next(iter(errors.values()))
        raise _failed(root, after, list(errors), errors, first) from first
    return gone


def _being_written(url: str, options: dict[str, Any] | None) -> bool:
    """An incomplete step another saver is still writing (a second manager on this root)."""
    return run(url, is_leased(resolve(url, options)))


def _failed(root: str, after: int | None, not_deleted: list[int],
            errors: dict[int, BaseException], cause: BaseException) -> RetentionError:
    what = (f"step(s) {not_deleted} could not be deleted" if not_deleted
            else "the steps to delete could not be listed")
    where, saved = f"of {root!r}", ""
    if after is not None:
        where = f"after step {after} under {root!r}"
        saved = f"; step {after} is committed and opens: only deleting older steps failed"
    return RetentionError(
        f"retention {where} failed: {what} ({type(cause).__name__}: {cause}){saved}. "
        "Retention tries again after the next save, or call apply_retention()",
        url=root, step=after, not_deleted=not_deleted, errors=errors)
