"""The one boundary to zarr-python's internals: every name zstore needs from ``zarr.core``.

zstore uses zarr's public API wherever one exists (``zarr.AsyncArray``,
``zarr.buffer``, ``zarr.abc``, ``zarr.dtype``). What is left has no public
equivalent on the zarr lines zstore supports (3.1 to the newest): the sync
bridge and its event loop, parsing array metadata without a store, the dtype
mixins, and a fix for how zarr >= 3.2 reads shards through stores that wrap
others. When zarr moves one of these, this module is the only one to change.
"""

from __future__ import annotations

import asyncio

from zarr.abc.store import Store
from zarr.core.dtype.common import HasEndianness, HasItemSize
from zarr.core.metadata.v3 import ArrayV3Metadata
from zarr.core.sync import loop as _loop
from zarr.core.sync import sync

try:  # zarr >= 3.2; importing it from zarr.dtype warns there
    from zarr.errors import DataTypeValidationError  # type: ignore[attr-defined,unused-ignore]
except ImportError:  # pragma: no cover - zarr 3.1.x
    from zarr.dtype import DataTypeValidationError

__all__ = ["ArrayV3Metadata", "DataTypeValidationError", "HasEndianness", "HasItemSize",
           "RangesThroughGet", "sync", "zarr_loop"]


def zarr_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop zarr's ``sync`` runs coroutines on, once it has started one."""
    loop: asyncio.AbstractEventLoop | None = _loop[0]
    return loop


class RangesThroughGet:
    """Put before ``WrapperStore`` in a store's bases to route zarr >= 3.2's ranged shard
    reads (``get_ranges``) through the wrapper's own ``get``: the wrapped store's
    implementation would bypass it (and with it what the wrapper counts or checks)."""

    if hasattr(Store, "get_ranges"):
        get_ranges = Store.get_ranges
