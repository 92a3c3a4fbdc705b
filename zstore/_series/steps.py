"""A checkpoint series on storage: ``root/step-<n>/``, which steps count, which may go.

The only source of truth is the steps themselves: a step counts when its
commit marker vouches for its root ``zarr.json``. There is no ``latest``
pointer to fall out of date: finding the newest step is one listing plus two
small concurrent GETs per step directory.
"""

from __future__ import annotations

from dataclasses import dataclass

from zstore._format.names import step_of
from zstore._read.catalog import CheckpointEntry, child_names, entries
from zstore._storage.location import Location


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
