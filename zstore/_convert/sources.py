"""What users arrive with, opened as a tree of lazy arrays: nothing is read until saved.

Each source is recognized by its name, or for a folder by what it holds:

- ``.safetensors``: one file, each tensor read by byte range as its chunks are encoded;
- ``*.safetensors.index.json``, or a folder holding one (Hugging Face's sharded layout):
  every shard's tensors, under the names of the index's weight map;
- ``.pt`` / ``.pth`` / ``.bin``: ``torch.load(weights_only=True)``, memory-mapped (a
  remote file is first copied to a temporary one); a file that needs arbitrary
  unpickling is refused, since zstore never runs a pickle's code;
- a folder with ``.metadata``: a PyTorch DCP checkpoint, each tensor loaded by DCP when
  first read; DCP's pickled values are read with ``weights_only=True`` too;
- ``.h5`` / ``.hdf5``: groups become tree levels, datasets arrays (read box by box),
  attributes metadata (``metadata["hdf5"]``: {object path: {name: value}});
- a zstore checkpoint: its tree as saved, arrays read lazily (re-planned on the way).

A safetensors file written by ``zstore.convert`` carries the tree it came from
(``zstore.tree`` in its metadata), so converting it back restores nesting, plain values,
kinds and tied names exactly; any other file is a flat {name: tensor}.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np

from zstore._convert.pretrained import hf_metadata
from zstore._format.crypto import KeySource, key_needed
from zstore._format.dtypes import check_supported
from zstore._format.lazy import Box, Lazy, rows_of
from zstore._format.safetensors import Entry, header_length, parse_header
from zstore._format.tensors import require_torch, torch_to_numpy
from zstore._format.tree import iter_leaves, unflatten
from zstore._options import current
from zstore._read import LazyTensor
from zstore._read.reader import open as open_checkpoint
from zstore.errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    UnsupportedFormatError,
    UnsupportedTypeError,
)

TREE_KEY = "zstore.tree"  # a converted file's skeleton (``zstore._format.tree``), as JSON
METADATA_KEY = "zstore.metadata"  # and the checkpoint's metadata


@dataclass
class Source:
    """An opened source: its tree (lazy arrays, plain values), metadata and kind."""

    url: str
    kind: str  # "safetensors", "torch", "dcp", "hdf5" or "zstore"
    tree: Any
    metadata: dict[str, Any] = field(default_factory=dict)
    closing: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def close(self) -> None:
        self.closing.close()


def open_source(url: str, storage_options: dict[str, Any] | None = None,
                encryption_key: KeySource | None = None) -> Source:
    """Open ``url`` as whichever kind of source it is (see the module's docstring); an
    encrypted zstore checkpoint with ``encryption_key``."""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    source = Source(url, "", {})
    try:
        _open(source, fs, path.rstrip("/"), storage_options, encryption_key)
    except FileNotFoundError as e:
        source.close()
        raise CheckpointNotFoundError(f"nothing to convert at {url!r}: {e}", url=url) from None
    except BaseException:
        source.close()  # the files and temporary copies opened so far
        raise
    return source


def _open(source: Source, fs: Any, path: str, storage_options: dict[str, Any] | None,
          encryption_key: KeySource | None) -> None:
    url, lower = source.url, path.lower()
    if lower.endswith(".safetensors.index.json"):
        return _sharded(source, fs, path)
    if lower.endswith(".safetensors"):
        return _safetensors(source, fs, path)
    if lower.endswith((".pt", ".pth", ".bin")):
        return _torch(source, fs, path)
    if lower.endswith((".h5", ".hdf5")):
        return _hdf5(source, fs, path)
    try:
        names = {os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)}
    except (FileNotFoundError, NotADirectoryError):
        names = set()
    if "zstore.commit.json" in names or "zarr.json" in names:
        return _zstore(source, storage_options, encryption_key)
    if ".metadata" in names:
        return _dcp(source, fs, path, storage_options)
    index = sorted(n for n in names if n.endswith(".safetensors.index.json"))
    if index:
        return _sharded(source, fs, f"{path}/{index[0]}")
    single = sorted(n for n in names if n.endswith(".safetensors"))
    if len(single) == 1:
        return _safetensors(source, fs, f"{path}/{single[0]}")
    if not names and not fs.exists(path):
        raise CheckpointNotFoundError(f"nothing to convert at {url!r}: it does not exist",
                                      url=url)
    raise UnsupportedFormatError(
        f"{url!r} is none of what zstore converts: a .safetensors file (or a folder of "
        "Hugging Face shards with their index), a torch .pt/.bin file, a PyTorch DCP folder "
        "(with .metadata), an .h5/.hdf5 file or a zstore checkpoint"
        + (f"; it holds {sorted(names)[:5]}" if names else ""), url=url)


# ---- reading byte ranges ----------------------------------------------------------------

class _File:
    """Byte ranges of one file: ``pread`` on a local one (thread-safe, no seek), ranged
    GETs through fsspec elsewhere."""

    def __init__(self, fs: Any, path: str, closing: contextlib.ExitStack) -> None:
        self.fs, self.path = fs, path
        self.fd: int | None = None
        if is_local(fs):
            self.fd = os.open(path, os.O_RDONLY)
            closing.callback(os.close, self.fd)

    def size(self) -> int:
        if self.fd is not None:
            return os.fstat(self.fd).st_size
        return int(self.fs.size(self.path))

    def read(self, start: int, stop: int) -> bytes:
        if stop <= start:
            return b""
        if self.fd is not None:
            data = os.pread(self.fd, stop - start, start)
            while 0 < len(data) < stop - start:  # a short read: keep going
                more = os.pread(self.fd, stop - start - len(data), start + len(data))
                if not more:
                    break
                data += more
        else:
            data = bytes(self.fs.cat_file(self.path, start=start, end=stop))
        if len(data) != stop - start:
            raise CorruptCheckpointError(
                f"{self.path!r} ends at byte {start + len(data)}, before the {stop} its "
                "header promises: the file is truncated", url=self.path)
        return data


def is_local(fs: Any) -> bool:
    """Whether ``fs`` is fsspec's local filesystem (its paths are the OS's)."""
    protocol = fs.protocol
    return "file" in ((protocol,) if isinstance(protocol, str) else tuple(protocol))


class _Kept:
    """One block of a tensor kept until every byte of it has been read once, then dropped:
    a save reads each box once, so the boxes that share a block share one read of it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._block: tuple[Any, np.ndarray, int] | None = None  # key, data, bytes left

    def take(self, key: Any, load: Callable[[], np.ndarray], box: Box) -> np.ndarray:
        with self._lock:
            if self._block is None or self._block[0] != key:
                data = load()
                self._block = (key, data, data.nbytes)
            _, data, left = self._block
            part = np.array(data[box])  # its own memory: the block may be dropped next
            left -= part.nbytes
            self._block = None if left <= 0 else (key, data, left)
            return part


