"""Finding what lies under a prefix (committed checkpoints, uncommitted ones, and anything
else) without trusting any of it, and deleting a checkpoint so that no crash midway leaves it
looking committed.

A listing says what the commit marker proves, no more: "committed" means the marker
vouches for the root ``zarr.json``, not that every shard is still there
(``zstore._read.verify`` reads them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from zstore._format.manifest import is_zstore_root, parse_json, read_manifest
from zstore._format.names import COMMIT_MARKER, ROOT
from zstore._storage.accounting import record
from zstore._storage.location import Location, resolve, run
from zstore._tasks import gather_all
from zstore.errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    IncompleteCheckpointError,
    UnsupportedFormatError,
    ZStoreError,
)

# How deep ``survey`` looks by default: bucket/run/step-n is 2, bucket/project/run/step-n 3.
# Each level costs one listing per folder plus two small GETs per subfolder.
DEFAULT_DEPTH = 3

# Why a checkpoint is not committed, by the error ``read_manifest`` raises for it
# (`zstore info URL` prints that error in full).
_UNCOMMITTED: dict[type[ZStoreError], str] = {
    IncompleteCheckpointError: "uncommitted: no commit marker (save crashed or still running)",
    CorruptCheckpointError: "damaged: its commit marker does not vouch for its zarr.json",
    UnsupportedFormatError: "unreadable: written in a newer zstore format",
}


@dataclass(frozen=True)
class CheckpointEntry:
    """One zstore checkpoint found under a prefix (its root ``zarr.json`` is zstore's)."""

    name: str
    url: str
    complete: bool  # its commit marker vouches for its root zarr.json
    stored_bytes: int
    modified: float
    problem: str | None = None  # why it is not committed

    @property
    def state(self) -> str:
        """``committed`` (what the marker proves: not that the data is intact), else why not."""
        return "committed" if self.complete else (self.problem or "uncommitted")


@dataclass(frozen=True)
class OtherEntry:
    """Something under a prefix that is not a zstore checkpoint, and what it is."""

    name: str
    url: str
    what: str
    stored_bytes: int = 0


@dataclass
class Survey:
    """Everything ``survey`` found: checkpoints, other things, and where it stopped looking."""

    depth: int
    checkpoints: list[CheckpointEntry] = field(default_factory=list)
    others: list[OtherEntry] = field(default_factory=list)
    unsearched: list[str] = field(default_factory=list)  # folders at the depth bound

    def rows(self) -> list[CheckpointEntry | OtherEntry]:
        """Checkpoints and other things together, in natural order of name."""
        return sorted([*self.checkpoints, *self.others], key=lambda e: natural(e.name))


def survey(url: str, *, storage_options: dict[str, Any] | None = None,
           depth: int = DEFAULT_DEPTH) -> Survey | None:
    """What lies under ``url``, down to ``depth`` folders; None if ``url`` is a checkpoint
    (committed or not) itself.

    Checkpoints are not looked into; other folders are, until ``depth``: those
    left at the bound are in ``unsearched``. Nothing found is left out: a commit
    marker without ``zarr.json``, zarr data that is not zstore's and folders of
    plain objects are ``others``. Raises ``CheckpointNotFoundError`` when ``url``
    is a file, or holds nothing at all.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    location = resolve(url, storage_options)
    return run(url, survey_at(location, depth))


def find_checkpoints(url: str, *, storage_options: dict[str, Any] | None = None
                     ) -> list[CheckpointEntry] | None:
    """The checkpoints directly under ``url``, in natural order (``step-9`` before
    ``step-10``); None if ``url`` is one itself."""
    found = survey(url, storage_options=storage_options, depth=1)
    return None if found is None else sorted(found.checkpoints, key=lambda e: natural(e.name))


async def survey_at(location: Location, depth: int) -> Survey | None:
    """``survey`` of a resolved location, in the caller's event loop."""
    root, commit = await gather_all([location.get(ROOT), location.get(COMMIT_MARKER)])
    if root is not None or commit is not None:
        return None
    if await location.fs._isfile(location.root):
        raise CheckpointNotFoundError(_file_message(location.url), url=location.url)
    found = Survey(depth)
    if not await _walk(location, "", depth, found):
        raise CheckpointNotFoundError(
            f"no checkpoint at {location.url!r}: nothing is there (no such folder, prefix "
            "or bucket)", url=location.url)
    return found


def _file_message(url: str) -> str:
    hint = (f"; convert it with zstore.convert({url!r}, URL) or `zstore convert {url} URL` "
            f"(`zstore plan {url} --target URL` shows the layout first)"
            if url.endswith(".safetensors") else
            f" (a checkpoint is a folder holding {ROOT} and {COMMIT_MARKER})")
    return f"{url!r} is {_file_kind(url)}, not a zstore checkpoint{hint}"


def _file_kind(name: str) -> str:
    return "a safetensors file" if name.endswith(".safetensors") else "a file"


# A folder holding more loose objects than this is one row, not one row per object.
_LOOSE_ROWS = 5


async def _walk(location: Location, prefix: str, depth: int, found: Survey) -> bool:
    """Look into the folder ``prefix`` (relative to ``location``); False if it does not exist."""
    record("lists")
    try:
        listed = await location.fs._ls(location.path(prefix), detail=True)
    except FileNotFoundError:
        return False
    here = location.path(prefix).rstrip("/")
    listed = [i for i in listed if i["name"].rstrip("/") != here]  # S3 "folder/" objects
    files = [i for i in listed if i.get("type") != "directory"]
    folders = [_base(i["name"]) for i in listed if i.get("type") == "directory"]
    if len(files) > _LOOSE_ROWS:
        found.others.append(OtherEntry(
            f"{prefix}/" if prefix else ".", _url(location, prefix),
            f"{len(files)} objects, not in any checkpoint",
            sum(int(i.get("size") or 0) for i in files)))
    else:
        for info in files:
            name = f"{prefix}/{_base(info['name'])}" if prefix else _base(info["name"])
            found.others.append(OtherEntry(name, _url(location, name),
                                           f"{_file_kind(name)}, not a checkpoint",
                                           int(info.get("size") or 0)))
    names = [f"{prefix}/{name}" if prefix else name for name in folders]
    kinds = await gather_all(_classify(location, name) for name in names)
    deeper = []
    for name, kind in zip(names, kinds):
        if isinstance(kind, CheckpointEntry):
            found.checkpoints.append(kind)
        elif isinstance(kind, OtherEntry):
            found.others.append(kind)
        elif name.count("/") + 1 < depth:
            deeper.append(name)
        else:
            found.unsearched.append(name)
    await gather_all(_walk(location, name, depth, found) for name in deeper)
    return True


def _base(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _url(location: Location, name: str) -> str:
    return f"{location.url.rstrip('/')}/{name}" if name else location.url


async def child_names(location: Location) -> list[str]:
    """Names directly under the location (one listing), in natural order."""
    try:
        children = await location.fs._ls(location.root, detail=False)
    except FileNotFoundError:
        return []
    return sorted((_base(child) for child in children), key=natural)


def natural(name: str) -> list[Any]:
    """Sort key putting ``step-9`` before ``step-10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


async def entries(location: Location, names: list[str]) -> list[CheckpointEntry]:
    """The zstore checkpoints among these children of ``location`` (2 GETs each, concurrent)."""
    found = await gather_all(_classify(location, name) for name in names)
    return [entry for entry in found if isinstance(entry, CheckpointEntry)]


async def _classify(location: Location, name: str) -> CheckpointEntry | OtherEntry | None:
    """What the folder ``name`` is, from its root ``zarr.json`` and commit marker (2 GETs):
    None when it has neither (a plain folder, perhaps holding checkpoints further down)."""
    root, commit = await gather_all([location.get(f"{name}/{ROOT}"),
                                     location.get(f"{name}/{COMMIT_MARKER}")])
    url = _url(location, name)
    if root is None:
        if commit is None:
            return None
        return OtherEntry(name, url, f"damaged: {COMMIT_MARKER} without {ROOT}")
    if not is_zstore_root(root):
        return OtherEntry(name, url, f"{_zarr_kind(root)}, not a zstore checkpoint")
    try:
        read_manifest(root, commit, url)
        complete, problem = True, None
    except ZStoreError as e:
        complete = False
        problem = next((why for kind, why in _UNCOMMITTED.items() if isinstance(e, kind)),
                       f"not committed: {type(e).__name__}")
    info = parse_json(root)["attributes"]["zstore"]
    try:  # sizes and times are for people; an odd value must not hide the checkpoint
        stored = int(sum(info.get("stored_bytes", {}).values()))
        modified = float(parse_json(commit)["committed"] if complete and commit is not None
                         else info.get("created", 0))
    except (ValueError, TypeError, KeyError, AttributeError):
        stored, modified = 0, 0.0
    return CheckpointEntry(name, url, complete, stored, modified, problem)


def _zarr_kind(root: bytes) -> str:
    try:
        node = parse_json(root)
        return f"zarr {node['node_type']}" if node["zarr_format"] in (2, 3) else "a zarr.json"
    except (ValueError, TypeError, KeyError):
        return f"an unreadable {ROOT}"
