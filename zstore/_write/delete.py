"""Deleting a checkpoint: the commit marker first, the root ``zarr.json`` last.

A deletion is a write: it runs where the writer replaces a checkpoint it
overwrites, where a series' retention drops old steps, and behind ``zstore rm``.
"""

from __future__ import annotations

from typing import Any

from zstore._format.manifest import is_zstore_root
from zstore._format.names import COMMIT_MARKER, LEASE, ROOT
from zstore._storage.location import Location, resolve, run
from zstore.errors import CheckpointNotFoundError, NestedCheckpointError


def delete(url: str, *, storage_options: dict[str, Any] | None = None) -> int:
    """Delete the zstore checkpoint at ``url`` (complete or not); refuse anything else."""
    location = resolve(url, storage_options)
    if not is_zstore_root(run(url, location.get(ROOT))):
        raise CheckpointNotFoundError(
            f"no zstore checkpoint at {url!r}; zstore deletes only its own checkpoints",
            url=url)
    removed = run(url, delete_checkpoint(location))
    location.prune_folders()
    return removed


async def delete_checkpoint(location: Location, existing: dict[str, int] | None = None) -> int:
    """Delete every object of the checkpoint at ``location``; returns how many.

    The commit marker goes first, alone: from then on the checkpoint does not
    open as complete, whatever happens to the rest of the deletion. The root
    ``zarr.json`` goes last: until then it marks the leftovers as zstore's, so a
    deletion (or an overwrite) cut short can be finished by the next one.
    """
    if existing is None:
        existing = await location.sizes()
    nested = nested_checkpoints(existing)
    if nested:
        raise NestedCheckpointError(
            f"{location.url!r} holds another checkpoint inside it, at {nested[0]!r}; zstore "
            "never deletes a checkpoint nested in the one it replaces or removes: move or "
            "delete that one first", url=location.url, nested=nested[0])
    if COMMIT_MARKER in existing:
        await location.remove_all([COMMIT_MARKER])
    await location.remove_all([key for key in existing if key not in (COMMIT_MARKER, ROOT)])
    if ROOT in existing:
        await location.remove_all([ROOT])
    return len(existing)


def nested_checkpoints(existing: dict[str, int]) -> list[str]:
    """The folders (relative to the root) below it that hold a checkpoint of their own, a
    commit marker or a lease (committed, or being written now), sorted."""
    return sorted({key.rsplit("/", 1)[0] for key in existing
                   if "/" in key and key.rsplit("/", 1)[1] in (COMMIT_MARKER, LEASE)})
