"""Writing an array's objects in zstore's layouts: each assembled in memory, one request.

Each object (a shard: its chunks, their crc32c, the index; or one unsharded chunk) is
encoded in worker threads and written whole with one request, by this save alone: never
read back, never rewritten (no read-modify-write). Uncompressed chunks that are contiguous
in the array are written straight from its memory (on local disk one ``writev``; other
backends take one joined buffer per object).

Memory: the objects in flight, at most ``async.concurrency`` of each array (zarr's setting,
10 by default) for ``Settings.save_concurrency`` arrays at once, and at most
``Settings.write_budget`` bytes of them (counted at their decoded size; one larger object
is written alone). An uncompressed object written to local disk holds nothing beyond its
array (``writev`` from the array's memory); elsewhere it holds its stored bytes once (the
joined body handed to the client, which may copy it again), and a compressed one its
compressed chunks too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import zarr

from zstore._budget import ByteBudget
from zstore._format.lazy import is_lazy
from zstore._format.names import object_key
from zstore._format.shards import ObjectFormat, object_box
from zstore._ranks import Part
from zstore._storage.location import Location
from zstore._tasks import gather_all


async def write_objects(fmt: ObjectFormat, location: Location, path: str, array: Any,
                        boxes: Sequence[Any], budget: ByteBudget) -> None:
    """Write the objects of ``array`` holding ``boxes`` (each an object's box of slices, or
    ``...`` for every object), each holding its decoded size of ``budget`` while in memory
    (nothing where it is written from the array's own)."""
    if any(box is Ellipsis for box in boxes):
        indexes = list(fmt.objects_in(tuple((0, n) for n in fmt.shape)))
    else:
        indexes = [tuple(s.start // o for s, o in zip(box, fmt.object_shape)) for box in boxes]
    limit = asyncio.Semaphore(max(1, int(zarr.config.get("async.concurrency"))))
    decoded = fmt.chunk_count * fmt.chunk_nbytes

    lazy = is_lazy(array)

    async def one(index: tuple[int, ...]) -> None:
        key = object_key(path, index)
        in_place = (fmt.compressor is None and fmt.sealed is None and not lazy
                    and location.backend.local_file(key) is not None)
        async with limit, budget.hold(0 if in_place else decoded):
            origins = fmt.chunk_origins(index)
            source: Any = array
            if lazy:  # a conversion's source: the object's box in one read, then encoded
                box = object_box(index, fmt.object_shape, fmt.shape)
                block = await array.fetch(tuple(slice(lo, hi) for lo, hi in box))
                source = Part(block, box, fmt.shape)
            if (fmt.compressor is None and fmt.sealed is None) or len(origins) == 1:
                bodies = await asyncio.to_thread(
                    lambda: [fmt.encode_chunk(source, o) for o in origins])
            else:  # compress and seal chunks in parallel (Blosc, zstd, AES release the GIL)
                bodies = await gather_all(asyncio.to_thread(fmt.encode_chunk, source, o)
                                          for o in origins)
            parts = await asyncio.to_thread(fmt.assemble, bodies)
            await location.put_parts(key, parts)

    await gather_all(one(index) for index in indexes)
