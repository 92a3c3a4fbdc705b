"""The cost model: requests, bytes and seconds of reading a region of a laid-out array.

Pure arithmetic over a ``Layout``, mirroring how zarr reads (3.1 and later):

- an unsharded chunk is one GET of the whole object;
- a shard whose every inner chunk is needed is one GET of the whole shard;
- otherwise zarr GETs the shard index (a suffix range of ``16 * chunks + 4``
  bytes), then each needed inner chunk with its own ranged GET, after the
  index arrives (two round trips). zarr 3.2+ may merge neighbouring ranges,
  so for such reads the prediction is an upper bound on requests.

Stored bytes are estimated from the compression ratios measured on trained
weights (``RATIO``); other dtypes are assumed incompressible. Read
amplification compares decoded bytes (plus index bytes) with bytes asked for,
so it means the same with or without compression.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zstore.access import Pattern, Split
from zstore.chunking import INDEX_ENTRY
from zstore.layout import Layout
from zstore.profiles import BackendProfile

CRC = 4  # every chunk and shard index ends with a crc32c

# Stored / raw size on trained weights (MiniLM, design.md and benchmarks/): Blosc-zstd
# level 1 with shuffle and 1 MiB blocks, and plain zstd level 1.
RATIO: dict[tuple[str, str], float] = {
    ("blosc", "bfloat16"): 0.69, ("blosc", "float32"): 0.84, ("blosc", "float16"): 0.88,
    ("zstd", "bfloat16"): 0.78, ("zstd", "float32"): 0.92, ("zstd", "float16"): 0.93,
}
# Bytes per second per core, measured on this project's 2-core benchmark machine.
ENCODE = {"blosc": 400e6, "zstd": 300e6}
DECODE = {"blosc": 1000e6, "zstd": 800e6}


def stored_ratio(codec: str, dtype: np.dtype) -> float:
    return RATIO.get((codec, str(dtype)), 1.0)


def resolve_codec(codec: str, profile: BackendProfile, cores: int) -> str:
    """``auto`` means Blosc where the backend moves bytes slower than the cores compress them."""
    if codec != "auto":
        return codec
    return "blosc" if ENCODE["blosc"] * cores >= profile.aggregate_bandwidth else "none"


def codec_seconds(codec: str, nbytes: int, cores: int, *, encode: bool) -> float:
    rate = (ENCODE if encode else DECODE).get(codec)
    return nbytes / (rate * max(1, cores)) if rate else 0.0


@dataclass(frozen=True)
class Cost:
    """One read: requests, bytes on the wire, bytes asked for and decoded, estimated time."""

    requests: int
    bytes: int
    asked: int
    decoded: int
    seconds: float

    @property
    def amplification(self) -> float:
        """Bytes decoded (inner chunks plus shard indexes) per byte asked for."""
        return self.decoded / self.asked if self.asked else 1.0


Region = Sequence[tuple[int, int]]


def _spans(n: int, obj: int, chunk: int, lo: int, hi: int) -> list[tuple[int, int, bool]]:
    """Per object along one dim: (chunks it holds, chunks of it in [lo, hi), all of them?)."""
    spans = []
    could = obj // chunk
    for i in range(lo // obj, -(-hi // obj)):
        start, stop = i * obj, min((i + 1) * obj, n)
        first, last = max(lo, start), min(hi, stop)
        touched = (last - 1) // chunk - first // chunk + 1
        spans.append((-(-(stop - start) // chunk), touched, touched == could))
    return spans


def region_cost(shape: tuple[int, ...], dtype: np.dtype, layout: Layout, region: Region,
                profile: BackendProfile, ratio: float) -> Cost:
    """What reading ``region`` (a [start, stop) per dim) of the array costs.

    Objects are the product of per-dim spans, so every sum over them factors
    into a product of per-dim sums: linear in the objects along each dim.
    """
    asked = math.prod(hi - lo for lo, hi in region) * dtype.itemsize
    if asked == 0:
        return Cost(0, 0, 0, 0, 0.0)
    chunk_bytes = math.prod(layout.chunk_shape) * dtype.itemsize
    stored_chunk = round(chunk_bytes * ratio) + CRC
    per_dim = [_spans(n, o, c, lo, hi) for n, o, c, (lo, hi)
               in zip(shape, layout.object_shape, layout.chunk_shape, region)]
    objects = math.prod(len(spans) for spans in per_dim)
    touched = math.prod(sum(t for _, t, _ in spans) for spans in per_dim)
    if layout.shard_shape is None:
        return Cost(objects, objects * stored_chunk, asked, objects * chunk_bytes,
                    profile.seconds(objects, objects * stored_chunk))
    index = math.prod(o // c for o, c in zip(layout.object_shape, layout.chunk_shape))
    index = index * INDEX_ENTRY + CRC
    # Shards with every inner chunk needed are one GET of the whole shard ...
    whole = math.prod(sum(1 for *_, full in spans if full) for spans in per_dim)
    whole_chunks = math.prod(sum(h for h, _, full in spans if full) for spans in per_dim)
    whole_touched = math.prod(sum(t for _, t, full in spans if full) for spans in per_dim)
    # ... the others, an index GET and then one ranged GET per needed chunk.
    partial, partial_chunks = objects - whole, touched - whole_touched
    requests = whole + partial + partial_chunks
    nbytes = (whole_chunks + partial_chunks) * stored_chunk + objects * index
    seconds = profile.seconds(requests, nbytes, serial=2 if partial else 1)
    return Cost(requests, nbytes, asked, touched * chunk_bytes + objects * index, seconds)


def pattern_regions(shape: tuple[int, ...], pattern: Pattern) -> list[list[tuple[int, int]]]:
    """The regions one reader of ``pattern`` asks for: one, or one per rank for a split."""
    whole = [(0, n) for n in shape]
    if pattern == "rows" and shape:
        middle = shape[0] // 2
        return [[(middle, min(middle + 1, shape[0])), *whole[1:]]]
    if isinstance(pattern, Split):
        size = pattern.part_size(shape[pattern.dim])
        parts = []
        for rank in range(pattern.parts):
            lo, hi = rank * size, min((rank + 1) * size, shape[pattern.dim])
            if lo < hi:
                parts.append([*whole[:pattern.dim], (lo, hi), *whole[pattern.dim + 1:]])
        return parts or [whole]
    return [whole]


def pattern_cost(shape: tuple[int, ...], dtype: np.dtype, layout: Layout, pattern: Pattern,
                 profile: BackendProfile, ratio: float) -> Cost:
    """The cost for one reader of ``pattern``; for a split, the rank that fetches the most."""
    costs = [region_cost(shape, dtype, layout, r, profile, ratio)
             for r in pattern_regions(shape, pattern)]
    return max(costs, key=lambda c: (c.bytes, c.requests))
