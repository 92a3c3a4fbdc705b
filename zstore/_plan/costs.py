"""The cost model: requests, bytes and seconds of reading a region of a laid-out array.

Pure arithmetic over a ``Layout``, mirroring how zstore's data path reads (``_read.shards``):

- an unsharded chunk is one GET of the whole object;
- a shard whose every inner chunk is needed is one GET of the whole shard;
- otherwise the shard index (a suffix range of ``16 * chunks + 4`` bytes),
  then one ranged GET per run of needed inner chunks that lie back to back,
  after the index arrives (two round trips);
- from a client (not a file of this machine, not a store in this process), a run of more
  inner chunks than ``READ_PART`` bytes hold is read in parts of that many, and so is a
  whole shard larger than that (its index first, as above).

Stored bytes are estimated from the compression ratios measured on trained
weights (``RATIO``); other dtypes are assumed incompressible. Read
amplification compares decoded bytes (plus index bytes) with bytes asked for,
so it means the same with or without compression.

A whole save or load also costs memory and CPU; ``load_memory``,
``save_memory`` and ``whole_seconds`` model them from what zstore's data path
holds at once (see each for the model and the measurements behind it).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import zarr

from zstore._format.layout import Layout
from zstore._format.shards import chunks_per_part, slot_nbytes
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


def _partial_runs(per_dim: list[list[tuple[int, int, bool]]], group: int | None) -> int:
    """Ranged GETs of the partly read objects: one per run of needed chunks that lie back
    to back (zstore writes a shard's chunks in C order, and stores none past the array's
    end), or per ``group`` chunks of a longer run. In an object, a run spans every dim
    after the last one whose existing chunks are not all needed, so its runs are the
    product of the needed chunks along the dims before it. Objects alike along every dim
    are counted once, times their number."""
    runs = 0
    for combo in itertools.product(*(Counter(spans).items() for spans in per_dim)):
        spans = [span for span, _ in combo]
        if all(full for *_, full in spans):
            continue
        cut = max((d for d, (held, touched, _) in enumerate(spans) if touched < held),
                  default=0)
        run = spans[cut][1] * math.prod(h for h, _, _ in spans[cut + 1:])
        pieces = -(-run // group) if group else 1
        runs += (math.prod(n for _, n in combo) * math.prod(t for _, t, _ in spans[:cut])
                 * pieces)
    return runs


def stored_nbytes(shape: tuple[int, ...], dtype: np.dtype, layout: Layout, ratio: float
                  ) -> int:
    """The bytes the array's objects hold: every chunk that reaches into the array (an edge
    shard's slots past its end stay empty), in its slot, and each shard's index."""
    chunk_bytes = math.prod(layout.chunk_shape) * dtype.itemsize
    chunks = math.prod(-(-n // c) for n, c in zip(shape, layout.chunk_shape))
    if layout.shard_shape is None:
        return chunks * (round(chunk_bytes * ratio) + CRC)
    objects = math.prod(-(-n // o) for n, o in zip(shape, layout.object_shape))
    count = math.prod(o // c for o, c in zip(layout.object_shape, layout.chunk_shape))
    stored_chunk = (slot_nbytes(chunk_bytes) if layout.codec == "none"
                    else round(chunk_bytes * ratio) + CRC)
    return chunks * stored_chunk + objects * (count * INDEX_ENTRY + CRC)


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
    aligned = layout.codec == "none" and layout.shard_shape is not None
    stored_chunk = slot_nbytes(chunk_bytes) if aligned else round(chunk_bytes * ratio) + CRC
    per_dim = [_spans(n, o, c, lo, hi) for n, o, c, (lo, hi)
               in zip(shape, layout.object_shape, layout.chunk_shape, region)]
    objects = math.prod(len(spans) for spans in per_dim)
    touched = math.prod(sum(t for _, t, _ in spans) for spans in per_dim)
    if layout.shard_shape is None:
        return Cost(objects, objects * stored_chunk, asked, objects * chunk_bytes,
                    profile.seconds(objects, objects * stored_chunk))
    count = math.prod(o // c for o, c in zip(layout.object_shape, layout.chunk_shape))
    index = count * INDEX_ENTRY + CRC
    group = None if profile.in_place or profile.in_process else chunks_per_part(chunk_bytes)
    # Shards with every inner chunk needed are one GET of the whole shard (from a client,
    # one larger than a part is its index and a GET per part) ...
    whole = math.prod(sum(1 for *_, full in spans if full) for spans in per_dim)
    whole_chunks = math.prod(sum(h for h, _, full in spans if full) for spans in per_dim)
    whole_touched = math.prod(sum(t for _, t, full in spans if full) for spans in per_dim)
    parted = whole if group is not None and count > group else 0
    # ... the others, an index GET and then one ranged GET per run of needed chunks.
    partial, partial_chunks = objects - whole, touched - whole_touched
    ranged = parted * -(-count // (group or 1)) + _partial_runs(per_dim, group)
    requests = whole + partial + ranged
    # A ranged GET ends with its last chunk's crc32c, not the padding of its slot.
    padding = stored_chunk - chunk_bytes - CRC if aligned else 0
    nbytes = ((whole_chunks + partial_chunks) * stored_chunk + objects * index
              - ranged * padding)
    seconds = profile.seconds(requests, nbytes, serial=2 if partial or parted else 1)
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
                 profile: BackendProfile, ratio: float, stacked: bool = False) -> Cost:
    """The cost for one reader of ``pattern``; for a split, the rank that fetches the most.
    In a ``stacked`` array (members along dim 0) every pattern but ``full`` reads one
    member, the first (all cost alike)."""
    if stacked and pattern != "full":
        regions = [[(0, 1), *r] for r in pattern_regions(shape[1:], pattern)]
    else:
        regions = pattern_regions(shape, pattern)
    costs = [region_cost(shape, dtype, layout, r, profile, ratio) for r in regions]
    return max(costs, key=lambda c: (c.bytes, c.requests))


# ---- A whole save or load: memory and time -------------------------------------------

# What zstore runs at once is what zstore.Settings says when the plan is made, as a save or
# load with max_concurrency=None would: ``load_concurrency`` arrays read at once and
# ``save_concurrency`` written, up to ``async.concurrency`` objects of each (zarr's setting),
# the objects' decoded bytes in flight within ``read_budget`` or ``write_budget`` (one
# larger object runs alone). The measurements below were made at the defaults.

# Bytes a load holds per byte of objects in its read window, where objects come from a
# client (not read from a file into place): the GET bodies (fitted to the loads measured in
# load_memory: 1.2), and for each copy the client makes of a download (s3fs joins what it
# read) 0.2 more: that copy lives briefly.
LOAD_HELD = 1.2
COPY_HELD = 0.2
# Blosc's and zstd's buffers in the coding threads' malloc arenas (glibc gives each thread
# an arena of its own and keeps what was freed there; an encode allocates each chunk's
# decoded size before it shrinks): 48-54 MiB measured on a load of 34 arrays with Blosc,
# locally, where nothing else is held, and 45 on a save.
CODEC_SCRATCH = 48 << 20
# What a save holds however it writes: shard indexes, metadata documents, Python objects:
# 0.77-0.85 MiB measured (test_plan_figures, a local uncompressed save of 34 arrays, where
# nothing else is held; 1 MiB sat at the edge of its 25% once the figure fell to 0.8).
SAVE_BASE = 800 << 10
# Writers in flight reach their peak at different moments; together they hold this share of
# the sum of their peaks (0.5-0.7 measured on trees of mixed sizes).
SAVE_OVERLAP = 0.6


@dataclass(frozen=True)
class Footprint:
    """What one array moves through memory in a full save or load."""

    nbytes: int  # decoded
    stored: int  # every object's stored bytes
    objects: int
    object_nbytes: int  # decoded bytes of one object (of the array, if it is smaller)
    codec: str
    part_nbytes: int  # decoded bytes of one object's read where a client reads it in parts

    @property
    def compressed(self) -> bool:
        return self.codec != "none"

    @property
    def in_flight(self) -> int:
        """Objects of this array read or written at once."""
        return max(1, min(self.objects, int(zarr.config.get("async.concurrency"))))

    @property
    def stored_object(self) -> float:
        return self.stored / max(1, self.objects)


def _window(arrays: Sequence[Footprint], budget: int, parted: bool) -> float:
    """Stored bytes of the reads in flight when as many are as ``budget`` (in decoded
    bytes) admits: the largest first, at least one, at most every object (or, ``parted``,
    every part of an object a client reads in parts)."""
    reads = []
    for a in arrays:
        size = a.part_nbytes if parted else a.object_nbytes
        parts = -(-a.object_nbytes // size) if size else 1
        reads.append((size, a.stored_object / parts, a.objects * parts))
    decoded, stored = 0, 0.0
    for size, kept, count in sorted(reads, reverse=True):
        fits = count if size == 0 else min(count, max(0, budget - decoded) // size)
        taken = max(fits, 1 if decoded == 0 else 0)  # one larger than the budget runs alone
        decoded, stored = decoded + taken * size, stored + taken * kept
        if taken < count:
            break
    return stored


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

    zstore decodes every object straight into the arrays it returns (``_read.shards``).
    Besides them a load holds the objects in its read window (``Settings.read_budget`` of
    decoded bytes; ``LOAD_HELD`` per stored byte, ``COPY_HELD`` more per copy the client
    makes; a client reads a large shard in parts, each within the window), none where they
    are files read into place (``profile.in_place``: local disk,
    compressed objects too, read chunk by chunk into one buffer); and with a codec, its
    threads' scratch, which a store in this process (``memory://``, read in those same
    threads) shares with its reads.

    Measured (peak RSS over the baseline in a fresh process, median of 3, 2-core machine; the
    34-array, 95.7 MiB tree of tests/test_plan_figures.py, stacked into 11 arrays; predicted
    in brackets): local 97.6 MiB (95.7), with Blosc 152.5 (143.7); memory:// 175.6 (172.0),
    with Blosc 153.1 (154.1); moto S3 187.1 (184.7), with Blosc 204.8 (211.8). Before zstore's
    data path (zarr's pipeline, which decodes each shard into a buffer of its own): 146-162
    MiB locally, 215-258 on moto.
    """
    held = 0.0 if profile.in_place else (
        (LOAD_HELD + COPY_HELD * profile.get_copies)
        * _window(arrays, current().read_budget, parted=not profile.in_process))
    scratch = CODEC_SCRATCH if any(a.compressed for a in arrays) else 0
    if profile.in_process:  # its reads run in the decoding threads: their arenas are shared
        return sum(a.nbytes for a in arrays) + round(max(held, scratch))
    return sum(a.nbytes for a in arrays) + round(held) + scratch


