"""Which part of each global array every rank holds, and which rank writes each object.

Pure: no collectives, no I/O. Every rank computes the same answers from the same
exchanged facts, so no rank waits for another to decide.

A DTensor with ``Shard(d)`` and ``Replicate()`` placements holds one box of its global
tensor on each rank (``torch.chunk``'s pieces: ceil-sized, the last ones shorter or
empty). A plain tensor or array is replicated: every rank holds all of it. The planner
puts object boundaries on every box boundary (``zstore._plan.region_grid``: per dim,
the gcd of all of them), so each object lies inside the box of every rank that holds any of it, and
``assign`` gives it to one of those ranks: no object has two writers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from zstore._format.shards import object_box
from zstore._format.tensors import is_dtensor
from zstore.errors import UnsupportedTypeError

Box = tuple[tuple[int, int], ...]  # [start, stop) per dim, global coordinates


def local_part(value: Any, name: str) -> tuple[tuple[int, ...], Box | None, Any]:
    """(global shape, the box this rank holds or None for an empty shard, the local data)
    of one array leaf; ``UnsupportedTypeError`` for placements that hold no box."""
    shape = tuple(int(n) for n in value.shape)
    if isinstance(value, Part):  # a snapshot of a DTensor's part (a background save)
        return shape, value.box, value.data
    if not is_dtensor(value):
        return shape, tuple((0, n) for n in shape), value
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    placements = list(value.placements)
    for i, placement in enumerate(placements):
        if type(placement) not in (Shard, Replicate) and not _fsdp_over_tp(
                placements, i, value.device_mesh.shape):
            raise UnsupportedTypeError(
                f"DTensor {name!r} has placement {placement}; zstore saves Shard(dim) and "
                "Replicate() placements, whose parts are boxes of the global tensor. "
                "Redistribute it first (a Partial must be reduced: "
                "t.redistribute(placements=[Replicate()]); a strided shard, as FSDP2 over "
                "tensor parallelism makes, other than over a later Shard of the same dim: "
                "t.redistribute(placements=[Shard(0), ...]))")
    local_shape, offset = compute_local_shape_and_global_offset(
        value.shape, value.device_mesh, value.placements)
    local = value.to_local()
    if math.prod(local_shape) == 0 and math.prod(shape) > 0:
        return shape, None, local
    return shape, tuple((o, o + n) for o, n in zip(offset, local_shape)), local


@dataclass(frozen=True)
class Part:
    """This rank's part of a global array, indexed in global coordinates: what the writer
    encodes objects from. A box outside the part is a bug (an object assigned to a rank
    that does not hold it), so it raises rather than reads wrong memory."""

    data: np.ndarray
    box: Box | None  # None: this rank holds nothing of it (an empty shard)
    shape: tuple[int, ...]  # the global shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def __getitem__(self, index: Any) -> np.ndarray:
        if index is Ellipsis or index == (Ellipsis,):
            index = tuple(slice(0, n) for n in self.shape)
        if self.box is None:
            raise IndexError("this rank holds no part of the array")
        local = []
        for s, (lo, hi), n in zip(index, self.box, self.shape):
            start, stop, _ = s.indices(n)
            if start < lo or stop > hi:
                raise IndexError(f"rows {start}:{stop} are outside this rank's part {lo}:{hi}")
            local.append(slice(start - lo, stop - lo))
        return self.data[tuple(local)]


def _fsdp_over_tp(placements: Sequence[Any], i: int, mesh: Sequence[int]) -> bool:
    """Whether placement ``i`` is the strided shard FSDP2 puts over tensor parallelism:
    ``_StridedShard(d, split_factor=k)`` with later mesh dims sharding the same dim ``d``
    ``k`` ways. Each rank then holds one contiguous box, which torch's
    ``compute_local_shape_and_global_offset`` finds (checked on 2 x 2 meshes, uneven rows
    included); any other strided shard holds rows that are not one box."""
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.placement_types import _StridedShard

    placement = placements[i]
    if type(placement) is not _StridedShard:
        return False
    later = [mesh[j] for j in range(i + 1, len(placements))
             if type(placements[j]) is Shard and placements[j].dim == placement.dim]
    return bool(later) and math.prod(later) == placement.split_factor


def object_boxes(shape: tuple[int, ...], object_shape: tuple[int, ...]) -> list[Box]:
    """The box of every object of an array, C order."""
    counts = [max(1, -(-n // o)) for n, o in zip(shape, object_shape)]
    return [object_box(index, object_shape, shape) for index in np.ndindex(*counts)]


def holders(box: Box, held: Sequence[Box | None]) -> list[int]:
    """The ranks whose part contains all of ``box``."""
    return [rank for rank, part in enumerate(held) if part is not None
            and all(lo >= plo and hi <= phi for (lo, hi), (plo, phi) in zip(box, part))]


def assign(objects: Sequence[tuple[Any, int, Sequence[int]]], world: int) -> dict[Any, int]:
    """{object: writer rank} for objects given as (key, bytes, ranks holding it): largest
    first, each to the holder with the fewest bytes so far (ties: the lowest rank), so the
    bytes per rank come out balanced. ``ValueError`` for an object nobody holds."""
    load = [0] * world
    chosen: dict[Any, int] = {}
    for key, nbytes, ranks in sorted(objects, key=lambda o: (-o[1], str(o[0]))):
        if not ranks:
            raise ValueError(f"no rank holds all of {key}: the parts do not cover the array")
        rank = min(ranks, key=lambda r: (load[r], r))
        load[rank] += nbytes
        chosen[key] = rank
    return chosen

