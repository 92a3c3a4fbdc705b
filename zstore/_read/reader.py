"""Opening a checkpoint with two metadata reads and loading only what is asked for.

``open`` fetches the root ``zarr.json`` and the commit marker concurrently; with
consolidated metadata that is everything: each ``LazyTensor`` knows its shape,
dtype, layout and stored size without another request, and reading a slice
fetches only the chunks (ranged reads inside shards) that the slice touches.
"""

from __future__ import annotations

import asyncio
import fnmatch
import itertools
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from zarr import AsyncArray
from zarr.abc.store import Store
from zarr.buffer import default_buffer_prototype
from zarr.storage import StorePath, WrapperStore

from zstore._budget import ByteBudget
from zstore._compat import ArrayV3Metadata, RangesThroughGet
from zstore._format.crypto import (
    ChunkAuthenticationError,
    Cipher,
    KeySource,
    cipher_for,
    key_needed,
)
from zstore._format.dtypes import dtype_from_name
from zstore._format.layout import object_shape
from zstore._format.manifest import Manifest, read_manifest, vouched_by
from zstore._format.names import COMMIT_MARKER, ROOT, object_key, step_name, step_of
from zstore._format.shards import Box, ObjectFormat, object_format
from zstore._format.sparse import build as build_sparse
from zstore._format.tensors import numpy_to_torch
from zstore._format.tree import (
    as_framework,
    check_skeleton,
    for_rank,
    has_per_rank,
    iter_leaves,
    leaf_key,
    scalar_value,
    unflatten,
)
from zstore._options import concurrency, current
from zstore._progress import bar
from zstore._read.catalog import natural, survey_at
from zstore._read.indexing import Selection, finish, normalize
from zstore._read.load_into import load_into
from zstore._read.shards import missing_object, read_box
from zstore._read.staging import DeviceStager
from zstore._storage.index_cache import ShardIndexCache
from zstore._storage.location import Location, resolve, run
from zstore._tasks import gather_all
from zstore._text import contents, size
from zstore.errors import CheckpointNotFoundError, CorruptCheckpointError, ZStoreError

K = TypeVar("K")


