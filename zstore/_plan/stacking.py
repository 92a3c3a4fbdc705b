"""Many tensors, few objects: stacking same-shape tensors whose names differ only in integers.

A model's tensors repeat: one set per layer, per expert, per parameter of an optimizer.
Stored one array each, a tensor costs at least two objects (its ``zarr.json`` and a shard)
and a GET on load, so 3,000 small tensors cost 6,000 objects. Tensors with the same shape,
dtype and access patterns whose names differ only in whole integer segments
(``layers.3.mlp.experts.7.w1``, ``optim/state/12/exp_avg``) are stored instead as one
array with a leading index dimension, named by their pattern with ``{}`` for each integer
(``zstore.stacked/layers.{}.mlp.experts.{}.w1``), its members listed in order in its
attributes. Each member keeps its own name and reads only its own bytes; a plain Zarr
reader sees one meaningful array per group.

Only tensors up to ``STACK_SHARE`` of the profile's shard target are stacked: a larger
tensor fills shards of its own, and its ``zarr.json`` costs nothing beside its bytes.
Pure: names, shapes and dtypes in, groups out.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np

from zstore._format.layout import Layout
from zstore._format.names import RESERVED_PREFIX, STACKED
from zstore._plan.access import Pattern
from zstore._plan.profiles import BackendProfile

STACK_SHARE = 8  # members are at most shard_target / STACK_SHARE bytes (16 MiB on S3)
_INTEGER = re.compile(r"(?<![^./])[0-9]+(?![^./])")  # a whole segment between '.' and '/'
_DIGITS = re.compile(r"([0-9]+)")

Spec = tuple[tuple[int, ...], np.dtype]


def stack_pattern(name: str) -> str | None:
    """``name`` with each whole integer segment replaced by ``{}``; None if it has none."""
    pattern = _INTEGER.sub("{}", name)
    return None if pattern == name else pattern


def _natural(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in _DIGITS.split(name)]


def find_stacks(specs: Mapping[str, Spec], patterns: Mapping[str, tuple[Pattern, ...]],
                profile: BackendProfile, fixed: set[str],
                held: Mapping[str, Any] | None = None) -> dict[str, list[str]]:
    """{stacked array path: member names in natural order} for every group of two or more
    tensors that may share an array; ``fixed`` names (given a layout) stay alone. With
    ``held`` (a multi-rank save: {name: which rank holds which box}), only tensors held
    alike stack, so a stacked object lies in the parts of the same ranks for every member."""
    limit = profile.shard_target // STACK_SHARE
    groups: dict[tuple[str, tuple[int, ...], str, str, str], list[str]] = defaultdict(list)
    for name, (shape, dtype) in specs.items():
        pattern = stack_pattern(name)
        nbytes = math.prod(shape) * dtype.itemsize
        if (pattern is None or name in fixed or not shape or not 0 < nbytes <= limit
                or name.startswith(RESERVED_PREFIX)):  # zstore's own (per-rank values)
            continue
        groups[(pattern, shape, str(dtype), repr(patterns[name]),
                repr((held or {}).get(name)))].append(name)
    stacks: dict[str, list[str]] = {}
    taken: dict[str, int] = defaultdict(int)
    for (pattern, *_), names in sorted(groups.items(), key=lambda g: (g[0][0], -len(g[1]))):
        if len(names) < 2:
            continue
        suffix = f"~{taken[pattern]}" if taken[pattern] else ""
        taken[pattern] += 1
        stacks[f"{STACKED}/{pattern}{suffix}"] = sorted(names, key=_natural)
    return stacks


def stacked_layout(member: Layout, shape: tuple[int, ...], count: int, member_nbytes: int,
                   profile: BackendProfile, split: bool = False) -> Layout:
    """The layout of ``count`` members of ``shape`` stacked along a new leading dim, from
    one member's: its chunks, each within one member (so a member's bytes are its own
    chunks, back to back in their shard: one member, or one part of it, is the shard's
    index and one ranged GET), in shards of whole members: as many as fill
    ``1 / STACK_SHARE`` of the profile's shard target (so an incremental save that changes
    one member uploads at most that much beside it: 16 MiB on S3), but no more than leave
    a shard for each of the profile's useful streams (a full load reads them in parallel)
    unless that makes shards smaller than what one stream moves in a request's latency;
    a divisor of ``count`` not under half that, so shards tile the array (a full load reads
    every shard whole), else that many (the last shard is partly empty). A member that alone
    is worth a request (what one stream moves in a request's latency) is a shard of its own:
    the stack still saves one array document instead of one per member, and an incremental
    save re-uploads exactly the members that changed. With ``split`` (the members are
    split between the writers of a multi-rank save) a shard holds one object of each of its
    members, as the member's layout cuts them, not whole members."""
    size = max(1, member_nbytes)
    worth = round(profile.latency * profile.bandwidth)
    streams = max(-(-count // profile.concurrency), -(-worth // size))
    fill = 1 if size >= worth else max(
        1, min(count, profile.shard_target // STACK_SHARE // size, streams))
    divisor = max(d for d in range(1, fill + 1) if count % d == 0)
    per_shard = divisor if 2 * divisor >= fill else fill
    chunk = (1, *member.chunk_shape)
    shard = (per_shard, *(member.object_shape if split else shape))
    return Layout(chunk, shard if shard != chunk else None, member.codec)
