"""The bytes of one stored object, as zstore lays them out: encoding and decoding chunks.

zstore's layouts (``layout.codecs_json``) store each array as objects on a regular grid.
A sharded object is its inner chunks, each encoded (``bytes``, optionally Blosc or zstd)
and followed by its crc32c, then the shard index (an ``(offset, nbytes)`` uint64 pair per
chunk, little-endian, in C order of the chunk grid) and the index's crc32c: Zarr v3's
``sharding_indexed`` codec with ``index_location: end``. An uncompressed chunk in a shard
takes a slot of a multiple of ``ALIGN`` bytes (body, crc32c, zero padding; the index says
where each chunk is and how long, as any Zarr reader needs), so that every body starts
aligned in the file: copies between the page cache and the arrays' memory ran 1.3-1.5x
faster aligned than 4 bytes off (measured, writes and reads of 8 MiB objects of 1 MiB
chunks). An unsharded object is one chunk so encoded. Edge chunks are stored at the full
chunk shape, the part past the array's end filled with the fill value (zero). An encrypted
array's chunks are sealed after compression and before their crc32c (``crypto``): sealed
chunks take no aligned slots, since they are never read in place.

zarr-python's codec pipeline decodes such objects one chunk at a time through several
buffers; ``ObjectFormat`` reads and writes them directly, and ``object_format`` says for
which documents it can (zstore's presets; anything else goes to zarr, which reads every
valid Zarr v3 array). CPU work only, no I/O: the callers move the bytes
(``zstore._read.shards``, ``zstore._write.shards``).

The crc32c is the ``crc32c`` package's (about 11 GB/s a core here, and it releases the
GIL, so chunks are checked in parallel threads); zarr's codec uses google-crc32c (6 GB/s,
holding the GIL). Both compute the same Castagnoli checksum.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import crc32c
import numpy as np
from numcodecs import Blosc, Zstd

from zstore._format.crypto import CODEC as SEALED
from zstore._format.crypto import Cipher
from zstore._format.dtypes import dtype_from_name

CRC = 4  # bytes of the crc32c after every chunk and after the shard index
ALIGN = 64  # an uncompressed chunk in a shard starts at a multiple of this (a cache line)
EMPTY = 2**64 - 1  # an index entry of (EMPTY, EMPTY): the chunk was not written (fill value)
_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}
# Decoded bytes of one ranged GET where a client reads a large object in parts: what the
# read budget holds per request, so that a 128 MiB shard is never all in memory at once
# (8 MiB parts keep a request's fixed cost under 1% on S3, as the raw baseline's do).
READ_PART = 8 << 20

Box = tuple[tuple[int, int], ...]  # [start, stop) per dim


def checksum(data: Any, value: int = 0) -> int:
    """The crc32c of ``data`` (any buffer), continuing from ``value``."""
    return int(crc32c.crc32c(data, value))


def chunks_per_part(chunk_nbytes: int) -> int:
    """Inner chunks per ranged GET of an object read in parts: ``READ_PART`` bytes' worth,
    at least one."""
    return max(1, READ_PART // max(1, chunk_nbytes))


def crc_bytes(data: Any) -> bytes:
    return checksum(data).to_bytes(CRC, "little")


def slot_nbytes(chunk_nbytes: int) -> int:
    """The bytes an uncompressed chunk of ``chunk_nbytes`` takes in a shard: its body, its
    crc32c and zero padding up to a multiple of ``ALIGN``."""
    return -(-(chunk_nbytes + CRC) // ALIGN) * ALIGN


def object_box(index: Sequence[int], object_shape: Sequence[int], shape: Sequence[int]
               ) -> Box:
    """The box of the object at grid ``index`` (the last ones cut at the array's end)."""
    return tuple((i * o, min((i + 1) * o, n)) for i, o, n in zip(index, object_shape, shape))


@dataclass(frozen=True)
class Placement:
    """One inner chunk a read needs: where it is in its object and where its part goes.

    ``source`` is the part of the chunk (in the chunk's coordinates) that lands at
    ``target`` (in the destination's). ``flat`` is set when that part is a prefix of the
    chunk's bytes that lands contiguously in the destination: (start, stop) in the
    destination's bytes, so the chunk can be read or decoded straight into place.
    """

    index: int  # the chunk's position in the object's chunk grid, C order
    source: tuple[slice, ...]
    target: tuple[slice, ...]
    flat: tuple[int, int] | None
    number: int = 0  # its position in the array's chunk grid, C order (what a seal binds)


@dataclass(frozen=True)
class ObjectFormat:
    """How one array's objects are laid out, for the arrays zstore's data path reads and
    writes itself."""

    shape: tuple[int, ...]
    dtype: np.dtype
    object_shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]
    sharded: bool
    compressor: Blosc | Zstd | None
    sealed: tuple[str, str] | None = None  # encrypted: (array path, key id)
    cipher: Cipher | None = None  # its key, where the caller has it

    @property
    def locked(self) -> bool:
        """Encrypted, and the key was not given: nothing can be read or written."""
        return self.sealed is not None and self.cipher is None

    def chunk_number(self, origin: Sequence[int]) -> int:
        """The C-order position in the array's chunk grid of the chunk starting at
        ``origin`` (array coordinates)."""
        number = 0
        for g, c, n in zip(origin, self.chunk_shape, self.shape):
            number = number * -(-n // c) + g // c
        return number

    @property
    def chunks_per_object(self) -> tuple[int, ...]:
        return tuple(o // c for o, c in zip(self.object_shape, self.chunk_shape))

    @property
    def chunk_count(self) -> int:
        return math.prod(self.chunks_per_object)

    @property
    def chunk_nbytes(self) -> int:
        return math.prod(self.chunk_shape) * self.dtype.itemsize

    @property
    def index_nbytes(self) -> int:
        return 16 * self.chunk_count + CRC if self.sharded else 0

    @property
    def slot_nbytes(self) -> int:
        """Bytes from one chunk's start to the next one's in an uncompressed object as
        zstore writes it (a shard's chunks are padded to ``ALIGN``)."""
        return slot_nbytes(self.chunk_nbytes) if self.sharded else self.chunk_nbytes + CRC

    def packed_size(self) -> int | None:
        """The size of an object whose chunks are all uncompressed and in C order (as
        zstore writes them), or None with a compressor. (An edge object whose chunk slots
        past the array's end are empty is smaller, and read from its index.)"""
        if self.compressor is not None or self.sealed is not None:
            return None
        return self.chunk_count * self.slot_nbytes + self.index_nbytes

    def objects_in(self, box: Box) -> Iterator[tuple[int, ...]]:
        """Grid indexes of the objects ``box`` touches."""
        ranges = [range(lo // o, -(-hi // o)) for (lo, hi), o in zip(box, self.object_shape)]
        return itertools.product(*ranges)

    def placements(self, index: Sequence[int], box: Box, dest_shape: tuple[int, ...]
                   ) -> tuple[list[Placement], bool]:
        """The chunks of object ``index`` that ``box`` needs, each placed in a destination
        of ``dest_shape`` holding ``box``; and whether that is every chunk of the object
        (then it is read whole, in one request)."""
        per_dim: list[list[tuple[int, int, int]]] = []  # (local chunk, lo, hi) in array coords
        for i, o, c, n, (lo, hi) in zip(index, self.object_shape, self.chunk_shape,
                                        self.shape, box):
            start = i * o
            first, last = max(lo, start), min(hi, start + o, n)
            chunks = range((first - start) // c, (last - 1 - start) // c + 1)
            per_dim.append([(k, max(first, start + k * c), min(last, start + (k + 1) * c))
                            for k in chunks])
        whole = all(len(d) == k for d, k in zip(per_dim, self.chunks_per_object))
        strides = [math.prod(self.chunks_per_object[d + 1:]) for d in range(len(per_dim))]
        itemsize = self.dtype.itemsize
        found = []
        for combo in itertools.product(*per_dim):
            local = sum(k * s for (k, _, _), s in zip(combo, strides))
            origin = [i * o + k * c for i, o, c, (k, _, _)
                      in zip(index, self.object_shape, self.chunk_shape, combo)]
            source = tuple(slice(lo - g, hi - g) for g, (_, lo, hi) in zip(origin, combo))
            target = tuple(slice(lo - b, hi - b) for (b, _), (_, lo, hi) in zip(box, combo))
            flat = None
            if _is_prefix(source, self.chunk_shape) and _is_prefix_block(target, dest_shape):
                start = _flat_offset(target, dest_shape) * itemsize
                flat = (start, start + math.prod(s.stop - s.start for s in source) * itemsize)
            found.append(Placement(local, source, target, flat, self.chunk_number(origin)))
        return found, whole

    # ---- decoding ------------------------------------------------------------------

    def parse_index(self, raw: Any, key: str) -> np.ndarray:
        """The shard index (chunks x 2 uint64, C order) from its stored bytes, crc checked."""
        data = memoryview(raw).cast("B")
        if len(data) != self.index_nbytes or checksum(data[:-CRC]) != int.from_bytes(
                data[-CRC:], "little"):
            raise ValueError(f"shard index of {key!r}: checksum mismatch or wrong size")
        return np.frombuffer(data[:-CRC], dtype="<u8").reshape(self.chunk_count, 2)

    def packed_index(self) -> np.ndarray:
        """The index of an object zstore wrote uncompressed: chunks in C order, one slot
        each."""
        offsets = np.arange(self.chunk_count, dtype="<u8") * self.slot_nbytes
        return np.stack([offsets, np.full_like(offsets, self.chunk_nbytes + CRC)], axis=1)

    def decode(self, encoded: Any, placement: Placement, dest: np.ndarray, key: str) -> None:
        """Check one chunk's crc32c (and seal) and decode its needed part into ``dest``."""
        data = memoryview(encoded).cast("B")
        body: Any = data[:-CRC]
        if len(data) < CRC or checksum(body) != int.from_bytes(data[-CRC:], "little"):
            raise ValueError(f"chunk {placement.index} of {key!r}: checksum mismatch")
        flat = placement.flat  # straight into place where the bytes allow
        whole = flat is not None and flat[1] - flat[0] == self.chunk_nbytes
        if self.sealed is not None:
            assert self.cipher is not None, "a locked format is refused before reading"
            if whole and flat is not None and self.compressor is None:  # decrypted in place
                self.cipher.open(body, self.sealed[0], placement.number, key,
                                 dest.reshape(-1).view(np.uint8)[flat[0]:flat[1]])
                return
            body = self.cipher.open(body, self.sealed[0], placement.number, key)
        if flat is not None:
            start, stop = flat
            raw = dest.reshape(-1).view(np.uint8)
            if self.compressor is None and len(body) == self.chunk_nbytes:
                raw[start:stop] = np.frombuffer(body, np.uint8, stop - start)
                return
            if self.compressor is not None and whole:
                self.compressor.decode(body, out=raw[start:stop])
                return
        dest[placement.target] = self.decoded(body)[placement.source]

    def decoded(self, body: Any) -> np.ndarray:
        """A whole chunk, decoded (uncompressed bodies are viewed, not copied)."""
        if self.compressor is None:
            flat = np.frombuffer(body, np.uint8)
        else:
            flat = np.empty(self.chunk_nbytes, np.uint8)
            self.compressor.decode(body, out=flat)
        if flat.size != self.chunk_nbytes:
            raise ValueError(f"a chunk decoded to {flat.size} bytes, not {self.chunk_nbytes}")
        return flat.view(self.dtype).reshape(self.chunk_shape)

    # ---- encoding ------------------------------------------------------------------

    def chunk_origins(self, index: Sequence[int]) -> list[tuple[int, ...]]:
        """The array coordinates where each chunk of object ``index`` starts, C order."""
        return [tuple(i * o + k * c for i, o, c, k
                      in zip(index, self.object_shape, self.chunk_shape, local))
                for local in itertools.product(*(range(k) for k in self.chunks_per_object))]

    def encode_chunk(self, array: np.ndarray, origin: Sequence[int]) -> Any:
        """The chunk of ``array`` at ``origin``, encoded, without its crc32c; None for a
        chunk wholly past the array's end (a shard at the edge: not stored). Uncompressed,
        a chunk that is contiguous in ``array`` is a view of its memory, not a copy."""
        if any(g >= n for g, n in zip(origin, self.shape)):
            return None
        region = tuple(slice(g, min(g + c, n))
                       for g, c, n in zip(origin, self.chunk_shape, self.shape))
        part = array[region]
        if part.shape != self.chunk_shape:  # an edge chunk: stored at full size, zero-filled
            padded = np.zeros(self.chunk_shape, self.dtype)
            padded[tuple(slice(0, s) for s in part.shape)] = part
            part = padded
        raw = np.ascontiguousarray(part).reshape(-1).view(np.uint8)
        body = raw.data if self.compressor is None else self.compressor.encode(raw)
        if self.sealed is None:
            return body
        assert self.cipher is not None, "a locked format is refused before writing"
        return self.cipher.seal(body, self.sealed[0], self.chunk_number(origin))

    def assemble(self, bodies: Sequence[Any]) -> list[Any]:
        """An object's buffers, to be written back to back: each chunk body (C order) and
        its crc32c (uncompressed in a shard: then padding to its slot), then (sharded) the
        index and its crc32c (None bodies: empty entries)."""
        parts: list[Any] = []
        entries = []
        offset = 0
        aligned = self.sharded and self.compressor is None and self.sealed is None
        for body in bodies:
            if body is None:
                entries.append((EMPTY, EMPTY))
                continue
            size = len(body) + CRC
            parts += [body, crc_bytes(body)]
            entries.append((offset, size))
            step = slot_nbytes(len(body)) if aligned else size
            if step > size:
                parts.append(bytes(step - size))
            offset += step
        if self.sharded:
            table = np.asarray(entries, dtype="<u8").tobytes()
            parts += [table, crc_bytes(table)]
        return parts


def object_format(document: dict[str, Any], cipher: Cipher | None = None
                  ) -> ObjectFormat | None:
    """The ``ObjectFormat`` of an array's ``zarr.json``, or None where zstore's data path
    does not read and write it itself (then zarr does): another codec chain or chunk key
    encoding, a non-zero fill value, a shard index not at the end, a big-endian host. An
    encrypted array's format holds ``cipher`` where it is the array's key (else it is
    ``locked``)."""
    try:
        return _object_format(document, cipher)
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def _object_format(document: dict[str, Any], cipher: Cipher | None) -> ObjectFormat | None:
    keys = document.get("chunk_key_encoding", {})
    if (sys.byteorder != "little" or keys.get("name") != "default"
            or keys.get("configuration", {}).get("separator", "/") != "/"
            or document.get("fill_value") not in (0, False, [0.0, 0.0], 0.0)
            or document["chunk_grid"]["name"] != "regular"):
        return None
    dtype = dtype_from_name(document["data_type"])
    shape = tuple(int(n) for n in document["shape"])
    grid = tuple(int(n) for n in document["chunk_grid"]["configuration"]["chunk_shape"])
    codecs = document["codecs"]
    sharded = len(codecs) == 1 and codecs[0]["name"] == "sharding_indexed"
    chunk = grid
    if sharded:
        config = codecs[0]["configuration"]
        if (config.get("index_location", "end") != "end"
                or not _plain_index(config.get("index_codecs", []))):
            return None
        chunk, codecs = tuple(int(n) for n in config["chunk_shape"]), config["codecs"]
        if len(chunk) != len(grid) or any(c <= 0 or o % c for o, c in zip(grid, chunk)):
            return None
    if not shape or len(grid) != len(shape) or any(n <= 0 for n in grid):
        return None
    sealed = None
    if len(codecs) >= 3 and codecs[-2]["name"] == SEALED:  # sealed just before the crc32c
        config = codecs[-2]["configuration"]
        sealed = (str(config["path"]), str(config["key_id"]))
        codecs = [*codecs[:-2], codecs[-1]]
    compressor = _chunk_codecs(codecs, dtype)
    if compressor is False:
        return None
    return ObjectFormat(shape, dtype, grid, chunk, sharded,
                        compressor if compressor is not True else None, sealed,
                        cipher if sealed is not None and cipher is not None
                        and cipher.key_id == sealed[1] else None)


def _plain_index(codecs: list[dict[str, Any]]) -> bool:
    names = [c["name"] for c in codecs]
    endian = codecs[0].get("configuration", {}).get("endian", "little") if codecs else None
    return names == ["bytes", "crc32c"] and endian == "little"


def _chunk_codecs(codecs: list[dict[str, Any]], dtype: np.dtype) -> Blosc | Zstd | bool:
    """The compressor of ``bytes [, blosc | zstd], crc32c`` (True: none); False for any
    other chain."""
    names = [c["name"] for c in codecs]
    if names[:1] != ["bytes"] or names[-1:] != ["crc32c"] or len(names) > 3:
        return False
    endian = codecs[0].get("configuration", {}).get("endian", "little")
    if dtype.itemsize > 1 and endian != "little":
        return False
    if len(names) == 2:
        return True
    name, config = names[1], codecs[1].get("configuration", {})
    if name == "blosc":
        return Blosc(cname=config["cname"], clevel=int(config["clevel"]),
                     shuffle=_SHUFFLE[config["shuffle"]], blocksize=int(config["blocksize"]),
                     typesize=int(config["typesize"]))
    if name == "zstd" and not config.get("checksum", False):
        return Zstd(level=int(config["level"]))
    return False


def _is_prefix(region: tuple[slice, ...], shape: tuple[int, ...]) -> bool:
    """Whether ``region`` (starting at the origin) is a prefix of ``shape``'s C order: every
    dim after the first one longer than 1 is whole."""
    if any(s.start for s in region):
        return False
    extents = [s.stop - s.start for s in region]
    first = next((d for d, e in enumerate(extents) if e != 1), len(extents))
    return all(e == n for e, n in zip(extents[first + 1:], shape[first + 1:]))


def _is_prefix_block(region: tuple[slice, ...], shape: tuple[int, ...]) -> bool:
    """Whether ``region`` of an array of ``shape`` is one contiguous run of its C order."""
    extents = [s.stop - s.start for s in region]
    first = next((d for d, e in enumerate(extents) if e != 1), len(extents))
    return all(s.start == 0 and e == n for s, e, n
               in zip(region[first + 1:], extents[first + 1:], shape[first + 1:]))


def _flat_offset(region: tuple[slice, ...], shape: tuple[int, ...]) -> int:
    return sum(s.start * math.prod(shape[d + 1:]) for d, s in enumerate(region))