class LazyTensor:
    """One stored array: metadata at hand, data read on indexing.

    >>> import numpy as np, zstore
    >>> _ = zstore.save({"w": np.arange(12.0).reshape(3, 4)}, "memory://doc/lazy")
    >>> w = zstore.open("memory://doc/lazy")["w"]
    >>> w.shape, str(w.dtype)
    ((3, 4), 'float64')
    >>> w[1:, ::2]
    array([[ 4.,  6.],
           [ 8., 10.]])
    """

    def __init__(self, name: str, location: Location, store: ShardIndexCache, path: str | None,
                 document: dict[str, Any] | None, value: np.ndarray | None, kind: str,
                 stored_nbytes: int, member: int | None = None,
                 parsed: tuple[ArrayV3Metadata, ObjectFormat | None] | None = None) -> None:
        self.name = name
        self.kind = kind  # "numpy" or "torch": what was saved
        self._location = location
        self._store = store
        self._path = path
        self._document = document
        self._value = value  # inline 0-d values live in the manifest
        self._member = member  # a member of a stacked array: its index along dim 0
        self._array: AsyncArray[Any] | None = None
        self.stored_nbytes = stored_nbytes
        # ``parsed``: the document's zarr metadata and object format, where the caller has
        # them (the members of a stacked array share one document). zstore's own layouts are
        # read by its data path (``shards``), anything else by zarr.
        if document is not None and parsed is None:
            parsed = parse_document(document, name, location.url)
        self._metadata: ArrayV3Metadata | None = parsed[0] if parsed is not None else None
        self._format: ObjectFormat | None = parsed[1] if parsed is not None else None
        if document is not None:
            self.shape: tuple[int, ...] = tuple(document["shape"])[member is not None:]
            self.dtype: np.dtype = dtype_from_name(document["data_type"])
            if member is not None and not 0 <= member < document["shape"][0]:
                raise CorruptCheckpointError(
                    f"{name!r} is member {member} of a stacked array of "
                    f"{document['shape'][0]}", url=location.url, array=name)
        else:
            assert value is not None
            self.shape, self.dtype = value.shape, value.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def chunk_shape(self) -> tuple[int, ...] | None:
        """Shape of the smallest independently readable piece (None for inline values; for
        a member of a stacked array, the part of each chunk within the member)."""
        if self._document is None:
            return None
        codec = self._document["codecs"][0]
        if codec["name"] == "sharding_indexed":
            return tuple(codec["configuration"]["chunk_shape"])[self._member is not None:]
        return self.shard_shape

    @property
    def shard_shape(self) -> tuple[int, ...] | None:
        """Shape of one stored object (None for inline values; for a member of a stacked
        array, the part of an object within the member: the object holds several)."""
        if self._document is None:
            return None
        return object_shape(self._document)[self._member is not None:]

    @property
    def stacked(self) -> str | None:
        """The stacked array this tensor is stored in (``zstore.stacked/...``), or None
        when it is an array of its own."""
        return self._path if self._member is not None else None

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError(f"{self.name!r} is 0-d and has no len()")
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyTensor({self.name!r}, shape={self.shape}, dtype={self.dtype})"

    def zarr_array(self) -> AsyncArray[Any]:
        """The underlying zarr array (built from the consolidated metadata, no I/O)."""
        if self._array is None:
            if self._metadata is None:  # set exactly when there is a zarr document
                raise ZStoreError(f"{self.name!r} is a 0-d value stored inline, not a zarr array")
            self._array = AsyncArray(
                metadata=self._metadata, store_path=StorePath(self._store, self._path or ""))
        return self._array

    async def read_async(self, index: Any = Ellipsis, *, out: np.ndarray | None = None
                         ) -> np.ndarray:
        """``read`` for callers already in an event loop (gather many reads at once)."""
        return await self._read(index, out, None)

    async def _read(self, index: Any, out: np.ndarray | None, budget: ByteBudget | None
                    ) -> np.ndarray:
        """``read_async`` within ``budget`` (shared by the reads of one load; None: one of
        ``Settings.read_budget`` bytes for this read alone): the bytes this read holds
        besides its result, whole objects on their way from storage or zarr's decoding."""
        budget = budget or ByteBudget(current().read_budget)
        if self._value is not None:
            return _into(self._value[index], out)
        selection = normalize(index, self.shape, self.name)
        if out is not None:
            _check_out(out, selection.shape, self.dtype, self.name)
        direct = out is not None and selection.direct
        box = _box(selection) if self._format is not None else None
        stored = selection.zarr if self._member is None else (self._member, *selection.zarr)
        if self._format is not None and self._format.sealed is not None and self._format.locked:
            raise key_needed(self._location.url, self._format.sealed[1], "read it", self.name)
        try:
            if box is not None:
                if self._member is not None:
                    box = ((self._member, self._member + 1), *box)
                dest = await self._read_box(box, out if direct else None, budget)
                if direct:
                    return out  # type: ignore[return-value]
                return _into(finish(dest.reshape(selection.read_shape), selection), out)
            if self._format is not None and self._format.sealed is not None:
                picked = await self._read_picked(selection, budget)
                return _into(finish(picked, selection), out)
            async with budget.hold(int(np.prod(selection.read_shape)) * self.dtype.itemsize):
                result = await self.zarr_array().get_orthogonal_selection(
                    stored,
                    out=default_buffer_prototype().nd_buffer.from_numpy_array(out)
                    if direct and out is not None else None)
        except ChunkAuthenticationError as e:
            raise CorruptCheckpointError(
                f"array {self.name!r} in {self._location.url!r}: stored object {e.key!r} "
                f"failed its AES-GCM authentication (chunk {e.number}): it was changed after "
                "the save, or moved from another place; run `zstore verify` to list all the "
                "damage", url=self._location.url, array=self.name, key=e.key) from None
        except (ValueError, TypeError, KeyError, ZeroDivisionError) as e:
            if "checksum" not in str(e):
                raise CorruptCheckpointError(
                    f"array {self.name!r} in {self._location.url!r} could not be decoded "
                    f"({type(e).__name__}: {e}); its metadata or data is damaged",
                    url=self._location.url, array=self.name) from None
            damaged = await self._damaged_objects(stored)
            raise CorruptCheckpointError(
                f"array {self.name!r} in {self._location.url!r}: stored object(s) "
                f"{damaged or ['(not located)']} failed their crc32c check while reading index "
                f"{index!r}; run `zstore verify` to list all the damage",
                url=self._location.url, array=self.name, key=damaged[0] if damaged else None
            ) from None
        if direct:
            return out  # type: ignore[return-value]
        return _into(finish(np.asarray(result), selection), out)

    async def _read_box(self, box: Box, out: np.ndarray | None, budget: ByteBudget
                        ) -> np.ndarray:
        """``box`` through zstore's data path, into ``out`` (of the box's size) if given."""
        assert self._format is not None and self._path is not None
        extents = tuple(hi - lo for lo, hi in box)
        dest = np.empty(extents, self.dtype) if out is None else out.reshape(extents)
        if dest.size:
            await read_box(self._format, self._store, self._location.backend,
                           self._location.url, self._path, box, dest, budget)
        return dest

    async def _read_picked(self, selection: Selection, budget: ByteBudget) -> np.ndarray:
        """A strided or gathered selection through zstore's data path (an encrypted array's
        chunks decrypt only there, where each chunk's number is known): boxes spanning the
        selection, one per run of gathered positions no more than a chunk apart (a gather
        of a few embedding rows reads their chunks, not the table), then the elements
        picked from them; the selection's ``read_shape``."""
        assert self.chunk_shape is not None
        spans: list[tuple[int, int]] = []
        picks: list[Any] = []
        gathered = None
        for axis, item in enumerate(selection.zarr):
            if isinstance(item, slice):
                spans.append((item.start, max(item.start, item.stop)))
                picks.append(slice(None, None, item.step))
            elif isinstance(item, (int, np.integer)):
                spans.append((int(item), int(item) + 1))
                picks.append(slice(None))
            else:  # the one integer array: sorted, unique positions
                positions = np.asarray(item, dtype=np.int64)
                gathered = axis
                spans.append((0, 0))
                picks.append(slice(None))
        groups = [np.zeros(0, np.int64)] if gathered is None else np.split(
            positions, np.flatnonzero(np.diff(positions) > self.chunk_shape[gathered]) + 1)
        blocks = []
        for group in groups:
            if gathered is not None:
                spans[gathered] = (int(group[0]), int(group[-1]) + 1)
            box = tuple(spans)
            if self._member is not None:
                box = ((self._member, self._member + 1), *box)
            block = (await self._read_box(box, None, budget)).reshape(
                tuple(hi - lo for lo, hi in spans))[tuple(picks)]
            if gathered is not None:
                block = np.take(block, group - group[0], axis=gathered)
            blocks.append(block)
        picked = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=gathered)
        return picked.reshape(selection.read_shape)

    async def _damaged_objects(self, stored: tuple[Any, ...]) -> list[str]:
        """Which of the objects a failed read (``stored``: its zarr selection of the stored
        array) touched fail on their own (the error path only)."""
        assert self._document is not None and self._path is not None
        grid, shape = object_shape(self._document), tuple(self._document["shape"])
        per_dim = [np.unique(_positions_of(item) // size) for item, size in zip(stored, grid)]
        damaged = []
        for index in itertools.product(*per_dim):
            box = tuple(slice(int(i) * s, min((int(i) + 1) * s, n))
                        for i, s, n in zip(index, grid, shape))
            try:
                await self.zarr_array().get_orthogonal_selection(box)
            except ValueError:
                damaged.append(object_key(self._path, index))
        return damaged

    def read(self, index: Any = Ellipsis, *, out: np.ndarray | None = None) -> np.ndarray:
        """``self[index]``, decoded into ``out`` when given (a C-contiguous array you own).

        Reads only the chunks holding the elements asked for. ``index`` takes
        ints, slices (any step), ``...``, and one 1-D integer or boolean array
        (a row gather: ``w.read([7, 3, 7])``).

        Raises:
            IndexError: the index is out of range or unsupported; names the shape.
        """
        return run(self._location.url, self.read_async(index, out=out))

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.read(index)

    def numpy(self) -> np.ndarray:
        """The whole array in host memory."""
        return self[...]

    def torch(self, device: Any = None, *, index: Any = Ellipsis) -> Any:
        """``self[index]`` (default: all) as a torch tensor on ``device``; dtype as stored.

        On CPU the tensor shares the decoded memory (bf16/fp8 too); on CUDA the
        bytes are decoded into a pinned buffer and copied without a pageable hop.
        """
        if device is None or _is_cpu(device):
            return numpy_to_torch(self.read(index))
        return run(self._location.url, _to_device({self.name: (self, index)}, device, 1))[self.name]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)


MAX_ELEMENTS = 1 << 50  # no real array is larger; a manifest that says so is damaged


def parse_document(document: dict[str, Any], name: str, url: str | None = None,
                   cipher: Cipher | None = None) -> tuple[ArrayV3Metadata, ObjectFormat | None]:
    """An array document's checked zarr metadata, and its ``ObjectFormat`` (None where
    zarr reads it; holding ``cipher`` where the array is encrypted under it)."""
    return _checked_metadata(document, name, url), object_format(document, cipher)


def _checked_metadata(document: dict[str, Any], name: str, url: str | None = None
                      ) -> ArrayV3Metadata:
    """The array's zarr metadata, or ``CorruptCheckpointError`` if the manifest's entry is
    not one zstore could have written (opening never trusts its shape or codecs blindly)."""
    try:
        metadata = ArrayV3Metadata.from_dict(dict(document))
        shape = tuple(metadata.shape)
        grid = object_shape(document)
        dtype_from_name(document["data_type"])
        valid = (all(isinstance(n, int) and n >= 0 for n in shape)
                 and len(grid) == len(shape) and all(isinstance(c, int) and c > 0 for c in grid)
                 and int(np.prod(shape, dtype=object)) <= MAX_ELEMENTS)
    except Exception as e:  # whatever zarr rejects, and however it says so
        raise CorruptCheckpointError(
            f"the metadata of array {name!r} is malformed ({type(e).__name__}: {e})",
            url=url, array=name) from None
    if not valid:
        raise CorruptCheckpointError(
            f"the metadata of array {name!r} is malformed (shape {shape}, objects {grid})",
            url=url, array=name)
    return metadata


def _box(selection: Selection) -> Box | None:
    """The box a selection of ints and unit-step slices reads (None for other selections:
    strided slices and integer arrays go to zarr)."""
    box = []
    for item in selection.zarr:
        if isinstance(item, slice) and item.step in (None, 1):
            box.append((item.start, max(item.start, item.stop)))
        elif isinstance(item, (int, np.integer)):
            box.append((int(item), int(item) + 1))
        else:
            return None
    return tuple(box)


def _positions_of(item: Any) -> np.ndarray:
    """The positions one dim of a zarr orthogonal selection reads."""
    if isinstance(item, slice):
        return np.arange(item.start, item.stop, item.step or 1)
    return np.atleast_1d(np.asarray(item, dtype=np.int64))


def _is_cpu(device: Any) -> bool:
    return str(device).split(":")[0] == "cpu"


def _check_out(out: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, name: str) -> None:
    if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(
            f"out for {name!r} must be a C-contiguous {dtype} array of shape {shape}; got "
            f"{out.dtype} {out.shape}{'' if out.flags.c_contiguous else ' (not contiguous)'}")


def _into(result: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return result
    out[...] = result
    return out


class _CommittedObjects(RangesThroughGet, WrapperStore[Store]):
    """A committed checkpoint's store: every data object exists (each is written, even when
    all fill value), so one that is absent was lost, not skipped. zarr would read it as fill
    values; this raises instead."""

    def __init__(self, store: Any, url: str) -> None:
        super().__init__(store)
        self._url = url

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        value = await self._store.get(key, prototype, byte_range)
        if value is None:
            raise missing_object(self._url, key)
        return value


class LazySparse:
    """A stored sparse leaf (``zstore._format.sparse``): shape, layout and the number of
    nonzeros without I/O; ``load()`` reads it whole, ``rows(start, stop)`` (CSR) or
    ``columns(start, stop)`` (CSC) only the nonzeros of those rows or columns, with two
    round trips (the pointers, then their indices and values), never densifying."""

    def __init__(self, name: str, body: dict[str, Any], parts: dict[str, LazyTensor]) -> None:
        self.name, self._body, self._parts = name, body, parts
        self.shape = tuple(body["shape"])
        self.layout: str = body["layout"]
        self.dtype = parts["values"].dtype
        self.nnz = parts["values"].shape[0]
        self.nbytes = sum(p.nbytes for p in parts.values())  # what is stored: ~ the nonzeros

    def __repr__(self) -> str:
        return (f"LazySparse({self.name!r}, {self.layout}, shape={self.shape}, "
                f"nnz={self.nnz}, dtype={self.dtype})")

    def load(self, framework: str | None = None) -> Any:
        """The whole sparse object, as saved (or as ``framework``: "torch" or "numpy",
        meaning scipy)."""
        parts = {part: tensor.read() for part, tensor in self._parts.items()}
        return build_sparse(self._body, parts, framework)

    def rows(self, start: int, stop: int, framework: str | None = None) -> Any:
        """Rows ``start:stop`` of a CSR matrix, as a CSR matrix of those rows."""
        return self._outer("csr", start, stop, framework)

    def columns(self, start: int, stop: int, framework: str | None = None) -> Any:
        """Columns ``start:stop`` of a CSC matrix, as a CSC matrix of those columns."""
        return self._outer("csc", start, stop, framework)

    def _outer(self, layout: str, start: int, stop: int, framework: str | None) -> Any:
        if self.layout != layout:
            raise ValueError(f"{self.name!r} is {self.layout.upper()}: "
                             + ("rows(...) reads CSR" if layout == "csr" else
                                "columns(...) reads CSC") + "; load() reads it whole")
        axis = 0 if layout == "csr" else 1
        start, stop, _ = slice(start, stop).indices(self.shape[axis])
        stop = max(start, stop)
        pointers = self._parts["indptr"][start:stop + 1]
        lo, hi = int(pointers[0]), int(pointers[-1])
        shape = list(self.shape)
        shape[axis] = stop - start
        parts = {"indptr": pointers - pointers[0],
                 "indices": self._parts["indices"][lo:hi],
                 "values": self._parts["values"][lo:hi]}
        return build_sparse({**self._body, "shape": shape}, parts, framework)


class Checkpoint(Mapping[str, LazyTensor]):
    """A committed checkpoint: a read-only mapping of array name to ``LazyTensor``.

    Names are tree paths joined by ``/``; 0-d tensors and numpy scalars are
    included (held inline), plain Python values are only in ``load()``'s tree.
    """

    def __init__(self, location: Location, manifest: Manifest, cipher: Cipher | None = None
                 ) -> None:
        self.url = location.url
        self.metadata = manifest.metadata
        self._location = location
        self._manifest = manifest
        self._cipher = cipher  # an encrypted checkpoint's key, where it was given
        self._tensors: dict[str, LazyTensor] = {}
        # one per open checkpoint, shared by its arrays
        store = self._store = ShardIndexCache(_CommittedObjects(location.store, location.url))
        self._stored: dict[str, LazyTensor] | None = None  # stored_arrays(), once built
        self._by_key: dict[str, LazyTensor] = {}  # tree.leaf_key -> the tensor it reads
        self._sparse: dict[str, dict[str, Any]] = {}  # name -> its sparse node's body
        self._parsed: dict[str, tuple[ArrayV3Metadata, ObjectFormat | None]] = {}
        if has_per_rank(manifest.tree):  # a multi-rank save's per-rank values: this rank's
            manifest.tree, borrowed = for_rank(manifest.tree, _this_rank())
            if borrowed:
                warnings.warn(
                    f"{location.url!r} keeps {len(borrowed)} value(s) per rank (e.g. "
                    f"{borrowed[0]!r}) for fewer ranks than this job has: rank "
                    f"{_this_rank()} sees rank 0's", stacklevel=3)
        for name, node in iter_leaves(manifest.tree):
            if "array" in node:
                path, member = node["array"], node.get("index")
                document = manifest.arrays[path]
                if path not in self._parsed:
                    self._parsed[path] = self._parse(path, name)
                share = 1 if member is None else max(1, document["shape"][0])
                self._tensors[name] = self._by_key.setdefault(leaf_key(node), LazyTensor(
                    name, location, store, path, document, None, node["kind"],
                    manifest.stored_bytes.get(path, 0) // share, member, self._parsed[path]))
            elif "sparse" in node:
                self._sparse[name] = node["sparse"]
            elif "scalar" in node:
                self._tensors[name] = LazyTensor(
                    name, location, store, None, None, scalar_value(node), node["kind"], 0)

    def _parse(self, path: str, name: str) -> tuple[ArrayV3Metadata, ObjectFormat | None]:
        """The array at ``path``'s parsed document; in an encrypted checkpoint, refused
        unless it is sealed under the recorded key as the array at ``path`` (the manifest
        is vouched for by the key, so an array swapped or left in the clear shows here)."""
        parsed = parse_document(self._manifest.arrays[path], name, self.url, self._cipher)
        record = self._manifest.encryption
        if record is not None and (parsed[1] is None
                                   or parsed[1].sealed != (path, record["key_id"])):
            raise CorruptCheckpointError(
                f"array {path!r} of the encrypted checkpoint {self.url!r} is not encrypted "
                f"as the array {path!r} under key id {record['key_id']!r}: its metadata was "
                "changed after the save", url=self.url, array=path)
        return parsed

    def __getitem__(self, name: str) -> LazyTensor:
        try:
            return self._tensors[name]
        except KeyError:
            if name in self._sparse:
                raise KeyError(f"{name!r} in {self.url!r} is a sparse leaf: read it with "
                               f"ckpt.sparse({name!r})") from None
            close = [n for n in self._tensors if name.split("/")[-1] in n][:5]
            hint = f"; similar names: {close}" if close else ""
            raise KeyError(f"no array {name!r} in checkpoint {self.url!r}{hint}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        inline = sum(t._path is None for t in self._tensors.values())
        return (f"Checkpoint({self.url!r}, {contents(len(self._unique_arrays()), inline)}, "
                f"{size(self.nbytes)})")

    @property
    def nbytes(self) -> int:
        """Logical bytes of every stored array, each counted once (ties share one)."""
        return sum(self._unique_arrays().values())

    @property
    def stored_nbytes(self) -> int:
        return sum(self._manifest.stored_bytes.values())

    @property
    def created(self) -> float:
        return self._manifest.created

    @property
    def encryption(self) -> dict[str, str] | None:
        """How the arrays are encrypted (``algorithm``, ``key_id``), None where they are not;
        never the key."""
        return self._manifest.encryption

    @property
    def entries(self) -> list[str | int]:
        """Top-level keys of the saved tree (empty unless it was saved from a dict)."""
        tree = self._manifest.tree
        return [key for key, _ in tree["dict"]] if "dict" in tree else []

    def array_documents(self) -> dict[str, tuple[dict[str, Any], int]]:
        """Each stored array's ``zarr.json`` document and stored bytes, by array path."""
        return {path: (doc, self._manifest.stored_bytes.get(path, 0))
                for path, doc in self._manifest.arrays.items()}

    def _unique_arrays(self) -> dict[str, int]:
        """Each stored array's logical bytes, by path (a stacked array's are its members')."""
        return {path: int(np.prod(doc["shape"])) * dtype_from_name(doc["data_type"]).itemsize
                for path, doc in self._manifest.arrays.items()}

    def stored_arrays(self) -> dict[str, LazyTensor]:
        """Every stored array as a tensor of its own, by path: a stacked array whole (its
        members are ``self[name]``) and the values other ranks kept per rank (see
        ``docs/distributed.md``); what checks every object reads. Built once."""
        if self._stored is None:
            self._stored = {}
            for tensor in self._tensors.values():
                path = tensor._path
                if path is None or path in self._stored:
                    continue
                self._stored[path] = tensor if tensor._member is None else LazyTensor(
                    path, self._location, self._store, path, self._manifest.arrays[path],
                    None, tensor.kind, self._manifest.stored_bytes.get(path, 0), None,
                    self._parsed[path])
            for path, document in self._manifest.arrays.items():  # other ranks' values
                if path not in self._stored:
                    self._stored[path] = LazyTensor(
                        path, self._location, self._store, path, document, None, "numpy",
                        self._manifest.stored_bytes.get(path, 0), None, self._parse(path, path))
        return self._stored

    def whole_stacks(self, tensors: Mapping[K, LazyTensor]) -> dict[LazyTensor, dict[int, K]]:
        """The stacked arrays every member of which is among ``tensors`` (by any key), each
        whole with {member index: key}: what a load reads stack by stack, one GET per shard,
        instead of member by member."""
        found: dict[str, dict[int, K]] = {}
        for key, tensor in tensors.items():
            if tensor._member is not None and tensor._path is not None:
                found.setdefault(tensor._path, {})[tensor._member] = key
        stored = self.stored_arrays()
        return {stored[path]: members for path, members in found.items()
                if len(members) == stored[path].shape[0]}

    def names(self, *globs: str) -> list[str]:
        """Names matching any of ``globs`` (fnmatch), in checkpoint order.

        Raises ``KeyError`` naming a glob that matches nothing: a typo in a
        partial load should fail, not load less than asked.
        """
        matched: list[str] = []
        for glob in globs:
            found = [n for n in self._tensors if fnmatch.fnmatchcase(n, glob)]
            if not found:
                raise KeyError(f"no array in {self.url!r} matches {glob!r}; "
                               f"names look like {list(self._tensors)[:3]}")
            matched.extend(n for n in found if n not in matched)
        return [n for n in self._tensors if n in matched]

    def read_many(self, requests: Mapping[str, Any] | Iterable[str], *,
                  max_concurrency: int | None = None) -> dict[str, np.ndarray]:
        """Several arrays or slices at once: ``{name: index}``, or names to read whole.

        All reads share one event loop, up to ``max_concurrency`` arrays in
        flight (None: ``zstore.Settings.load_concurrency``, 32), so many small
        tensors cost overlapped round trips.

        Example:
            >>> import numpy as np, zstore
            >>> _ = zstore.save({"a": np.arange(4), "b": np.ones((2, 2))}, "memory://doc/many")
            >>> got = zstore.open("memory://doc/many").read_many({"a": np.s_[1:3], "b": 0})
            >>> got["a"], got["b"]
            (array([1, 2]), array([1., 1.]))
        """
        wanted = dict(requests) if isinstance(requests, Mapping) else dict.fromkeys(requests, ...)
        tensors = {name: self[name] for name in wanted}
        return run(self.url, _gather({name: (tensors[name], index)
                                      for name, index in wanted.items()},
                                     concurrency(max_concurrency, saving=False)))

    def load(self, *, keys: Sequence[str] | None = None, framework: str | None = None,
             device: Any = None, into: Any = None, strict: bool = True, prefix: str = "",
             entries: Sequence[str | int] | None = None, progress: bool | None = None,
             max_concurrency: int | None = None, broadcast: bool = False,
             process_group: Any = None) -> Any:
        """The whole saved tree, or with ``keys`` (globs) a flat {name: array} of those only.

        ``entries`` keeps only these top-level keys of a tree saved as a dict
        (``entries=["optim", "rng"]``), reading none of the others' arrays.
        See ``zstore.load`` for the rest.
        """
        max_concurrency = concurrency(max_concurrency, saving=False)
        if into is not None:
            return load_into(self, into, strict=strict, prefix=prefix, progress=progress,
                             max_concurrency=max_concurrency, broadcast=broadcast,
                             process_group=process_group)
        if broadcast:
            raise ValueError("broadcast=True shares the tensors of a load(into=...) between "
                             "ranks; pass into= as well")
        if framework not in (None, "numpy", "torch"):
            raise ValueError(f"framework must be None, 'numpy' or 'torch', got {framework!r}")
        if device is not None:
            if framework == "numpy":
                raise ValueError("device= loads torch tensors; it cannot be combined with "
                                 "framework='numpy'")
            framework = "torch"
        if keys is not None:
            names = self.names(*([keys] if isinstance(keys, str) else keys))
            reads = {name: (self[name], ...) for name in names}
        else:
            skeleton = self._skeleton(entries)
            reads = {leaf_key(node): (self._by_key[leaf_key(node)], ...)
                     for _, node in iter_leaves(skeleton) if "array" in node}
            reads, members = self._whole_stacks(reads)
            stored = self.stored_arrays()
            reads.update((path, (stored[path], ...)) for _, node in iter_leaves(skeleton)
                         if "sparse" in node for path in node["sparse"]["arrays"].values())
        shown = bar(sum(t.nbytes for t, _ in reads.values()), f"loading {self.url}", progress)
        try:
            if device is None or _is_cpu(device):
                arrays = run(self.url, _gather(reads, max_concurrency, shown))
            else:
                arrays = run(self.url, _to_device(reads, device, max_concurrency, shown))
        finally:
            shown.close()
        if keys is not None:
            return {n: as_framework(arrays[n], self[n].kind, framework) for n in names}
        for key, (path, index) in members.items():  # views of their stacked array
            arrays[key] = arrays[path][index]
        for path in set(path for path, _ in members.values()):
            del arrays[path]
        return unflatten(skeleton, arrays, framework)

    @property
    def sparse_names(self) -> list[str]:
        """The names of the sparse leaves (``sparse(name)`` reads one), in tree order."""
        return list(self._sparse)

    def sparse(self, name: str) -> LazySparse:
        """The sparse leaf ``name`` (a torch sparse tensor or ``scipy.sparse`` matrix when
        saved): its shape and nonzeros known, its parts read when asked."""
        if name not in self._sparse:
            raise KeyError(f"no sparse leaf {name!r} in {self.url!r}; sparse leaves: "
                           f"{sorted(self._sparse)[:5]}")
        body = self._sparse[name]
        stored = self.stored_arrays()
        return LazySparse(name, body, {part: stored[path]
                                       for part, path in body["arrays"].items()})

    def lazy_tree(self) -> Any:
        """The saved tree as ``load()`` builds it, but with every stored array a
        ``LazyTensor`` (read nothing yet; tied names share one) and inline scalars as their
        values: what a conversion streams from."""
        arrays = {leaf_key(node): self._tensors[name]
                  for name, node in iter_leaves(self._manifest.tree) if "array" in node}
        return unflatten(self._manifest.tree, arrays, None)

    def _whole_stacks(self, reads: dict[str, tuple[LazyTensor, Any]]
                      ) -> tuple[dict[str, tuple[LazyTensor, Any]], dict[str, tuple[str, int]]]:
        """``reads`` with each stacked array whose every member is read whole read as one
        array instead (one GET per shard, as the plan counts), and where each of those
        members is in it: {read key: (stacked path, index)}."""
        members: dict[str, tuple[str, int]] = {}
        whole = {key: tensor for key, (tensor, index) in reads.items() if index is Ellipsis}
        for stack, keys in self.whole_stacks(whole).items():
            assert stack._path is not None
            for index, key in keys.items():
                del reads[key]
                members[key] = (stack._path, index)
            reads[stack._path] = (stack, ...)
        return reads, members

    def _skeleton(self, entries: Sequence[str | int] | None) -> dict[str, Any]:
        tree = self._manifest.tree
        if entries is None:
            return tree
        if "dict" not in tree:
            raise KeyError(f"entries= needs a checkpoint saved from a dict; {self.url!r} "
                           f"holds a {next(iter(tree))}")
        present = dict((key, node) for key, node in tree["dict"])
        missing = [e for e in entries if e not in present]
        if missing:
            raise KeyError(f"{self.url!r} has no top-level entries {missing}; it has "
                           f"{list(present)}")
        return {"dict": [[key, node] for key, node in tree["dict"] if key in entries]}


async def _gather(reads: dict[str, tuple[LazyTensor, Any]], max_concurrency: int,
                  shown: Any = None) -> dict[str, np.ndarray]:
    """Every read at once in this event loop: at most ``max_concurrency`` in flight, and
    at most ``Settings.read_budget`` bytes in flight besides the results (see ``_read``)."""
    limit, budget = asyncio.Semaphore(max_concurrency), ByteBudget(current().read_budget)

    async def one(key: str, tensor: LazyTensor, index: Any) -> tuple[str, np.ndarray]:
        async with limit:
            result = await tensor._read(index, None, budget)
        if shown is not None:
            shown.update(result.nbytes)
        return key, result

    return dict(await gather_all(one(k, t, i) for k, (t, i) in reads.items()))


async def _to_device(reads: dict[str, tuple[LazyTensor, Any]], device: Any,
                     max_concurrency: int, shown: Any = None) -> dict[str, Any]:
    """``_gather`` onto an accelerator: decoding the next read overlaps the last one's copy."""
    stager = DeviceStager(device)
    limit = asyncio.Semaphore(max_concurrency)

    async def one(key: str, tensor: LazyTensor, index: Any) -> tuple[str, Any]:
        async with limit:
            result = await stager.to_device(tensor, index)
        if shown is not None:
            shown.update(tensor.nbytes)
        return key, result

    done = dict(await gather_all(one(k, t, i) for k, (t, i) in reads.items()))
    stager.finish()
    return done


def open(url: str, *, storage_options: dict[str, Any] | None = None,  # noqa: A001
         encryption_key: KeySource | None = None) -> Checkpoint:
    """Open the committed checkpoint at ``url`` lazily: two small reads, no array data.

    ``encryption_key``: the key an encrypted checkpoint was saved with (32 bytes, or a
    provider called with the recorded key id), checked here, with the HMAC under it that
    the commit marker keeps of the metadata. Without it, an encrypted checkpoint still
    opens (names, shapes, metadata: unauthenticated), and reading an array raises
    ``EncryptionKeyError``; with it, a checkpoint that is not encrypted is refused.

    Raises:
        CheckpointNotFoundError: nothing is saved at ``url``.
        IncompleteCheckpointError: a save there never committed.
        CorruptCheckpointError, UnsupportedFormatError: the metadata cannot be trusted/read.
        EncryptionKeyError: ``encryption_key`` is not the key the checkpoint was saved with,
            or the checkpoint is not encrypted.

    Example:
        >>> import numpy as np, zstore
        >>> _ = zstore.save({"emb": np.zeros((100, 8), "float32")}, "memory://doc/open")
        >>> ckpt = zstore.open("memory://doc/open")
        >>> ckpt["emb"][10:12].shape
        (2, 8)
    """
    location = resolve(url, storage_options)
    root, commit = run(url, _fetch_metadata(location))
    try:
        manifest = read_manifest(root, commit, url)
    except CheckpointNotFoundError as e:
        raise _not_a_checkpoint(location, e) from None
    assert root is not None and commit is not None  # read_manifest found both
    cipher = cipher_for(manifest.encryption, encryption_key, url, root, vouched_by(commit))
    try:
        check_skeleton(manifest.tree)
        return Checkpoint(location, manifest, cipher)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as e:
        raise CorruptCheckpointError(
            f"the manifest of {url!r} is committed but malformed ({type(e).__name__}: {e}); "
            "it was not written by this zstore", url=url, key=ROOT) from None


def _not_a_checkpoint(location: Location, error: CheckpointNotFoundError
                      ) -> CheckpointNotFoundError:
    """The error for a URL that holds no checkpoint, saying what it holds instead and what
    to open: a ``CheckpointManager`` run's steps, checkpoints further down, a file of
    another format. Only on this error path: it costs a listing or two."""
    url = location.url
    try:
        found = run(url, survey_at(location, depth=2))
    except CheckpointNotFoundError as absent:  # a file, or nothing at all
        return absent
    if found is None or not found.checkpoints:
        return error
    steps = sorted((s, e) for e in found.checkpoints if (s := step_of(e.name)) is not None)
    if steps:
        committed = [s for s, e in steps if e.complete]
        shown = ", ".join(f"{s}" + ("" if e.complete else " (not committed)")
                          for s, e in steps[-8:])
        newest = committed[-1] if committed else steps[-1][0]
        return CheckpointNotFoundError(
            f"{url!r} is the root of a CheckpointManager run, not a checkpoint: it holds "
            f"{len(steps)} step(s) ({'..., ' if len(steps) > 8 else ''}{shown}). Open one "
            f"with zstore.open({url.rstrip('/') + '/' + step_name(newest)!r}), or "
            f"zstore.CheckpointManager({url!r}).open() for the newest committed step",
            url=url)
    names = sorted((e.name for e in found.checkpoints), key=natural)
    return CheckpointNotFoundError(
        f"no checkpoint at {url!r}, but {len(names)} below it: "
        f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''}; open one of those "
        f"(`zstore ls {url}` lists them)", url=url)


async def _fetch_metadata(location: Location) -> tuple[bytes | None, bytes | None]:
    root, commit = await gather_all([location.get(ROOT), location.get(COMMIT_MARKER)])
    if root is None and commit is None:
        await location.require_bucket()  # a missing bucket says so, as a save's error does
    return root, commit


def _this_rank() -> int:
    """This process's rank in an initialized ``torch.distributed`` job, else 0."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not (dist.is_available() and dist.is_initialized()):
        return 0
    return int(dist.get_rank())


def load(url: str, *, storage_options: dict[str, Any] | None = None,
         keys: Sequence[str] | None = None, framework: str | None = None,
         device: Any = None, into: Any = None, strict: bool = True, prefix: str = "",
         progress: bool | None = None, max_concurrency: int | None = None,
         broadcast: bool = False, process_group: Any = None,
         encryption_key: KeySource | None = None) -> Any:
    """Load the whole tree saved at ``url``, only the arrays named by ``keys``, or into a model.

    Args:
        keys: name globs (``["model/layers.0.*", "*embed*"]``): then a flat
            {name: array} of the matching arrays, fetched concurrently; a glob
            matching nothing raises ``KeyError``.
        framework: None gives every leaf back as it was saved (torch tensors as
            torch, numpy as numpy); ``"numpy"`` or ``"torch"`` converts all arrays.
        device: a torch device (``"cuda"``, ``"cuda:1"``): every array becomes a torch
            tensor there, decoded into reused pinned host buffers whose copies to
            the device overlap the decoding of the next array.
        into: a ``torch.nn.Module``, a state dict, or a tree of them (``{"model": sd,
            "optim": osd}``, named as ``save`` names it) to fill in place, tensor by
            tensor, on its own devices (CPU tensors are decoded straight into
            their memory); returns a ``LoadReport``. Names are ``prefix`` + key
            (``prefix="model/"`` for a checkpoint saved as ``{"model": sd, ...}``).
            A DTensor is filled with its part of the global array, whatever mesh,
            placements and number of ranks saved it (see ``docs/distributed.md``).
        strict: with ``into``, missing or unexpected keys are an error, like
            ``load_state_dict``; shape mismatches always are, before any change.
        progress: a progress bar on stderr (tqdm); default: only on a terminal,
            for loads over 256 MiB.
        max_concurrency: arrays read at once, with ``into`` too; None:
            ``zstore.Settings.load_concurrency`` (32). The bytes in flight stay
            bounded by ``Settings.read_budget`` (64 MiB) or, for tensors staged
            for a device or a cast, ``Settings.staging_budget`` (256 MiB).
        broadcast: with ``into`` under ``torch.distributed``, a collective call: each
            plain (replicated) tensor is read by one rank of ``process_group`` (default:
            all ranks), the bytes spread evenly, and broadcast to the others over a gloo
            group of zstore's own. The store then serves each byte once, not once per
            rank: worth it on S3; on local NVMe reading is faster. DTensors always read
            their own part.
        encryption_key: the key an encrypted checkpoint was saved with (see ``open``).

    Raises:
        StateMismatchError: with ``into``, keys or shapes disagree (nothing changed).
        PartialLoadError: with ``into``, a read failed after the target began to
            change; it lists what was filled, what is undefined and what is unchanged.
        DeviceUnavailableError: ``device`` does not exist here (no CUDA, say).

    Example:
        >>> import numpy as np, zstore
        >>> _ = zstore.save({"a": [np.ones(2), (1, "x")]}, "memory://doc/load")
        >>> zstore.load("memory://doc/load")
        {'a': [array([1., 1.]), (1, 'x')]}
    """
    return open(url, storage_options=storage_options, encryption_key=encryption_key).load(
        keys=keys, framework=framework, device=device, into=into, strict=strict,
        prefix=prefix, progress=progress, max_concurrency=max_concurrency,
        broadcast=broadcast, process_group=process_group)
