"""PyTorch Distributed Checkpoint (DCP) adapters: zstore as DCP's storage layer.

``dcp.save(state, storage_writer=zstore.dcp.StorageWriter(url))`` writes a zstore
checkpoint (global Zarr arrays, a lease, a commit marker, zstore's S3 handling) and
``dcp.load(state, storage_reader=zstore.dcp.StorageReader(url))`` reads one, including
checkpoints written by ``zstore.save``. A job on DCP switches with one argument; the
checkpoint then also opens with ``zstore.open`` and with plain zarr.

Both take ``(url, storage_options=None)`` (fsspec's options, as everywhere in zstore);
the writer also ``codec=`` (as ``zstore.save``). DCP pickles values that are not
tensors before handing them to the storage layer: the writer keeps plain ones (numbers,
strings, lists of them) as JSON, unpickled, and stores any other object as a uint8
array of DCP's pickle bytes, which zstore never unpickles (``dcp.load`` does). Needs
torch (``pip install 'zstore[torch]'``). See ``docs/distributed.md``.
"""

from __future__ import annotations

import functools
from typing import Any

_NAMES = ("StorageReader", "StorageWriter")


@functools.cache
def _classes() -> dict[str, type]:
    from zstore._read.through_dcp import storage_reader_class
    from zstore._write.through_dcp import storage_writer_class

    return {"StorageReader": storage_reader_class(), "StorageWriter": storage_writer_class()}


def __getattr__(name: str) -> Any:
    """The adapters are made on first use: importing this module does not import torch."""
    if name in _NAMES:
        return _classes()[name]
    raise AttributeError(f"module 'zstore.dcp' has no attribute {name!r}")
