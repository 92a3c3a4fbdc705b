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

A whole save or load also costs memory and CPU; ``load_memory``,
``save_memory`` and ``whole_seconds`` model them from what zstore and zarr
hold at once (see each for the model and the measurements behind it).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import zarr

from zstore._format.layout import Layout
from zstore._options import current
from zstore._plan.access import Pattern, Split
from zstore._plan.chunking import INDEX_ENTRY
from zstore._plan.profiles import BackendProfile

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


# ---- A whole save or load: memory and time -------------------------------------------

# What zstore runs at once is what zstore.Settings says when the plan is made, as a save or
# load with max_concurrency=None would: reads of at most ``load_concurrency`` arrays and
# ``read_budget`` decoded bytes (reader._gather; a larger array runs alone), writes of
# ``save_concurrency`` arrays; zarr moves up to ``async.concurrency`` objects of each array
# at once. The measurements below were made at the defaults (32 arrays, 64 MiB; 8 arrays).
# glibc's malloc returns a freed buffer to the system at once only when it was mmapped:
# buffers above its mmap threshold, which grows with every such free up to 32 MiB.
MMAP_CEILING = 32 << 20
# Writers in flight reach their peak (three copies of an object) at different moments;
# together they hold this share of the sum of their peaks (0.5-0.7 measured on trees of
# mixed sizes; a tree of equal large arrays reaches 1.0, see save_memory).
SAVE_OVERLAP = 0.6
# Blosc's per-thread block buffers while zarr compresses in its worker threads: a save of
# 200 arrays of 256 KiB takes 24 MiB with Blosc, 8 MiB without.
CODEC_SCRATCH = 16 << 20


@dataclass(frozen=True)
class Footprint:
    """What one array moves through memory in a full save or load."""

    nbytes: int  # decoded
    stored: int  # every object's stored bytes
    objects: int
    object_nbytes: int  # decoded bytes of one object (of the array, if it is smaller)
    codec: str

    @property
    def compressed(self) -> bool:
        return self.codec != "none"

    @property
    def in_flight(self) -> int:
        """Objects of this array zarr reads or writes at once."""
        return max(1, min(self.objects, int(zarr.config.get("async.concurrency"))))

    @property
    def stored_object(self) -> float:
        return self.stored / max(1, self.objects)


def _peak(arrays: Sequence[Footprint], slots: int, budget: int,
          held: Callable[[list[Footprint]], float]) -> float:
    """The most ``held`` of the arrays in flight reaches when they run in order, at most
    ``slots`` at once and ``budget`` decoded bytes together (one larger runs alone), each
    for a time proportional to its bytes (plus 128 KiB's worth, for its fixed costs)."""
    running: list[tuple[float, int, Footprint]] = []
    clock, used, peak, following = 0.0, 0, 0.0, 0
    while following < len(arrays) or running:
        while following < len(arrays) and len(running) < slots:
            a = arrays[following]
            if running and used + a.nbytes > budget:
                break
            heapq.heappush(running, (clock + a.nbytes + (128 << 10), following, a))
            used, following = used + a.nbytes, following + 1
        peak = max(peak, held([a for *_, a in running]))
        clock, _, done = heapq.heappop(running)
        used -= done.nbytes
    return peak


def load_memory(arrays: Sequence[Footprint], profile: BackendProfile) -> int:
    """Peak extra resident memory of a full ``load``: the arrays, plus what reads hold.

    The arrays in flight each hold, per object in flight, the bytes its GET returned.
    With compression, every chunk is decompressed in a worker thread and each of those
    arrays also holds its decoded objects (zarr's sharding codec decodes a shard into a
    buffer of its own before copying it into the output). Without it, decoding runs on
    the event loop without yielding: one object at a time, whose buffer stands in for the
    outputs of the arrays in flight, counted whole here but not yet written. A process
    that freed large buffers before (on ``memory://``, the save that made the checkpoint)
    has raised glibc's mmap threshold: GET buffers under ``MMAP_CEILING`` are then kept
    for reuse once freed, so they count twice; so do they where the client library
    copies a download (``profile.get_copies``: s3fs joins the chunks it read).

    Measured (peak RSS over the baseline in a fresh process, median of 3, 2-core machine; the
    34-array, 95.7 MiB tree of tests/test_plan_figures.py): local 146-162 MiB (predicted 159),
    with Blosc 204-208 (208); memory:// 213-221 (223), with Blosc 248-254 (257); moto S3 215-220
    (223), with Blosc 246-258 (257). Five other trees of 1-200 arrays and 50-200 MiB: within
    25%, but for one array of 200 MiB with Blosc (+33%: its four decoded shards do not all exist
    at once). Before this model, the plan said (the arrays plus the largest object per stream of
    the profile) 221 MiB locally and 111 MiB on memory:// for that tree.
    """
    def held(window: list[Footprint]) -> float:
        gets = (1 + profile.get_copies) * sum(a.in_flight * a.stored_object for a in window)
        kept = sum(a.in_flight * a.stored_object for a in window
                   if a.stored_object < MMAP_CEILING) if profile.in_process else 0
        decoded = sum(a.in_flight * a.object_nbytes for a in window if a.compressed)
        return gets + kept + decoded

    settings = current()
    return sum(a.nbytes for a in arrays) + round(
        _peak(arrays, settings.load_concurrency, settings.read_budget, held))


