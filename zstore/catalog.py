"""Finding the checkpoints under a prefix, complete or not, without trusting either kind."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from zarr.core.sync import sync

from zstore.manifest import COMMIT_MARKER, ROOT, is_zstore_root
from zstore.storage import Location, resolve


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
    """The checkpoints directly under ``url``, sorted by name; None if ``url`` is one itself.

    A child counts as a checkpoint when its root ``zarr.json`` was written by
    zstore; it is complete only when its commit marker exists too.
    """
    location = resolve(url, storage_options)
    return sync(_find(location))


async def _find(location: Location) -> list[CheckpointEntry] | None:
    if is_zstore_root(await location.get(ROOT)):
        return None
    try:
        children = await location.fs._ls(location.root, detail=False)
    except FileNotFoundError:
        return []
    names = sorted(child.rstrip("/").rsplit("/", 1)[-1] for child in children)
    found = await asyncio.gather(*(_entry(location, name) for name in names))
    return [entry for entry in found if entry is not None]


async def _entry(location: Location, name: str) -> CheckpointEntry | None:
    root, commit = await asyncio.gather(location.get(f"{name}/{ROOT}"),
                                        location.get(f"{name}/{COMMIT_MARKER}"))
    if not is_zstore_root(root):
        return None
    assert root is not None
    info = json.loads(root)["attributes"]["zstore"]
    stored = sum(info.get("stored_bytes", {}).values())
    modified = json.loads(commit).get("committed", 0.0) if commit else info.get("created", 0.0)
    return CheckpointEntry(name, f"{location.url.rstrip('/')}/{name}", commit is not None,
                           stored, modified)