def save_memory(arrays: Sequence[Footprint], profile: BackendProfile) -> int:
    """Peak extra resident memory of a ``save`` of arrays already in memory.

    zstore writes each object from buffers it assembles (``_write.shards``): uncompressed
    chunks are views of the arrays, compressed ones their codec's output. A file is written
    from those buffers (``writev``); a client is handed them joined into one body, which it
    may copy again (``profile.put_copies``), and a store in this process keeps a copy of
    everything (``profile.in_process``). Writers hold their objects in flight within
    ``Settings.write_budget``; ``SAVE_OVERLAP`` of what they hold at their peaks is held at
    once.

    Measured (as for ``load_memory``, the tree already in memory; predicted in brackets):
    local 1.0 MiB (1.0), with Blosc 87.4 (91.5); memory:// 135.8 (154.0), with Blosc 209.8
    (204.8); moto S3 321.6 (287.9), with Blosc 331.5 (303.9). Before zstore's data path
    (zarr's, three copies of each object in flight): local 77 MiB, memory:// 152-156, moto
    S3 208-220.
    """
    def copies(a: Footprint) -> int:
        if profile.in_place:
            return 1 if a.compressed else 0
        return int(a.compressed) + 1 + profile.put_copies

    def held(window: list[Footprint]) -> float:
        return sum(a.in_flight * a.stored_object * copies(a) for a in window)

    kept = sum(a.stored for a in arrays) if profile.in_process else 0
    peak = _peak(arrays, current().save_concurrency, 1 << 62, held)
    bound = current().write_budget * max(map(copies, arrays), default=0)
    scratch = CODEC_SCRATCH if any(a.compressed for a in arrays) else 0
    return SAVE_BASE + kept + round(min(SAVE_OVERLAP * peak, bound)) + scratch


