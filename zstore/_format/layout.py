"""A ``Layout`` (chunk shape, shard shape, codec preset) and its Zarr v3 JSON, both ways.

Pure: the planner (``zstore._plan.chunking``) decides layouts, this module only
spells them as ``zarr.json`` and reads them back from one, so a saved
checkpoint's layout can be explained with the same cost model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from zstore._format.crypto import CODEC as SEALED
from zstore._format.crypto import codec_json

CODECS: tuple[str, ...] = ("blosc", "zstd", "none")

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


def check_layout(layout: Any, shape: tuple[int, ...], name: str) -> Layout:
    """``layout`` if it can store an array of ``shape``, else ``ValueError`` naming what
    does not fit: one positive chunk extent per dim, shard extents that are whole multiples
    of them, a known codec."""
    if not isinstance(layout, Layout):
        raise TypeError(f"the layout for {name!r} must be a zstore.Layout, got {layout!r}")
    problem = None
    dims = len(shape)
    if len(layout.chunk_shape) != dims or any(
            not isinstance(c, int) or c < 1 for c in layout.chunk_shape):
        problem = f"chunk_shape {layout.chunk_shape} needs {dims} positive ints"
    elif layout.shard_shape is not None and (
            len(layout.shard_shape) != dims
            or any(not isinstance(s, int) or s < 1 or s % c
                   for s, c in zip(layout.shard_shape, layout.chunk_shape))):
        problem = (f"shard_shape {layout.shard_shape} must be {dims} whole multiples of "
                   f"chunk_shape {layout.chunk_shape}")
    elif layout.codec not in CODECS:
        problem = f"codec {layout.codec!r} is not one of {', '.join(CODECS)}"
    if problem is not None:
        raise ValueError(f"layout for {name!r} (shape {shape}): {problem}")
    return layout


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


def codecs_json(layout: Layout, dtype: np.dtype, sealed: dict[str, Any] | None = None
                ) -> list[dict[str, Any]]:
    """The array's codec pipeline as Zarr v3 JSON; every chunk ends with a crc32c, and is
    encrypted by the ``sealed`` codec (``crypto.codec_json``), if given, after compression."""
    inner = [_bytes_codec(dtype), *_compressor(layout.codec, dtype),
             *([sealed] if sealed else []), {"name": "crc32c"}]
    if layout.shard_shape is None:
        return inner
    return [{"name": "sharding_indexed", "configuration": {
        "chunk_shape": list(layout.chunk_shape),
        "codecs": inner,
        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                         {"name": "crc32c"}],
        "index_location": "end",
    }}]


def array_metadata(path: str, shape: tuple[int, ...], dtype: np.dtype, layout: Layout,
                   members: Sequence[str] = (), key_id: str | None = None) -> dict[str, Any]:
    """The plain Zarr v3 ``zarr.json`` document of the array at ``path``; a stacked array's
    lists its ``members`` (the tensor at each index of dim 0) in its attributes; with a
    ``key_id``, its chunks are encrypted (``crypto``) under that key. Each dim
    is named ``<array name>.<axis>``: xarray opens a group only when every array names its
    dims, and dims of one name must agree in size across the group, so no two arrays
    share one."""
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
        "codecs": codecs_json(layout, dtype,
                              None if key_id is None else codec_json(path, key_id)),
        "dimension_names": [f"{path.rsplit('/', 1)[-1]}.{axis}" for axis in range(len(shape))],
        "attributes": {"zstore": {"members": list(members)}} if members else {},
    }


def stacked_members(document: dict[str, Any]) -> list[str]:
    """The tensors a stacked array holds, one per index of dim 0 (empty for one tensor)."""
    attributes = document.get("attributes")
    own = attributes.get("zstore") if isinstance(attributes, dict) else None
    members = own.get("members") if isinstance(own, dict) else None
    return [m for m in members if isinstance(m, str)] if isinstance(members, list) else []


def object_shape(document: dict[str, Any]) -> tuple[int, ...]:
    """The shape of each stored object of a ``zarr.json`` array document: the shard shape
    when sharded, else the chunk shape (Zarr v3's ``chunk_grid`` names the outer one)."""
    return tuple(document["chunk_grid"]["configuration"]["chunk_shape"])


def layout_from_metadata(document: dict[str, Any]) -> Layout:
    """The ``Layout`` a ``zarr.json`` array document describes (any writer's).

    Compressors other than zstore's presets are reported by their codec name.
    """
    grid = object_shape(document)
    codecs = document["codecs"]
    shard: tuple[int, ...] | None = None
    if codecs and codecs[0]["name"] == "sharding_indexed":
        shard, config = grid, codecs[0]["configuration"]
        grid, codecs = tuple(config["chunk_shape"]), config["codecs"]
    names = [c["name"] for c in codecs
             if c["name"] not in ("bytes", "crc32c", "transpose", SEALED)]
    return Layout(grid, shard, names[0] if names else "none")
