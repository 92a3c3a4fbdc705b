"""Choosing one array's inner chunk and shard shapes from its access patterns.

Pure and deterministic: shape, dtype, patterns and a backend profile in, a
``Layout`` out. The rules, and why:

- Chunks of whole trailing dims, cut along the leading dims first ("rows
  first"): every chunk is contiguous in C order, and a row or a range of rows
  lies in one chunk.
- About 1 MiB per inner chunk (Blosc's block size, where it reaches its ratio);
  128 KiB where ``rows`` are gathered, so one row costs about one small read.
- ``split(dim, parts)``: the chunk extent along ``dim`` divides the part size,
  and so does the shard extent: each rank reads exactly its part, and a rank
  writing its part writes whole shards (no read-modify-write, ever).
- Shards hold a whole number of chunks along every dim and tile the array
  exactly (the chunk count along each dim is a multiple of the chunks per
  shard): zarr reads a shard it needs whole in one GET, where an edge shard
  with missing chunks would cost its index plus a GET per chunk.
- Shards aim at the profile's ``shard_target`` (tens of MiB on S3), grow to
  keep an array under ``MAX_OBJECTS`` objects (never past ``shard_max``), and
  for ``rows`` stay small enough that the shard index (16 bytes per chunk,
  read before any chunk) costs under ``INDEX_SHARE`` of a chunk.
- Arrays under ``TINY`` bytes, or that fit one chunk, are one unsharded object.

Known limit: exact tiling means a prime leading extent (say 1009 slabs of 1 MiB)
whose whole is past ``shard_max`` gets small shards, one per leading index or a few.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from zstore._format.layout import Layout
from zstore._plan.access import Pattern, Split
from zstore._plan.profiles import BackendProfile

KiB, MiB = 1 << 10, 1 << 20
CHUNK_FULL = 1 * MiB
CHUNK_ROWS = 128 * KiB
TINY = 64 * KiB
MAX_OBJECTS = 1000
INDEX_SHARE = 0.05
INDEX_ENTRY = 16  # bytes per chunk in a shard index (offset and length, uint64)
_CANDIDATES = 64  # chunk extents tried when looking for shards that tile the array


@functools.lru_cache(maxsize=4096)
def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _fit(want: int, extent: int, modulus: int | None, ceiling: int) -> int:
    """An extent near ``want`` for a dim of ``extent``; with a ``modulus``, one dividing it.

    Among divisors (of the modulus, or of the extent when free), the largest
    not above ``want`` wins unless under half of it; then the smallest above
    it, if not past ``ceiling``. A free dim otherwise gets balanced pieces
    (``ceil(extent / pieces)``), which pad the last one least; a constrained
    dim keeps the divisor below.
    """
    want = max(1, min(want, extent))
    divisors = _divisors(modulus or extent)
    below = max(d for d in divisors if d <= want)
    if 2 * below >= want:
        return below
    above = min((d for d in divisors if d >= want), default=below)
    if above <= ceiling:
        return above
    return below if modulus else -(-extent // -(-extent // want))


def _block(extent: Sequence[int], unit: int, target: int, ceilings: Sequence[int],
           moduli: Sequence[int | None]) -> list[int]:
    """A block of ``extent`` near ``target`` bytes (never past its dim's ceiling), rows first.

    Trailing dims are taken whole while they fit; the first dim that does not
    fit is cut, and the dims before it are 1 unless a divisor constraint made
    the cut smaller than wanted.
    """
    block = [1] * len(extent)
    for d in reversed(range(len(extent))):
        slab = math.prod(block[d + 1:]) * unit
        block[d] = _fit(target // slab, extent[d], moduli[d], max(1, ceilings[d] // slab))
    return block


def _alignment(shape: tuple[int, ...], splits: Sequence[Split]) -> list[int | None]:
    """Per dim, the number every chunk and shard extent must divide.

    That is the gcd of every part boundary (the part size and the extent), so
    the last, shorter part is whole chunks too, unless that gcd is far below
    the part size (a ragged last part such as 3 parts of 3n-1): then the part
    size, and the last chunk is padded.
    """
    moduli: list[int | None] = [None] * len(shape)
    for s in splits:
        part = s.part_size(shape[s.dim])
        boundary = math.gcd(part, shape[s.dim])
        size = boundary if boundary * 64 >= part else part
        current = moduli[s.dim]
        moduli[s.dim] = size if current is None else math.gcd(current, size)
    return moduli


def region_grid(shape: tuple[int, ...], boxes: Sequence[Sequence[tuple[int, int]] | None],
                itemsize: int) -> tuple[int | None, ...]:
    """Per dim, the number every object extent must divide so that no object straddles a
    boundary of these boxes (the parts the ranks of a multi-rank save hold, one per rank):
    the gcd of every boundary inside the array, None where no box is cut.

    A box that ``h`` ranks hold alike (replicated) is also cut in ``h`` pieces along its
    first dim that long, where each piece is at least ``CHUNK_FULL``: one rank writes each
    object, so a replicated tensor in one object would be written by one rank alone."""
    held = [tuple(box) for box in boxes if box is not None]
    cuts: list[set[int]] = [{e for box in held for e in box[d] if 0 < e < n}
                            for d, n in enumerate(shape)]
    for box, h in Counter(held).items():
        nbytes = math.prod(hi - lo for lo, hi in box) * itemsize
        dim = next((d for d, (lo, hi) in enumerate(box) if hi - lo >= h), None)
        if h > 1 and dim is not None and nbytes >= h * CHUNK_FULL:
            lo, hi = box[dim]
            piece = -(-(hi - lo) // h)
            cuts[dim] |= {e for e in range(lo + piece, hi, piece) if 0 < e < shape[dim]}
    return tuple(math.gcd(*c) if c else None for c in cuts)


def shard_bounds(nbytes: int, patterns: Sequence[Pattern], chunk_bytes: int,
                 profile: BackendProfile) -> tuple[int, int]:
    """(target, ceiling) bytes of one shard of this array."""
    target = min(max(profile.shard_target, nbytes // MAX_OBJECTS), profile.shard_max)
    ceiling = profile.shard_max
    if "rows" in patterns:
        ceiling = max(1, int(chunk_bytes * INDEX_SHARE / INDEX_ENTRY)) * chunk_bytes
    return max(min(target, ceiling), chunk_bytes), max(ceiling, chunk_bytes)


def _shards(shape: tuple[int, ...], chunk: list[int], itemsize: int,
            moduli: list[int | None], patterns: Sequence[Pattern],
            profile: BackendProfile) -> list[int]:
    """Chunks per shard along each dim, tiling the chunk grid exactly."""
    grid = [-(-n // c) for n, c in zip(shape, chunk)]
    chunk_bytes = math.prod(chunk) * itemsize
    target, ceiling = shard_bounds(math.prod(shape) * itemsize, patterns, chunk_bytes, profile)
    shard_moduli = [g if m is None else math.gcd(g, m // c)
                    for g, m, c in zip(grid, moduli, chunk)]
    return _block(grid, chunk_bytes, target, [ceiling] * len(grid), shard_moduli)


def _score(shape: tuple[int, ...], chunk: list[int], per_shard: list[int], itemsize: int,
           target: int, moduli: list[int | None]) -> float:
    """How far a candidate is from ideal (0): shard size off target, padding, object count.

    The best shard reachable is bounded by the array and, along split dims, by
    the part size; zarr stores edge chunks padded to the full chunk shape.
    """
    shard_bytes = math.prod(c * k for c, k in zip(chunk, per_shard)) * itemsize
    reachable = math.prod(n if m is None else m for n, m in zip(shape, moduli)) * itemsize
    padded = math.prod(-(-n // c) * c for n, c in zip(shape, chunk)) / math.prod(shape)
    objects = math.prod(-(-n // (c * k)) for n, c, k in zip(shape, chunk, per_shard))
    return (abs(math.log(shard_bytes / min(target, reachable))) + math.log(padded)
            + max(0.0, math.log(objects / MAX_OBJECTS)))


def _candidates(extent: tuple[int, ...], chunk: list[int], cut: int,
                moduli: list[int | None], itemsize: int, ceilings: list[int],
                floor: int) -> list[list[int]]:
    """Chunk shapes near ``chunk``, none under ``floor`` bytes: up to ``_CANDIDATES`` per
    varied dim, free dims only."""
    found = []
    if moduli[cut] is None:
        slab = math.prod(chunk[cut + 1:]) * itemsize
        low = max(1, chunk[cut] * 3 // 4, -(-floor // slab))
        high = max(low, min(extent[cut], 2 * chunk[cut], ceilings[cut] // slab))
        for c in range(low, high + 1, max(1, (high - low) // _CANDIDATES)):
            found.append([*chunk[:cut], c, *chunk[cut + 1:]])
    before = cut - 1
    if before >= 0 and moduli[before] is None and moduli[cut] is None:
        slab = math.prod(extent[cut:]) * itemsize
        most = min(extent[before], ceilings[before] // slab)
        for c in range(2, most + 1, max(1, (most - 2) // _CANDIDATES)):
            found.append([*chunk[:before], c, *extent[cut:]])
    return found


def choose_layout(shape: tuple[int, ...], dtype: np.dtype, patterns: Sequence[Pattern],
                  profile: BackendProfile, codec: str,
                  aligned: Sequence[int | None] | None = None) -> Layout:
    """The layout of one array; ``patterns`` hold ``Split``s with non-negative dims.
    ``aligned`` (per dim, or None) is a number every chunk and shard extent must divide:
    the writers' region boundaries of a multi-rank save, which no object may straddle."""
    itemsize = dtype.itemsize
    extent = tuple(max(1, n) for n in shape)
    nbytes = math.prod(shape) * itemsize
    given = list(aligned or [None] * len(shape))
    if len(shape) == 0 or (nbytes <= TINY and not any(given)):
        return Layout(extent, None, codec)
    moduli = [m if g is None else g if m is None else math.gcd(m, g) for m, g in
              zip(_alignment(extent, [p for p in patterns if isinstance(p, Split)]), given)]
    if nbytes <= TINY:  # one object per writer's box
        return Layout(tuple(n if m is None else m for n, m in zip(extent, moduli)), None, codec)
    chunk_target = CHUNK_ROWS if "rows" in patterns else CHUNK_FULL
    # A free dim's chunk stays within 4x its target; a split dim whose part size has no
    # divisor near it rather takes whole parts than chunks of a few bytes.
    ceilings = [4 * chunk_target if m is None else profile.shard_max for m in moduli]
    chunk = _block(extent, itemsize, chunk_target, ceilings, moduli)
    if all(c >= n for c, n in zip(chunk, extent)):
        return Layout(extent, None, codec)
    per_shard = _shards(extent, chunk, itemsize, moduli, patterns, profile)
    target, _ = shard_bounds(nbytes, patterns, math.prod(chunk) * itemsize, profile)
    # A prime chunk count along the cut dim leaves shards of one chunk or of the whole
    # array, and a chunk that does not divide the dim is stored padded; a slightly
    # different chunk often does better on both. Try a few, keep the best: other
    # extents of the cut dim, and whole cut dims with a few of the dim before.
    cut = max(d for d in range(len(chunk)) if chunk[d] < extent[d])  # dims after it are whole
    best = (_score(extent, chunk, per_shard, itemsize, target, moduli), chunk, per_shard)
    if best[0] > 0:
        floor = min(chunk_target // 4, math.prod(chunk) * itemsize)
        for candidate in _candidates(extent, chunk, cut, moduli, itemsize, ceilings, floor):
            k = _shards(extent, candidate, itemsize, moduli, patterns, profile)
            score = _score(extent, candidate, k, itemsize, target, moduli)
            if score < best[0] - 1e-9:
                best = (score, candidate, k)
    _, chunk, per_shard = best
    if all(k == 1 for k in per_shard):
        return Layout(tuple(chunk), None, codec)
    return Layout(tuple(chunk), tuple(c * k for c, k in zip(chunk, per_shard)), codec)