# zstore's data path beyond the codec (crc32c, copies between the page cache or a client's
# buffers and the arrays, Python per array and per object), on the 2-core reference
# machine: bytes of arrays per second, and seconds per array (its metadata document, its
# task; a local save writes and renames one small file per array).
PIPELINE_RATE = {"save": 2e9, "load": 4e9}
PER_ARRAY = 4e-4
# How ``zstore calibrate`` compares a machine with that one: the best of 5 runs of copying
# CPU_PROBE_BYTES into fresh memory and taking their crc32c (the data path's per-byte work
# on a load) took CPU_PROBE_SECONDS there; a machine that takes twice as long has
# ``cpu_speed`` 0.5.
CPU_PROBE_BYTES = 32 << 20
CPU_PROBE_SECONDS = 0.016
# Page faults on fresh memory, the page cache's write-back (a local save of 96 MiB took
# 0.07 s, then 0.11 and 0.18 as dirty pages piled up), and whatever else runs on the cores
# move a save or load by up to 3x either way of this estimate, so the time is a range.
SPREAD = 3.0


def whole_seconds(arrays: Sequence[Footprint], io: float, cores: int, *, save: bool,
                  cpu_speed: float = 1.0) -> tuple[float, float]:
    """(low, high) seconds of a whole save or load: the profile's I/O time ``io``, the data
    path and the codec on ``cores``, all overlapping and ``SPREAD`` times faster (low), or
    one after another and ``SPREAD`` times slower (high).

    The CPU rates are this project's reference machine's (2 idle cores), divided by
    ``cpu_speed`` (the machine's speed relative to it, as ``zstore calibrate`` measures);
    on cores busy with other work the time falls outside the range.
    """
    rate = PIPELINE_RATE["save" if save else "load"]
    pipeline = sum(PER_ARRAY + a.nbytes / rate for a in arrays) / cpu_speed
    codec = sum(codec_seconds(a.codec, a.nbytes, cores, encode=save) for a in arrays) / cpu_speed
    return max(io, pipeline, codec) / SPREAD, (io + pipeline + codec) * SPREAD
