"""How one array is cut into chunks and shards, and the Zarr v3 codecs that encode it.

This module is pure: shapes and dtypes in, a ``Layout`` and its JSON out. The
default layout aims at inner chunks of about 1 MiB of whole rows (large enough
for Blosc to reach its ratio, small enough for partial reads, contiguous in C
order) packed into shards of up to 64 MiB, so an array costs few objects;
arrays that fit in one chunk are stored unsharded, as one object read in one
request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Codec = Literal["blosc", "zstd", "none"]
CODECS: tuple[str, ...] = ("blosc", "zstd", "none")

CHUNK_TARGET = 1 << 20
SHARD_TARGET = 64 << 20
_BLOSC_BLOCK = 1 << 20  # an explicit block size keeps the ratio at clevel 1 (see design.md)


@dataclass(frozen=True)
class Layout:
    """Inner chunk shape, shard shape (None: unsharded) and codec preset of one array."""

    chunk_shape: tuple[int, ...]
    shard_shape: tuple[int, ...] | None
    codec: str = "blosc"

    @property
    def object_shape(self) -> tuple[int, ...]:
        """The extent of one stored object: a shard, or the chunk when unsharded."""
        return self.shard_shape or self.chunk_shape


def _rows_first(extent: list[int], unit_bytes: int, target: int) -> list[int]:
    """The largest block of whole trailing dims, leading dim cut first, within ``target`` bytes.

    Cutting rows first keeps every block contiguous in C order (cheap to encode
    and decode) and lets a row, or a range of rows, be read from one block.
    """
    block = list(extent)
    for d in range(len(block)):
        rest = math.prod(block[d + 1:]) * unit_bytes
        if rest * block[d] <= target:
            break
        if rest <= target:
            block[d] = max(1, target // rest)
            break
        block[d] = 1
    return block


def default_layout(shape: tuple[int, ...], dtype: np.dtype, codec: str = "blosc") -> Layout:
    """The layout zstore uses when no planner is asked: ~1 MiB chunks of whole rows in
    shards of up to 64 MiB; arrays that fit one chunk stay one unsharded object."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
    extent = [max(1, n) for n in shape]
    chunk = _rows_first(extent, dtype.itemsize, CHUNK_TARGET)
    chunks_per_dim = [-(-e // c) for e, c in zip(extent, chunk)]
    if math.prod(chunks_per_dim) == 1:
        return Layout(tuple(chunk), None, codec)
    per_shard = _rows_first(chunks_per_dim, math.prod(chunk) * dtype.itemsize, SHARD_TARGET)
    return Layout(tuple(chunk), tuple(c * k for c, k in zip(chunk, per_shard)), codec)


def _bytes_codec(dtype: np.dtype) -> dict[str, Any]:
    if dtype.itemsize > 1:
        return {"name": "bytes", "configuration": {"endian": "little"}}
    return {"name": "bytes"}


def _compressor(codec: str, dtype: np.dtype) -> list[dict[str, Any]]:
    if codec == "blosc":
        shuffle = "shuffle" if dtype.itemsize > 1 else "bitshuffle"
        return [{"name": "blosc", "configuration": {
            "cname": "zstd", "clevel": 1, "shuffle": shuffle,
            "typesize": dtype.itemsize, "blocksize": _BLOSC_BLOCK,
        }}]
    if codec == "zstd":
        return [{"name": "zstd", "configuration": {"level": 1, "checksum": False}}]
    return []


def codecs_json(layout: Layout, dtype: np.dtype) -> list[dict[str, Any]]:
    """The array's codec pipeline as Zarr v3 JSON; every chunk ends with a crc32c."""
    inner = [_bytes_codec(dtype), *_compressor(layout.codec, dtype), {"name": "crc32c"}]
    if layout.shard_shape is None:
        return inner
    return [{"name": "sharding_indexed", "configuration": {
        "chunk_shape": list(layout.chunk_shape),
        "codecs": inner,
        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                         {"name": "crc32c"}],
        "index_location": "end",
    }}]


def array_metadata(shape: tuple[int, ...], dtype: np.dtype, layout: Layout) -> dict[str, Any]:
    """The plain Zarr v3 ``zarr.json`` document of one array."""
    fill: Any = False if dtype.kind == "b" else [0.0, 0.0] if dtype.kind == "c" else 0
    return {
        "zarr_format": 3,
        "node_type": "array",
        "shape": list(shape),
        "data_type": str(dtype),
        "chunk_grid": {"name": "regular",
                       "configuration": {"chunk_shape": list(layout.object_shape)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill,
        "codecs": codecs_json(layout, dtype),
        "attributes": {},
    }
