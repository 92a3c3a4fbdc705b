"""Writing a tree as safetensors: one file, or Hugging Face's shards and their index.

Streamed: the header is computed from shapes and dtypes alone, then each tensor's bytes
are read (a lazy source, block by block of whole rows) and written in file order, so
memory holds one block. Tied tensors are written once under the name that comes first,
as Hugging Face's ``save_pretrained`` keeps one of each tied group (safetensors refuses
shared memory); the tree of names, plain values and ties goes into the metadata
(``zstore.tree``), with ``{"format": "pt"}``, so converting the file back restores all.

Nothing half-written is left under the destination's name: a local file is written to a
temporary name and renamed; an object store's multipart upload is aborted on failure; a
sharded export writes its index, which names the shards, last.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
import numpy as np

from zstore._convert.sources import METADATA_KEY, TREE_KEY, is_local
from zstore._format.manifest import check_metadata
from zstore._format.safetensors import CODES, encode_header
from zstore._format.tensors import host_array
from zstore._format.tree import flatten, iter_leaves, scalar_value
from zstore._progress import bar
from zstore._write.writer import SaveInfo
from zstore.errors import CheckpointExistsError

BLOCK = 64 << 20  # bytes of whole rows read and written at a time


def export_safetensors(tree: Any, metadata: dict[str, Any], url: str,
                       storage_options: dict[str, Any] | None, *, max_shard_size: int,
                       overwrite: bool, progress: bool | None) -> SaveInfo:
    """Write ``tree`` to ``url`` (a ``.safetensors`` name) as safetensors, sharded as
    Hugging Face shards when it holds more than ``max_shard_size`` bytes."""
    started = time.perf_counter()
    flat = flatten(tree)
    tensors: list[tuple[str, Any]] = [(path, host_array(v, path))  # a lazy source as it is
                                      for path, v in flat.arrays.items()]
    tensors += [(name, value) for name, node in iter_leaves(flat.skeleton)
                if "scalar" in node and (value := scalar_value(node)).dtype in CODES]
    # 0-d: inline in the tree, and in the file for other readers where safetensors holds
    # their dtype (a complex scalar lives in the tree alone)
    info = {"format": "pt", TREE_KEY: json.dumps(flat.skeleton, separators=(",", ":"))}
    if metadata:
        info[METADATA_KEY] = json.dumps(check_metadata(metadata), separators=(",", ":"))
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    shards = _shards(tensors, max_shard_size)
    folder, base = path.rsplit("/", 1) if "/" in path else ("", path)
    stem = base[:-len(".safetensors")] if base.endswith(".safetensors") else base
    if len(shards) == 1:
        names = [base]
    else:
        names = [f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors"
                 for i in range(1, len(shards) + 1)]
    paths = [f"{folder}/{n}" if folder else n for n in names]
    index_path = f"{folder}/{stem}.safetensors.index.json" if folder else \
        f"{stem}.safetensors.index.json"
    if not overwrite:
        taken = [p for p in [*paths, index_path] if fs.exists(p)]
        if taken:
            raise CheckpointExistsError(
                f"{taken[0]!r} exists; pass overwrite=True to replace it", url=url)
    stale = _previous(fs, path, index_path) if overwrite else []
    total = sum(v.nbytes for _, v in tensors)
    shown = bar(total, f"exporting {url}", progress)
    final = list(paths)
    temporary = [f"{p}.zstore-{uuid.uuid4().hex}.tmp" for p in final]
    files = list(zip(shards, temporary))
    try:
        for shard, where in files:
            header = encode_header([(n, tuple(v.shape), v.dtype) for n, v in shard],
                                   info if len(shards) == 1 else {"format": "pt"})
            _write_file(fs, where, _stream(header, shard, shown))
        if len(shards) > 1:  # the index names the shards: it lands last
            index = {"metadata": {"total_size": total, **info},
                     "weight_map": {n: name for shard, name in zip(shards, names)
                                    for n, _ in shard}}
            temporary.append(f"{index_path}.zstore-{uuid.uuid4().hex}.tmp")
            final.append(index_path)
            _write_file(fs, temporary[-1], iter([json.dumps(index, indent=2).encode()]))
    except BaseException:
        _remove(fs, temporary)  # what it replaces is untouched
        raise
    finally:
        shown.close()
    for source, target in zip(temporary, final):
        fs.mv(source, target)
    _remove(fs, [p for p in stale if p not in final])  # an older export's other files
    return SaveInfo(url=url, arrays=len(flat.arrays), logical_bytes=total,
                    stored_bytes=sum(fs.size(p) for p in final),
                    objects=len(final),
                    seconds=time.perf_counter() - started,
                    inline_values=len(tensors) - len(flat.arrays))


def _previous(fs: Any, path: str, index_path: str) -> list[str]:
    """The files an earlier export to this name left: the file itself, or its index and
    the shards the index names."""
    found = [p for p in (path, index_path) if fs.exists(p)]
    if index_path in found:
        folder = index_path.rsplit("/", 1)[0] if "/" in index_path else ""
        try:
            weight_map = json.loads(fs.cat_file(index_path)).get("weight_map") or {}
            found += [f"{folder}/{name}" if folder else name
                      for name in set(weight_map.values()) if "/" not in name]
        except (ValueError, AttributeError):
            pass
    return found


def _remove(fs: Any, paths: list[str]) -> None:
    for path in paths:
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass


def _shards(tensors: list[tuple[str, Any]], limit: int) -> list[list[tuple[str, Any]]]:
    """Tensors in order, cut into files of at most ``limit`` bytes (a larger tensor alone),
    as Hugging Face shards them."""
    shards: list[list[tuple[str, Any]]] = [[]]
    filled = 0
    for name, value in tensors:
        if shards[-1] and filled + value.nbytes > limit:
            shards.append([])
            filled = 0
        shards[-1].append((name, value))
        filled += value.nbytes
    return shards


def _stream(header: bytes, shard: list[tuple[str, Any]], shown: Any) -> Iterator[Any]:
    """The file's bytes: its header, then each tensor in blocks of whole rows."""
    yield header
    for _, value in shard:
        shape = tuple(value.shape)
        if not shape or shape[0] == 0:
            yield _bytes(np.asarray(value[()] if not shape else value[...]))
            shown.update(value.nbytes)
            continue
        row = max(1, math.prod(shape[1:]) * value.dtype.itemsize)
        step = max(1, BLOCK // row)
        for start in range(0, shape[0], step):
            block = np.asarray(value[start:min(start + step, shape[0])])
            yield _bytes(block)
            shown.update(block.nbytes)


def _bytes(array: np.ndarray) -> Any:
    """The array's bytes, C order, little-endian, without a copy where it is contiguous."""
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.reshape(-1).view(np.uint8).data


def _write_file(fs: Any, path: str, parts: Iterator[Any]) -> None:
    """Write ``parts`` as the file ``path`` (a temporary name: the caller moves it into
    place); on failure nothing stays behind where the backend allows it."""
    if is_local(fs):  # the caller removes the temporary file if this fails
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "wb") as f:
            for part in parts:
                f.write(part)
        return
    f = fs.open(path, "wb")
    try:
        for part in parts:
            f.write(part)
    except BaseException:
        f.discard()  # s3fs: the multipart upload is aborted
        f.closed = True  # so that its finalizer does not write what was buffered
        raise
    f.close()