def save_memory(arrays: Sequence[Footprint], profile: BackendProfile) -> int:
    """Peak extra resident memory of a ``save`` of arrays already in memory.

    Each object in flight is, at its peak, three copies of its stored bytes: the encoded
    chunks, the shard zarr joins them into, and the ``bytes`` it hands to fsspec (a store
    in this process keeps that last one: two copies, plus every stored byte kept), and
    the client library's own (``profile.put_copies``: about four more in s3fs). With
    compression, add the codec's output buffers, allocated at the decoded size before they
    shrink to the compressed one. ``SAVE_OVERLAP`` of what the writers in flight hold at
    their peaks is held at once, plus Blosc's scratch.

    Measured (as for ``load_memory``, the tree already in memory): local 77 MiB (predicted 93),
    with Blosc 112-135 (118); memory:// 152-156 (158), with Blosc 157-178 (165); moto S3 208-220
    (217), with Blosc 192-202 (212); two other trees of mixed sizes (38 and 50 arrays) within
    16%. Known limit: where every writer in flight peaks at once, as with equal arrays of
    several MiB without compression, a save takes up to 1.8x this (20 arrays of 8 MiB: 201 MiB,
    predicted 115).
    """
    copies = (2 if profile.in_process else 3) + profile.put_copies

    def held(window: list[Footprint]) -> float:
        return sum(a.in_flight * (copies * a.stored_object
                                  + (a.object_nbytes if a.compressed else 0)) for a in window)

    kept = sum(a.stored for a in arrays) if profile.in_process else 0
    scratch = CODEC_SCRATCH if any(a.compressed for a in arrays) else 0
    slots = current().save_concurrency
    return kept + round(SAVE_OVERLAP * _peak(arrays, slots, 1 << 62, held)) + scratch


# zarr's pipeline beyond the codec (crc32c, copies into fresh memory, Python per array), on
# the 2-core reference machine: bytes of arrays per second, and seconds per array.
PIPELINE_RATE = {"save": 500e6, "load": 1000e6}
PER_ARRAY = 4e-4
# How ``zstore calibrate`` compares a machine with that one: the best of 5 runs of copying
# CPU_PROBE_BYTES into fresh memory and taking their crc32c (zarr's per-byte work on a load)
# took CPU_PROBE_SECONDS there; a machine that takes twice as long has ``cpu_speed`` 0.5.
CPU_PROBE_BYTES = 32 << 20
CPU_PROBE_SECONDS = 0.031
# Page faults on fresh memory, and whatever else runs on the cores, move a save or load on
# that machine by up to 3x either way of this estimate (a process whose allocator holds
# freed memory to reuse loads 96 MiB in 49 ms; a fresh one takes up to 376), so the time is
# a range: each of 48 medians of 3-5 runs (6 trees of 1-200 arrays and 50-200 MiB, local
# and memory://, with and without Blosc) fell inside it, and 141 of 144 first runs in a
# fresh process (the others up to 1.2x over its top: imports and thread pools starting).
SPREAD = 3.0


def whole_seconds(arrays: Sequence[Footprint], io: float, cores: int, *, save: bool,
                  cpu_speed: float = 1.0) -> tuple[float, float]:
    """(low, high) seconds of a whole save or load: the profile's I/O time ``io``, zarr's
    pipeline and the codec on ``cores``, all overlapping (low) or one after another (high).

    The CPU rates are this project's reference machine's (2 idle cores), divided by
    ``cpu_speed`` (the machine's speed relative to it, as ``zstore calibrate`` measures);
    on cores busy with other work the time falls outside the range.
    """
    rate = PIPELINE_RATE["save" if save else "load"]
    pipeline = sum(PER_ARRAY + a.nbytes / rate for a in arrays) / cpu_speed
    codec = sum(codec_seconds(a.codec, a.nbytes, cores, encode=save) for a in arrays) / cpu_speed
    return max(io, pipeline / SPREAD, codec / SPREAD), io + (pipeline + codec) * SPREAD
