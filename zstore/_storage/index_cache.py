"""Remembering shard indexes, so a second read in a shard costs one request, not two.

zarr reads a shard's index (a suffix range at the end of the shard object)
before every partial read of that shard, and keeps nothing between reads. A
committed checkpoint never changes, so an open ``Checkpoint`` keeps the
indexes it has fetched, bounded by bytes, least recently used out first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from zarr.abc.buffer import Buffer, BufferPrototype
from zarr.abc.store import ByteRequest, Store, SuffixByteRequest
from zarr.storage import WrapperStore

DEFAULT_BYTES = 32 << 20  # 2M index entries: every shard of a ~100 GiB checkpoint of 128 KiB chunks


class ShardIndexCache(WrapperStore[Store]):
    """A store view that answers repeated suffix reads (shard indexes) from memory.

    Only suffix reads are cached: zstore's shards keep their index at the end,
    and nothing else zarr reads is a suffix. All calls run on zarr's one event
    loop thread, so the cache needs no lock.
    """

    def __init__(self, store: Any, max_bytes: int = DEFAULT_BYTES) -> None:
        super().__init__(store)
        self._entries: OrderedDict[tuple[str, int], Buffer] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes

    async def get(self, key: str, prototype: BufferPrototype,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        if not isinstance(byte_range, SuffixByteRequest):
            return await self._store.get(key, prototype, byte_range)
        slot = (key, byte_range.suffix)
        hit = self._entries.get(slot)
        if hit is not None:
            self._entries.move_to_end(slot)
            return hit
        value = await self._store.get(key, prototype, byte_range)
        if value is not None and len(value) <= self._max_bytes:
            self._entries[slot] = value
            self._bytes += len(value)
            while self._bytes > self._max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted)
        return value
