"""Reading a box of an array stored in zstore's layouts, straight into the caller's memory.

For each object the box touches: where it needs every chunk, the whole object is read at
once (one GET; on local disk one ``preadv`` whose buffers are the destination's own memory,
so uncompressed chunks land in place with no copy at all); otherwise its index (remembered,
see ``index_cache``) and then each run of needed chunks that lie back to back, by range.
A client reads a whole shard larger than ``READ_PART`` the second way too, in parts of
that size, so that what a load holds besides its arrays stays within the read budget.
Every chunk's crc32c is checked, and decoding runs in worker threads (crc32c, Blosc and
zstd release the GIL), so the cores work in parallel. The plan's request counts
(``costs.region_cost``) describe these reads exactly.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import RangeByteRequest, Store, SuffixByteRequest
from zarr.buffer import default_buffer_prototype

from zstore._budget import ByteBudget
from zstore._format.crypto import ChunkAuthenticationError
from zstore._format.names import object_key
from zstore._format.shards import (
    ALIGN,
    CRC,
    EMPTY,
    Box,
    ObjectFormat,
    Placement,
    checksum,
    chunks_per_part,
)
from zstore._storage.accounting import record
from zstore._storage.backend import Backend
from zstore._storage.vectored import read_into
from zstore._tasks import gather_all
from zstore.errors import CorruptCheckpointError


def missing_object(url: str, key: str) -> CorruptCheckpointError:
    """A committed checkpoint's object that does not exist: every object of a committed save
    is written (all-zero ones too), so one that is absent was deleted after the commit."""
    return CorruptCheckpointError(
        f"object {key!r} of the committed checkpoint {url!r} is missing: it was deleted "
        "after the save committed; run `zstore verify` to list the damage", url=url, key=key)


async def read_box(fmt: ObjectFormat, store: Store, backend: Backend, url: str, path: str,
                   box: Box, dest: np.ndarray, budget: ByteBudget) -> None:
    """Fill ``dest`` (C-contiguous, of the box's extents) with ``box`` of the array at
    ``path``. A damaged chunk raises ``ValueError`` saying "checksum".

    What is in memory holds its decoded size of ``budget``: a whole object read in one GET,
    each piece of one read by ranges (a client reads a shard of more than ``READ_PART``
    bytes in parts, so a read holds at most about the budget however large the objects
    are), and nothing where a whole object is read from a file (straight into ``dest``, or
    chunk by chunk through one reused buffer).
    """
    limit = asyncio.Semaphore(max(1, int(zarr.config.get("async.concurrency"))))
    group = chunks_per_part(fmt.chunk_nbytes) if backend.read_parts and fmt.sharded else None

    async def one(index: tuple[int, ...]) -> None:
        placements, whole = fmt.placements(index, box, dest.shape)
        key = object_key(path, index)
        if whole and (group is None or len(placements) <= group):
            file = backend.local_file(key)
            held = 0 if file is not None else fmt.chunk_nbytes * fmt.chunk_count
            async with limit, budget.hold(held):
                await _read_whole(fmt, store, file, url, key, placements, dest)
        else:
            async with limit:
                await _read_chunks(fmt, store, key, placements, dest, budget, group)

    await gather_all(one(index) for index in fmt.objects_in(box))


async def _read_whole(fmt: ObjectFormat, store: Store, file: str | None, url: str, key: str,
                      placements: list[Placement], dest: np.ndarray) -> None:
    """A whole object: from its local ``file`` where it has one, else one GET."""
    if file is not None:
        started = time.perf_counter()
        try:
            size = await asyncio.to_thread(_read_file, fmt, file, placements, dest, key)
        except FileNotFoundError:
            raise missing_object(url, key) from None
        record("gets", size, (started, time.perf_counter()))
        return
    value = await store.get(key, default_buffer_prototype())
    if value is None:
        raise missing_object(url, key)
    data = value.as_numpy_array().view(np.uint8)
    if not fmt.sharded:
        await asyncio.to_thread(fmt.decode, data, placements[0], dest, key)
        return
    end = len(data) - fmt.index_nbytes
    table = fmt.parse_index(data[end:], key)
    chunks = []
    for placement in placements:
        entry = _entry(table, placement, end, key)
        chunks.append((placement, None if entry is None
                       else data[entry[0]:entry[0] + entry[1]]))
    await _decode_all(fmt, chunks, dest, key)


async def _read_chunks(fmt: ObjectFormat, store: Store, key: str,
                       placements: list[Placement], dest: np.ndarray, budget: ByteBudget,
                       group: int | None) -> None:
    """Part of a shard, or a whole one a client reads in parts: its index, then the needed
    chunks, one ranged GET per run of them that lie back to back in the object, but for
    the padding to their slots (zstore writes a shard's chunks in C order, so a row range
    of a shard, or one member of a stacked array, is one run), a run of more than ``group``
    chunks (if given) in pieces of ``group``. Each piece holds its decoded bytes of
    ``budget`` from its GET to its decoding."""
    prototype = default_buffer_prototype()
    raw = await store.get(key, prototype, SuffixByteRequest(fmt.index_nbytes))
    if raw is None:
        raise FileNotFoundError(key)  # the store of a committed checkpoint raises first
    table = fmt.parse_index(raw.as_numpy_array(), key)
    entries = [(p, _entry(table, p, None, key)) for p in placements]
    empty: list[tuple[Placement, Any]] = [(p, None) for p, e in entries if e is None]
    stored = sorted(((e[0], e[1], p) for p, e in entries if e is not None), key=lambda s: s[0])
    pieces: list[list[tuple[int, int, Placement]]] = []
    for entry in stored:
        last = pieces[-1][-1] if pieces else None
        if (last is not None and 0 <= entry[0] - (last[0] + last[1]) < ALIGN
                and (group is None or len(pieces[-1]) < group)):
            pieces[-1].append(entry)
        else:
            pieces.append([entry])

    async def piece(run: list[tuple[int, int, Placement]]) -> None:
        start, end = run[0][0], run[-1][0] + run[-1][1]
        async with budget.hold(fmt.chunk_nbytes * len(run)):
            value = await store.get(key, prototype, RangeByteRequest(start, end))
            if value is None or len(value) != end - start:
                raise ValueError(f"{key!r}: checksum mismatch (the shard is shorter than "
                                 "its index says)")
            data = value.as_numpy_array()
            await _decode_all(fmt, [(p, data[offset - start:offset - start + nbytes])
                                    for offset, nbytes, p in run], dest, key)

    await gather_all([*(piece(run) for run in pieces), _decode_all(fmt, empty, dest, key)])


def _entry(table: np.ndarray, placement: Placement, end: int | None, key: str
           ) -> tuple[int, int] | None:
    """(offset, nbytes) of a placement's chunk in its object, None for a chunk never
    written; ``ValueError`` where the index points past the chunks (``end``, if known)."""
    offset, nbytes = (int(v) for v in table[placement.index])
    if offset == EMPTY:
        return None
    if end is not None and offset + nbytes > end:
        raise ValueError(f"{key!r}: checksum mismatch (its index points past its chunks)")
    return offset, nbytes


def _decode(fmt: ObjectFormat, placement: Placement, encoded: Any, dest: np.ndarray,
            key: str) -> None:
    """Decode one chunk into place; a chunk never written (as zarr may leave one) is the
    fill value, zero, except in an encrypted array, where zstore writes every chunk inside
    the array: there an empty index entry is a forged one."""
    if encoded is None:
        if fmt.sealed is not None:
            raise ChunkAuthenticationError(key, placement.number)
        dest[placement.target] = 0
    else:
        fmt.decode(encoded, placement, dest, key)


async def _decode_all(fmt: ObjectFormat, chunks: Sequence[tuple[Placement, Any]],
                      dest: np.ndarray, key: str) -> None:
    """Decode each chunk into place, the chunks spread over worker threads."""
    def decode(placement: Placement, encoded: Any) -> None:
        _decode(fmt, placement, encoded, dest, key)

    if len(chunks) <= 1:
        if chunks:
            await asyncio.to_thread(decode, *chunks[0])
        return
    await gather_all(asyncio.to_thread(decode, p, e) for p, e in chunks)


def _read_file(fmt: ObjectFormat, file: str, placements: list[Placement], dest: np.ndarray,
               key: str) -> int:
    """Read a whole object from a local file into ``dest``; the bytes read.

    An object zstore wrote uncompressed is its chunks back to back in C order, then the
    index: one ``preadv`` then reads every chunk whose part is a contiguous run of ``dest``
    into that run (the rest into scratch), and the index read with it confirms the guess.
    Otherwise (compressed, or another writer's order) the index is read first, then each
    chunk into one reused buffer and decoded into place: the object's bytes are never all
    in memory at once.
    """
    fd = os.open(file, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == fmt.packed_size() and _read_packed(fmt, fd, placements, dest, key):
            return size
        if not fmt.sharded:
            data = np.empty(size, np.uint8)
            read_into(fd, [data], 0)
            fmt.decode(data, placements[0], dest, key)
            return size
        end = size - fmt.index_nbytes
        if end < 0:
            raise ValueError(f"{key!r}: checksum mismatch (shorter than its shard index)")
        index = np.empty(fmt.index_nbytes, np.uint8)
        read_into(fd, [index], end)
        table = fmt.parse_index(index, key)
        scratch = np.empty(0, np.uint8)
        for placement in placements:
            entry = _entry(table, placement, end, key)
            if entry is not None:
                offset, nbytes = entry
                if len(scratch) < nbytes:
                    scratch = np.empty(nbytes, np.uint8)
                read_into(fd, [scratch[:nbytes]], offset)
            _decode(fmt, placement, None if entry is None else scratch[:nbytes], dest, key)
    finally:
        os.close(fd)
    return size


def _read_packed(fmt: ObjectFormat, fd: int, placements: list[Placement], dest: np.ndarray,
                 key: str) -> bool:
    """The one-``preadv`` read of an uncompressed object in zstore's order; False (nothing
    decoded) where its index says the chunks lie elsewhere."""
    raw = dest.reshape(-1).view(np.uint8)
    ordered = sorted(placements, key=lambda p: p.index)
    buffers: list[Any] = []
    pieces: list[tuple[Placement, Any, Any, bytearray]] = []  # placement, body, spill, crc
    padding = bytearray(fmt.slot_nbytes - fmt.chunk_nbytes - CRC)  # read over, every slot
    for placement in ordered:
        crc = bytearray(CRC)
        if placement.flat is not None:
            start, stop = placement.flat
            body: Any = raw[start:stop]
            spill = np.empty(fmt.chunk_nbytes - (stop - start), np.uint8)
            buffers += [body, spill, crc] if len(spill) else [body, crc]
        else:
            body, spill = np.empty(fmt.chunk_nbytes, np.uint8), None
            buffers += [body, crc]
        buffers.append(padding)
        pieces.append((placement, body, spill, crc))
    index = bytearray(fmt.index_nbytes)
    if fmt.sharded:
        buffers.append(index)
    read_into(fd, buffers, 0)
    if fmt.sharded and not np.array_equal(fmt.parse_index(index, key), fmt.packed_index()):
        return False
    for placement, body, spill, crc in pieces:
        value = checksum(body)
        if spill is not None and len(spill):
            value = checksum(spill, value)
        if value != int.from_bytes(crc, "little"):
            raise ValueError(f"chunk {placement.index} of {key!r}: checksum mismatch")
        if placement.flat is None:
            dest[placement.target] = fmt.decoded(body)[placement.source]
    return True
