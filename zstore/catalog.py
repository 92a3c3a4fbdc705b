"""Finding the checkpoints under a prefix, complete or not, without trusting either kind,
and deleting one so that no crash midway leaves it looking complete."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from zstore.errors import CheckpointExistsError, CheckpointNotFoundError, ZStoreError
from zstore.lease import LEASE
from zstore.manifest import COMMIT_MARKER, ROOT, is_zstore_root, parse_json, read_manifest
from zstore.storage import Location, resolve, run


@dataclass(frozen=True)
class CheckpointEntry:
    """One checkpoint found under a prefix."""

    name: str
    url: str
    complete: bool
    stored_bytes: int
    modified: float


def find_checkpoints(url: str, *, storage_options: dict[str, Any] | None = None
                     ) -> list[CheckpointEntry] | None:
    """The checkpoints directly under ``url``, in natural order (``step-9`` before
    ``step-10``); None if ``url`` is one itself.

    A child counts as a checkpoint when its root ``zarr.json`` was written by
    zstore; it is complete only when its commit marker vouches for that root.
    """
    location = resolve(url, storage_options)
    return run(url, _find(location))


async def _find(location: Location) -> list[CheckpointEntry] | None:
    if is_zstore_root(await location.get(ROOT)):
        return None
    return await entries(location, await child_names(location))


async def child_names(location: Location) -> list[str]:
    """Names directly under the location (one listing), in natural order."""
    try:
        children = await location.fs._ls(location.root, detail=False)
    except FileNotFoundError:
        return []
    return sorted((child.rstrip("/").rsplit("/", 1)[-1] for child in children), key=_natural)


def _natural(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


async def entries(location: Location, names: list[str]) -> list[CheckpointEntry]:
    """The zstore checkpoints among these children of ``location`` (2 GETs each, concurrent)."""
    found = await asyncio.gather(*(_entry(location, name) for name in names))
    return [entry for entry in found if entry is not None]


async def _entry(location: Location, name: str) -> CheckpointEntry | None:
    root, commit = await asyncio.gather(location.get(f"{name}/{ROOT}"),
                                        location.get(f"{name}/{COMMIT_MARKER}"))
    if not is_zstore_root(root):
        return None
    assert root is not None
    url = f"{location.url.rstrip('/')}/{name}"
    try:
        read_manifest(root, commit, url)
        complete = True
    except ZStoreError:
        complete = False
    info = parse_json(root)["attributes"]["zstore"]
    try:  # sizes and times are for people; an odd value must not hide the checkpoint
        stored = int(sum(info.get("stored_bytes", {}).values()))
        modified = float(parse_json(commit)["committed"] if complete else info.get("created", 0))
    except (ValueError, TypeError, KeyError, AttributeError):
        stored, modified = 0, 0.0
    return CheckpointEntry(name, url, complete, stored, modified)


def delete(url: str, *, storage_options: dict[str, Any] | None = None) -> int:
    """Delete the zstore checkpoint at ``url`` (complete or not); refuse anything else."""
    location = resolve(url, storage_options)
    if not is_zstore_root(run(url, location.get(ROOT))):
        raise CheckpointNotFoundError(
            f"no zstore checkpoint at {url!r}; zstore deletes only its own checkpoints")
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
    nested = sorted(key.rsplit("/", 1)[0] for key in existing
                    if "/" in key and key.rsplit("/", 1)[1] in (COMMIT_MARKER, LEASE))
    if nested:
        raise CheckpointExistsError(
            f"{location.url!r} holds another checkpoint inside it, at {nested[0]!r}; zstore "
            "never deletes a checkpoint nested in the one it replaces or removes: move or "
            "delete that one first")
    if COMMIT_MARKER in existing:
        await location.remove_all([COMMIT_MARKER])
    await location.remove_all([key for key in existing if key not in (COMMIT_MARKER, ROOT)])
    if ROOT in existing:
        await location.remove_all([ROOT])
    return len(existing)
