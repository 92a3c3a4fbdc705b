"""``zstore.convert``: between what users arrive with and what they leave for."""

from __future__ import annotations

import os
from typing import Any, Literal

import fsspec

from zstore._convert.export import export_safetensors
from zstore._convert.sources import is_local, open_source
from zstore._format.crypto import KeySource
from zstore._plan.access import Access
from zstore._write.writer import SaveInfo, save

HF_SHARD = 5 * 10**9  # Hugging Face's default max_shard_size ("5GB")


def _refuse_overlap(src: str, src_options: dict[str, Any] | None, dst: str,
                    dst_options: dict[str, Any] | None) -> None:
    """``ValueError`` where writing ``dst`` would clear or bury ``src`` (the same place,
    or one inside the other): a save clears its destination before it reads anything."""
    fs_in, path_in = fsspec.core.url_to_fs(src, **(src_options or {}))
    fs_out, path_out = fsspec.core.url_to_fs(dst, **(dst_options or {}))
    if type(fs_in) is not type(fs_out):
        return
    a, b = (os.path.realpath(p) if is_local(fs_in) else p.rstrip("/")
            for p in (path_in, path_out))
    if a == b or b.startswith(a + "/") or a.startswith(b + "/"):
        raise ValueError(f"cannot convert {src!r} into {dst!r}: one holds the other, and the "
                         "conversion would clear its own source; convert to another URL, then "
                         "move it")


def convert(src: str, dst: str, *, storage_options: dict[str, Any] | None = None,
            dst_storage_options: dict[str, Any] | None = None, access: Access = None,
            codec: str = "auto", progress: bool | None = None, overwrite: bool = False,
            max_shard_size: int = HF_SHARD, encryption_key: KeySource | None = None,
            dst_encryption_key: KeySource | Literal[False] | None = None) -> SaveInfo:
    """Convert the checkpoint at ``src`` into ``dst``, tensor by tensor, between any two
    fsspec URLs; returns what was written.

    Sources, by what they are: a ``.safetensors`` file; a Hugging Face sharded model (its
    ``*.safetensors.index.json``, or the folder holding it); a torch ``.pt``/``.pth``/
    ``.bin`` file (``torch.load(weights_only=True)`` only: a file that needs arbitrary
    unpickling is refused with a ``ZStoreError`` saying why, and nothing is written); a
    PyTorch DCP folder (``.metadata``); an ``.h5``/``.hdf5`` file (groups become tree
    levels, datasets arrays, attributes ``metadata["hdf5"]``); a zstore checkpoint
    (re-planned for ``access``, re-encoded with ``codec``, copied between backends).

    Destinations: a zstore checkpoint, or, for a ``dst`` ending in ``.safetensors``, a
    safetensors file (more than ``max_shard_size`` bytes: Hugging Face shards
    ``<stem>-00001-of-0000N.safetensors`` beside ``<stem>.safetensors.index.json``). Tied
    tensors are written once, as Hugging Face does, and the tree of names, values and
    ties goes into the metadata, so converting back restores them exactly.

    Arrays stream from lazy reads of the source as each chunk is written: memory holds
    the objects in flight (``Settings.write_budget``), not the model; sources that cannot
    read part of a tensor (DCP) hold the tensors being written whole.

    Args:
        storage_options: fsspec options of ``src``, and of ``dst`` unless
            ``dst_storage_options`` is given.
        access, codec: as for ``save``, for a zstore destination.
        progress: a progress bar on stderr (default: on a terminal, for large work).
        overwrite: replace what ``dst`` holds (a committed checkpoint, or files).
        max_shard_size: bytes per safetensors file before sharding.
        encryption_key: the key of an encrypted zstore ``src``, and of a zstore ``dst``
            unless ``dst_encryption_key`` is given (see ``save``).
        dst_encryption_key: the key to encrypt ``dst`` with (re-keying); ``False``
            writes it unencrypted, which a safetensors ``dst`` of an encrypted source
            must say (safetensors files cannot be encrypted).

    Example:
        >>> import numpy as np, zstore
        >>> _ = zstore.save({"w": np.eye(2, dtype="float32")}, "memory://doc/convert")
        >>> info = zstore.convert("memory://doc/convert", "memory://doc/w.safetensors")
        >>> zstore.convert("memory://doc/w.safetensors", "memory://doc/back").arrays
        1
    """
    out = storage_options if dst_storage_options is None else dst_storage_options
    _refuse_overlap(src, storage_options, dst, out)
    sealing = encryption_key if dst_encryption_key is None else dst_encryption_key or None
    exporting = dst.rstrip("/").lower().endswith(".safetensors")
    if exporting and sealing is not None:
        raise ValueError(
            f"{dst!r} is a safetensors file, which cannot be encrypted: pass "
            "dst_encryption_key=False to write it in the clear, or convert to a zstore "
            "checkpoint")
    source = open_source(src, storage_options, encryption_key)
    try:
        if exporting:
            return export_safetensors(source.tree, source.metadata, dst, out,
                                      max_shard_size=max_shard_size, overwrite=overwrite,
                                      progress=progress)
        return save(source.tree, dst, storage_options=out, metadata=source.metadata,
                    overwrite=overwrite, access=access, codec=codec, progress=progress,
                    process_group=False, encryption_key=sealing)
    finally:
        source.close()