class _Span(Lazy):
    """A tensor of a safetensors file: a box is one ranged read of its rows.

    A box of some columns only (a layout split along dim 1) still reads whole rows, the
    file's contiguous runs; those rows are kept until every column of them has been read,
    so the objects side by side share one read instead of each reading them all (8
    objects of ``split(1, 8)`` read the tensor once, not 8 times). At most one block of
    rows is kept, and none larger than ``Settings.write_budget``."""

    def __init__(self, file: _File, entry: Entry, kind: str) -> None:
        super().__init__(entry.shape, entry.dtype, kind)
        self.file, self.entry = file, entry
        self._kept = _Kept()

    def read(self, box: Box) -> np.ndarray:
        if not self.shape:
            return np.frombuffer(self._bytes(0, 1), self.dtype).reshape(())
        first, end, rest = rows_of(box, self.shape)
        whole = all(s == slice(0, n) for s, n in zip(box[1:], self.shape[1:]))
        if whole or (end - first) * self._row > current().write_budget:
            return self._block(first, end)[rest]
        return self._kept.take((first, end), lambda: self._block(first, end), rest)

    @property
    def _row(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    def _bytes(self, first: int, end: int) -> bytes:
        row = self._row if self.shape else self.dtype.itemsize
        return self.file.read(self.entry.start + first * row, self.entry.start + end * row)

    def _block(self, first: int, end: int) -> np.ndarray:
        return np.frombuffer(self._bytes(first, end), self.dtype).reshape(
            (end - first, *self.shape[1:]))


def _kind() -> str:
    """Tensors of torch's formats load back as torch tensors where torch is installed."""
    import importlib.util

    return "torch" if importlib.util.find_spec("torch") is not None else "numpy"


# ---- safetensors ------------------------------------------------------------------------

def _header(file: _File, url: str) -> tuple[dict[str, Entry], dict[str, str]]:
    """The header of a file, checked against the file's size: a tensor past its end is a
    damaged file, found before anything is written."""
    length = header_length(file.read(0, 8), url)
    entries, metadata = parse_header(file.read(8, 8 + length), url)
    end = max((e.stop for e in entries.values()), default=0)
    if end > file.size():
        raise CorruptCheckpointError(
            f"{url!r} is {file.size()} bytes, but its header places tensors up to byte {end}: "
            "the file is truncated", url=url)
    return entries, metadata


def _safetensors(source: Source, fs: Any, path: str) -> None:
    url, source.kind = source.url, "safetensors"
    file = _File(fs, path, source.closing)
    entries, metadata = _header(file, url)
    kind = _kind()
    tensors = {name: _Span(file, entry, kind) for name, entry in entries.items()}
    source.tree, source.metadata = _rebuild(tensors, metadata)
    source.metadata.update(_beside(fs, path))


def _sharded(source: Source, fs: Any, index_path: str) -> None:
    """Hugging Face's sharded layout: ``{"metadata": {...}, "weight_map": {name: file}}``."""
    url, source.kind = source.url, "safetensors"
    try:
        index = json.loads(fs.cat_file(index_path))
        weight_map: dict[str, str] = index["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
        raise UnsupportedFormatError(f"{index_path!r} is not a safetensors index ({e})",
                                     url=url) from None
    folder = index_path.rsplit("/", 1)[0] if "/" in index_path else ""
    kind = _kind()
    tensors: dict[str, Lazy] = {}
    for shard in dict.fromkeys(weight_map.values()):
        file = _File(fs, f"{folder}/{shard}" if folder else shard, source.closing)
        entries, _ = _header(file, f"{url} ({shard})")
        for name, entry in entries.items():
            if weight_map.get(name) == shard:
                tensors[name] = _Span(file, entry, kind)
    missing = [name for name in weight_map if name not in tensors]
    if missing:
        raise UnsupportedFormatError(
            f"the index of {url!r} maps {len(missing)} tensor(s) (e.g. {missing[0]!r}) to "
            "shards that do not hold them", url=url)
    ordered = {name: tensors[name] for name in weight_map}
    info = {str(k): str(v) for k, v in (index.get("metadata") or {}).items()}
    source.tree, source.metadata = _rebuild(ordered, info)
    source.metadata.update(_beside(fs, index_path))


def _beside(fs: Any, path: str) -> dict[str, Any]:
    """A Hugging Face folder's ``config.json`` (and ``generation_config.json``) beside the
    weights, kept in the metadata for ``zstore.hf.from_pretrained``."""
    folder = path.rsplit("/", 1)[0] if "/" in path else "."
    found = []
    for name in ("config.json", "generation_config.json"):
        try:
            found.append(json.loads(fs.cat_file(f"{folder}/{name}")))
        except (FileNotFoundError, ValueError):
            found.append(None)
    config, generation = found
    if not isinstance(config, dict) or "model_type" not in config:
        return {}
    return hf_metadata(config, generation if isinstance(generation, dict) else None)


def _rebuild(tensors: Mapping[str, Lazy], metadata: dict[str, str]
             ) -> tuple[Any, dict[str, Any]]:
    """The tree a converted file came from (its ``zstore.tree``), else {name: tensor}; and
    its metadata (a plain file's ``__metadata__`` under ``"safetensors"``)."""
    if TREE_KEY not in metadata:
        extra = {k: v for k, v in metadata.items() if k != "format"}
        return dict(tensors), ({"safetensors": extra} if extra else {})
    skeleton = json.loads(metadata[TREE_KEY])
    for _, node in iter_leaves(skeleton):
        if "array" in node and node["array"] in tensors:
            tensors[node["array"]].kind = node["kind"]  # numpy or torch, as saved
    return (unflatten(skeleton, tensors, None),
            json.loads(metadata.get(METADATA_KEY, "{}")))


# ---- torch ------------------------------------------------------------------------------

def _torch(source: Source, fs: Any, path: str) -> None:
    torch = require_torch()
    url, source.kind = source.url, "torch"
    local = path
    if not is_local(fs):  # torch.load memory-maps local files only
        handle, local = tempfile.mkstemp(suffix=".pt", prefix="zstore-convert-")
        os.close(handle)
        source.closing.callback(os.unlink, local)
        fs.get_file(path, local)
    try:
        try:
            tree = torch.load(local, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            tree = torch.load(local, map_location="cpu", weights_only=True)  # legacy format
    except pickle.UnpicklingError as e:  # what weights_only=True refuses to run
        raise UnsupportedFormatError(
            f"{url!r} holds objects that torch.load(weights_only=True) refuses, so "
            "loading it would run arbitrary code from the file: zstore never does. "
            f"({_first_line(e)}) If you trust the file, load it yourself "
            "(torch.load(..., weights_only=False)) and pass what you need to "
            "zstore.save; nothing was written", url=url) from None
    except (RuntimeError, ValueError, EOFError, KeyError) as e:  # not a torch file at all
        raise CorruptCheckpointError(f"{url!r} is not a file torch.load reads "
                                     f"({_first_line(e)}); nothing was written",
                                     url=url) from None
    source.tree = tree


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ---- PyTorch DCP ------------------------------------------------------------------------

class _Whole(Lazy):
    """A tensor loaded whole when first read (its format cannot read a part), kept until
    every byte of it has been read once (``_Kept``)."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, kind: str,
                 load: Callable[[], np.ndarray]) -> None:
        super().__init__(shape, dtype, kind)
        self._load, self._kept = load, _Kept()

    def read(self, box: Box) -> np.ndarray:
        return self._kept.take(None, self._load, box)


def _dcp(source: Source, fs: Any, path: str, storage_options: dict[str, Any] | None
         ) -> None:
    torch = require_torch()
    url, source.kind = source.url, "dcp"
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        MetadataIndex,
        TensorStorageMetadata,
    )
    from torch.distributed.checkpoint.state_dict_loader import load as load_state_dict

    def make_reader() -> Any:  # one per load: DCP's readers keep state between calls
        if is_local(fs):
            return _safe(FileSystemReader)(path)
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

        return _safe(FsspecReader)(url, **(storage_options or {}))

    reader = make_reader()
    metadata = reader.read_metadata()
    mappings: dict[str, tuple[Any, ...]] = metadata.planner_data or {}
    leaves: dict[str, Any] = {}
    files: dict[str, _File] = {}  # one handle per data file, however many values it holds
    lock = threading.Lock()  # DCP's single-process load is not meant to run twice at once

    def loader(fqn: str, size: Any, dtype: Any) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            target = torch.empty(size, dtype=dtype)
            with lock:
                load_state_dict({fqn: target}, storage_reader=make_reader(), no_dist=True)
            return torch_to_numpy(target, fqn)
        return load

    for fqn, entry in metadata.state_dict_metadata.items():
        if isinstance(entry, TensorStorageMetadata):
            dtype = torch_to_numpy(torch.empty(0, dtype=entry.properties.dtype), fqn).dtype
            check_supported(dtype, fqn)
            leaves[fqn] = _Whole(tuple(entry.size), dtype, "torch",
                                 loader(fqn, entry.size, entry.properties.dtype))
        elif isinstance(entry, BytesStorageMetadata):
            info = metadata.storage_data[MetadataIndex(fqn)]
            where = f"{path}/{info.relative_path}"
            file = files[where] = files.get(where) or _File(fs, where, source.closing)
            raw = file.read(info.offset, info.offset + info.length)
            leaves[fqn] = _value(torch, raw, fqn, url)
    source.tree = _nest(leaves, mappings)


# What a DCP ``.metadata`` pickle may name: DCP's own records, torch's sizes, dtypes and
# layouts, paths. DCP reads it with plain ``pickle.load``, which runs whatever a file says.
_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"), ("torch", "Size"),
    ("collections", "OrderedDict"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        import torch

        allowed = ((module, name) in _METADATA_GLOBALS
                   or (module == "torch.distributed.checkpoint.metadata"
                       and isinstance(getattr(_dcp_metadata(), name, None), type))
                   or (module == "torch" and isinstance(getattr(torch, name, None),
                                                        (torch.dtype, torch.layout,
                                                         torch.memory_format))))
        if not allowed:
            raise UnsupportedFormatError(
                f"the DCP metadata names {module}.{name}, which is none of DCP's own records: "
                "zstore does not load it, since unpickling it could run code from the "
                "checkpoint; nothing was written")
        return super().find_class(module, name)


def _dcp_metadata() -> Any:
    import torch.distributed.checkpoint.metadata as metadata

    return metadata


def _safe(reader: type) -> type:
    """DCP's reader whose ``read_metadata`` unpickles only DCP's records."""

    class Safe(reader):  # type: ignore[misc]
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            path = self._get_metadata_path(kwargs.get("rank"))
            with self.fs.create_stream(path, "rb") as stream:
                metadata = _MetadataUnpickler(stream).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = _dcp_metadata().StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return Safe


def _value(torch: Any, raw: bytes, fqn: str, url: str) -> Any:
    """A value DCP pickled (``torch.save``), read with ``weights_only=True``."""
    import io

    try:
        value = torch.load(io.BytesIO(raw), weights_only=True)
    except Exception as e:
        raise UnsupportedFormatError(
            f"{fqn!r} in the DCP checkpoint {url!r} is an object that "
            "torch.load(weights_only=True) refuses, so reading it would run arbitrary code "
            f"from the checkpoint: zstore never does ({_first_line(e)}); nothing was "
            "written", url=url) from None
    return value


def _nest(leaves: dict[str, Any], mappings: dict[str, tuple[Any, ...]]) -> Any:
    """DCP's flat {fqn: leaf} as the tree it was flattened from (``planner_data``: fqn ->
    the keys leading to it; DCP writes dict keys as str and list indices as int), or flat
    where DCP recorded no path."""
    tree: dict[Any, Any] = {}
    for fqn, leaf in leaves.items():
        keys = mappings.get(fqn) or (fqn,)
        node = tree
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = leaf

    def lists(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        if node and all(isinstance(k, int) for k in node):
            return [lists(node[k]) for k in sorted(node)]
        return _optimizer({k: lists(v) for k, v in node.items()})

    return lists(tree)


def _optimizer(node: dict[Any, Any]) -> dict[Any, Any]:
    """An optimizer's ``state_dict`` keys its ``state`` by the int ids its ``param_groups``
    list; DCP wrote them as str. Put them back, or ``load_state_dict`` drops the state."""
    groups, state = node.get("param_groups"), node.get("state")
    if not (isinstance(groups, list) and isinstance(state, dict)):
        return node
    ids = {p for g in groups if isinstance(g, dict) for p in g.get("params", ())}
    if ids and all(isinstance(p, int) for p in ids) and all(
            isinstance(k, str) and k.isdigit() and int(k) in ids for k in state):
        node["state"] = {int(k): v for k, v in state.items()}
    return node


# ---- HDF5 -------------------------------------------------------------------------------

class _Dataset(Lazy):
    """An HDF5 dataset: each box one h5py read (h5py serializes them itself)."""

    def __init__(self, dataset: Any) -> None:  # big-endian data is stored little-endian
        super().__init__(dataset.shape, dataset.dtype.newbyteorder("="), "numpy")
        self.dataset = dataset

    def read(self, box: Box) -> np.ndarray:
        data = np.asarray(self.dataset[box] if box else self.dataset[()])
        return data.astype(self.dtype, copy=False)


def _hdf5(source: Source, fs: Any, path: str) -> None:
    try:
        import h5py
    except ImportError:
        raise ImportError("converting HDF5 needs h5py: pip install 'zstore[hdf5]'") from None
    url, source.kind = source.url, "hdf5"
    handle = path if is_local(fs) else source.closing.enter_context(
        fs.open(path, "rb"))
    file = source.closing.enter_context(h5py.File(handle, "r"))
    attributes: dict[str, Any] = {}

    def visit(group: Any) -> dict[str, Any]:
        node: dict[str, Any] = {}
        if group.attrs:
            attributes[group.name] = _attributes(group.attrs, group.name)
        for name, item in group.items():
            if item is None:  # a soft or external link to nothing
                raise UnsupportedFormatError(f"HDF5 object {group.name}/{name} in {url!r} is "
                                             "a broken link; nothing was written", url=url)
            if isinstance(item, h5py.Group):
                node[name] = visit(item)
                continue
            if item.attrs:
                attributes[item.name] = _attributes(item.attrs, item.name)
            if item.shape is None:  # h5py.Empty: a dataset without a dataspace
                raise UnsupportedTypeError(f"HDF5 dataset {item.name!r} in {url!r} is empty "
                                           "(no shape); nothing was written")
            if h5py.check_string_dtype(item.dtype) is not None:
                if item.shape != ():
                    raise UnsupportedTypeError(
                        f"HDF5 dataset {item.name!r} in {url!r} is an array of strings, "
                        "which zstore does not store as an array; nothing was written")
                node[name] = _text(item[()], item.name, url)
                continue
            if item.dtype.kind in "OSUV":  # references, variable-length or compound data
                raise UnsupportedTypeError(
                    f"HDF5 dataset {item.name!r} in {url!r} holds {item.dtype} values (object "
                    "references, variable-length or compound data), which zstore does not "
                    "store; nothing was written")
            check_supported(item.dtype, item.name)
            node[name] = _Dataset(item)
        return node

    source.tree = visit(file)
    source.metadata = {"hdf5": attributes} if attributes else {}


def _text(value: Any, where: str, url: str) -> str:
    if not isinstance(value, bytes):
        return str(value)
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise UnsupportedTypeError(f"HDF5 dataset {where!r} in {url!r} is a string that is "
                                   "not UTF-8; nothing was written") from None


def _attributes(attrs: Any, where: str) -> dict[str, Any]:
    """HDF5 attributes as JSON values (arrays as lists)."""
    out: dict[str, Any] = {}
    for name, value in attrs.items():
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, np.ndarray):
            value = [v.decode() if isinstance(v, bytes) else v for v in value.tolist()]
        elif isinstance(value, np.generic):
            value = value.item()
        try:
            json.dumps(value)
        except TypeError:
            raise UnsupportedTypeError(
                f"attribute {name!r} of HDF5 object {where!r} is a {type(value).__name__}, "
                "which does not fit in JSON metadata; nothing was written") from None
        out[name] = value
    return out


# ---- zstore -----------------------------------------------------------------------------

class _Stored(Lazy):
    """An array of another zstore checkpoint, each box read through its lazy reader."""

    def __init__(self, tensor: Any) -> None:
        super().__init__(tensor.shape, tensor.dtype, tensor.kind)
        self.tensor = tensor

    def read(self, box: Box) -> np.ndarray:
        return np.asarray(self.tensor[box])

    async def fetch(self, box: Box) -> np.ndarray:
        return np.asarray(await self.tensor.read_async(box))  # on the save's loop itself


def _zstore(source: Source, storage_options: dict[str, Any] | None,
            encryption_key: KeySource | None) -> None:
    url, source.kind = source.url, "zstore"
    ckpt = open_checkpoint(url, storage_options=storage_options)
    if ckpt.encryption is not None:  # else the key is only the destination's
        if encryption_key is None:
            raise key_needed(url, ckpt.encryption["key_id"], "convert it")
        ckpt = open_checkpoint(url, storage_options=storage_options,
                               encryption_key=encryption_key)
    wrapped: dict[int, _Stored] = {}

    def wrap(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: wrap(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            items = [wrap(v) for v in node]
            return tuple(items) if isinstance(node, tuple) else items
        if isinstance(node, LazyTensor):
            return wrapped.setdefault(id(node), _Stored(node))  # tied names: one source
        return node

    source.tree, source.metadata = wrap(ckpt.lazy_tree()), dict(ckpt.metadata)
