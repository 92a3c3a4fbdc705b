"""The name of every object and folder zstore itself writes (see ``docs/format.md``).

A checkpoint is a Zarr v3 group; beside zarr's own ``zarr.json`` files and
chunk objects it holds three objects of zstore's, and a series adds one folder
name. These names are the format: renaming one makes old checkpoints
unreadable, so they are spelled here once and pinned by ``tests/test_format_names.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

ROOT = "zarr.json"  # zarr's metadata document; the root one also holds zstore's manifest
COMMIT_MARKER = "zstore.commit.json"  # written last; its hash pins the committed ROOT
LEASE = "zstore.lease.json"  # one writer per URL while a save runs; absent once it ends
HASHES = "zstore.hashes.json"  # SHA-256 per stored object, for incremental saves and verify
RESERVED_PREFIX = "zstore."  # top-level names zstore keeps for itself
STACKED = "zstore.stacked"  # the folder of stacked arrays: many same-shape tensors in one
RANKS = "zstore.ranks"  # per-rank arrays of a multi-rank save: RANKS/<rank>/<name>

_STEP = re.compile(r"step-(0|[1-9][0-9]*)")


def object_key(path: str, index: Iterable[int]) -> str:
    """The key of the stored object (shard, or chunk when unsharded) at grid ``index``
    of the array at ``path``: ``path/c/i/j`` (Zarr v3's default chunk key encoding)."""
    return "/".join([path, "c", *(str(int(i)) for i in index)])


def step_name(step: int) -> str:
    """The folder of step ``step`` in a series: ``step-<n>``, no padding."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"a step is a non-negative int, got {step!r}")
    return f"step-{step}"


def step_of(name: str) -> int | None:
    """The step a folder name holds, or None for a name that is not a step's."""
    match = _STEP.fullmatch(name)
    return int(match.group(1)) if match else None
