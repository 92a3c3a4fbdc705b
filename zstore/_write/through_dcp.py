"""PyTorch DCP's ``StorageWriter`` over zstore: ``dcp.save(sd, storage_writer=...)`` writes a
zstore checkpoint (global arrays, lease, commit marker) instead of DCP's files.

DCP drives the save: every rank makes a local plan of write items (each tensor, or each
rank's shard of a DTensor, as a box of the global tensor: DCP has already left one copy of
each replicated item), the coordinator sees every plan (``prepare_global_plan``), every
rank writes (``write_data``), the coordinator finishes. zstore puts its own steps in those
places: the coordinator plans every array's layout from the boxes (object boundaries on
every box boundary, as ``collective`` does), assigns each object to one rank that holds
it, takes the lease and writes the metadata; every rank writes its objects, the others
following the lease; the coordinator commits in ``finish``.

Plain values (numbers, strings, lists of them: an optimizer's ``param_groups``) are kept
as values in the manifest, not pickled. Any other object DCP hands over as pickled bytes
is stored as a uint8 array of those bytes, which zstore never unpickles.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from contextlib import AsyncExitStack
from typing import Any

import numpy as np

from zstore._compat import sync
from zstore._format.layout import Layout, array_metadata
from zstore._format.manifest import Manifest
from zstore._format.tensors import host_array, require_torch, torch_numpy_dtype
from zstore._format.tree import flatten, iter_leaves
from zstore._options import current
from zstore._plan.planner import plan_specs
from zstore._plan.profiles import profile_for
from zstore._ranks import Box, Part
from zstore._storage.failures import storage_errors
from zstore._storage.location import resolve
from zstore._version import __version__
from zstore._write.collective import write_mine, writers_of
from zstore._write.lease import Lease


@dataclasses.dataclass(frozen=True)
class _Spec:
    """An array leaf for ``flatten(specs=True)``: shape and dtype, no data."""

    shape: tuple[int, ...]
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _Work:
    """What the coordinator sends each rank with its plan."""

    names: dict[str, str]  # DCP fqn -> zstore array name
    documents: dict[str, dict[str, Any]]  # array name -> zarr.json
    mine: dict[str, list[Box]]  # array name -> the objects this rank writes
    lease: tuple[str, str]  # the lease's token and version
    since: float  # this rank's clock before the lease could exist (set on arrival)


def _plain(value: Any) -> bool:
    """A value the manifest keeps as it is (JSON-like, no pickle)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in value.items())
    return False


def storage_writer_class() -> type:
    """The ``StorageWriter`` subclass (made on first use: torch is an optional extra)."""
    require_torch()
    from torch.distributed.checkpoint.planner import WriteItemType
    from torch.distributed.checkpoint.storage import StorageWriter, WriteResult
    from torch.futures import Future

    class ZStoreStorageWriter(StorageWriter):
        """``dcp.save(state, storage_writer=zstore.dcp.StorageWriter(url))``: a zstore
        checkpoint at ``url``, readable by ``zstore.open`` and by ``StorageReader``."""

        def __init__(self, url: str, storage_options: dict[str, Any] | None = None, *,
                     codec: str = "auto") -> None:
            super().__init__()
            self.url, self.options, self.codec = str(url), storage_options, codec
            self.rank, self.is_coordinator = 0, True
            self._location: Any = None
            self._stack: AsyncExitStack | None = None
            self._lease: Lease | None = None
            self._manifest: Manifest | None = None
            self._specs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
            self._timer: asyncio.TimerHandle | None = None
            self._since = time.time()

        def reset(self, checkpoint_id: Any = None) -> None:
            self._end()  # a save that failed on some rank never reached finish
            if checkpoint_id is not None:
                self.url = str(checkpoint_id)
            self._location = None

        def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any
                                  ) -> None:
            self.is_coordinator = is_coordinator
            self.rank = int(kwargs.get("rank", _rank()))
            self._location = resolve(self.url, self.options)

        def storage_meta(self) -> Any:
            return None

        def prepare_local_plan(self, plan: Any) -> Any:
            # DCP gathers every rank's local plan next, and only then does the coordinator
            # take the lease: this rank's fence starts here, as late as it can be proven.
            self._since = time.time()
            return plan

        def prepare_global_plan(self, plans: list[Any]) -> list[Any]:
            names: dict[str, str] = {}
            specs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
            held: dict[str, list[Box | None]] = {}
            for rank, plan in enumerate(plans):
                mappings = plan.planner_data or {}
                for item in plan.items:
                    fqn = item.index.fqn
                    path = mappings.get(fqn, (fqn,))
                    names[fqn] = "/".join(s for key in path for s in str(key).split("/"))
                    if item.tensor_data is None or len(item.tensor_data.size) == 0:
                        continue  # a value, or a 0-d tensor: kept in the manifest
                    name = names[fqn]
                    shape = tuple(int(n) for n in item.tensor_data.size)
                    dtype = torch_numpy_dtype(_empty(item.tensor_data.properties.dtype), name)
                    specs[name] = (shape, dtype)
                    boxes = held.setdefault(name, [None] * len(plans))
                    if boxes[rank] is not None:
                        raise ValueError(f"{name!r}: rank {rank} holds several parts of it; "
                                         "zstore's DCP writer takes one box per rank")
                    chunk = item.tensor_data.chunk
                    boxes[rank] = tuple((int(o), int(o) + int(n))
                                        for o, n in zip(chunk.offsets, chunk.sizes))
            self._specs = specs
            plan = plan_specs(specs, access=None, profile=profile_for(self.url, None),
                              codec=self.codec, cores=None, stack=False, held=held)
            writers = writers_of(plan, held, len(plans))
            documents = {path: array_metadata(path, a.shape, a.dtype, a.layout, a.members)
                         for path, a in plan.arrays.items()}
            self._manifest = Manifest(tree={}, metadata={}, arrays=dict(documents),
                                      zstore_version=__version__)
            token = self._begin(documents)
            mine: list[dict[str, list[Box]]] = [{} for _ in plans]
            for (path, box), rank in writers.items():
                mine[rank].setdefault(path, []).append(box)
            return [dataclasses.replace(p, storage_data=_Work(names, documents, mine[rank],
                                                              token, 0.0))
                    for rank, p in enumerate(plans)]

        def _begin(self, documents: dict[str, dict[str, Any]]) -> tuple[str, str]:
            """The coordinator: refuse a committed checkpoint, take the lease (held until
            ``finish``, or for ``collective_timeout`` at most), clear, write metadata."""
            from zstore._write.writer import (
                _refuse_committed,
                claim_destination,
                write_documents,
            )

            location = self._location
            lease = self._lease = Lease(location)
            stack = self._stack = AsyncExitStack()

            async def begin() -> None:
                await _refuse_committed(location, False)
                await stack.enter_async_context(lease.held())
                self._arm()
                await claim_destination(location, False)
                assert self._manifest is not None
                await write_documents(location, self._manifest, _limit())

            with storage_errors(self.url, saving=True):
                try:
                    sync(begin())
                except BaseException:
                    self._end()
                    raise
            return lease.token, lease.version

        def _arm(self) -> None:
            """(On the event loop.) DCP calls nothing here when another rank fails: the
            lease goes ``collective_timeout`` after the coordinator's last step at the
            latest, as a multi-rank save's exchanges would time out."""
            stack = self._stack
            if self._timer is not None:
                self._timer.cancel()
            if stack is not None:
                self._timer = asyncio.get_running_loop().call_later(
                    current().collective_timeout, lambda: asyncio.ensure_future(stack.aclose()))

        def _end(self) -> None:
            """Close the gate and release the lease, however the save ends."""
            stack, self._stack = self._stack, None
            if stack is not None:
                sync(stack.aclose())

        def write_data(self, plan: Any, planner: Any) -> Any:
            work: _Work = plan.storage_data
            arrays: dict[str, Any] = {}
            results: list[Any] = []
            values = getattr(planner, "state_dict", {})
            extra: dict[str, dict[str, Any]] = {}
            for item in plan.items:
                name = work.names[item.index.fqn]
                if item.type == WriteItemType.BYTE_IO:
                    value = values.get(item.index.fqn, _MISSING)
                    if value is not _MISSING and _plain(value):
                        results.append(WriteResult(item.index, 0, {"value": value}))
                        continue
                    data = np.frombuffer(planner.resolve_data(item).getbuffer(), np.uint8)
                    layout = Layout((max(1, data.size),), None, "none")
                    extra[name] = array_metadata(name, (data.size,), data.dtype, layout, ())
                    arrays[name] = Part(data, ((0, data.size),), (data.size,))
                    results.append(WriteResult(item.index, data.size,
                                               {"bytes": extra[name]}))
                    continue
                tensor = planner.resolve_data(item).detach()
                if tensor.ndim == 0:  # an optimizer's step: inline, as zstore.save keeps it
                    results.append(WriteResult(item.index, 0,
                                               {"scalar": host_array(tensor, name).copy()}))
                    continue
                chunk = item.tensor_data.chunk
                box = tuple((int(o), int(o) + int(n)) for o, n in zip(chunk.offsets,
                                                                      chunk.sizes))
                shape = tuple(int(n) for n in item.tensor_data.size)
                arrays[name] = Part(host_array(tensor, name), box, shape)
                results.append(WriteResult(item.index, tensor.numel() * tensor.element_size(),
                                           {"array": name}))
            documents = {**work.documents, **extra}
            mine: dict[str, list[Box]] = {**work.mine, **{
                name: [((0, arrays[name].shape[0]),)] for name in extra}}
            manifest = Manifest(tree={}, metadata={}, arrays=documents,
                                zstore_version=__version__)
            with storage_errors(self.url, saving=True):
                if self.is_coordinator:
                    try:
                        sync(self._lead(manifest, arrays, mine))
                    except BaseException:
                        self._end()
                        raise
                else:
                    sync(self._follow(work, manifest, arrays, mine))
            future: Any = Future()
            future.set_result(results)
            return future

        async def _lead(self, manifest: Manifest, arrays: dict[str, Any],
                        mine: dict[str, list[Box]]) -> None:
            await write_mine(self._location, manifest, arrays, mine, None)
            self._arm()  # the others' writes, then finish: within the timeout from here

        async def _follow(self, work: _Work, manifest: Manifest, arrays: dict[str, Any],
                          mine: dict[str, list[Box]]) -> None:
            async with Lease(self._location).followed(*work.lease, self._since):
                await write_mine(self._location, manifest, arrays, mine, None)

        def finish(self, metadata: Any, results: list[list[Any]]) -> None:
            from zstore._write.writer import commit, write_documents

            assert self._manifest is not None and self._lease is not None
            try:
                tree: dict[str, Any] = {}
                pickled: set[str] = set()
                scalars: set[str] = set()  # 0-d tensors, inline
                mappings = metadata.planner_data or {}
                for result in (r for rank in results for r in rank):
                    fqn = result.index.fqn
                    path = mappings.get(fqn, (fqn,))
                    data = result.storage_data
                    if "value" in data:
                        leaf: Any = data["value"]
                    elif "scalar" in data:
                        leaf = data["scalar"]  # 0-d numpy: flatten keeps it inline
                        scalars.add(_joined(path))
                    elif "bytes" in data:
                        self._manifest.arrays[_joined(path)] = data["bytes"]
                        pickled.add(_joined(path))
                        leaf = _Spec((int(data["bytes"]["shape"][0]),), np.dtype(np.uint8))
                    else:
                        leaf = _Spec(*self._specs[data["array"]])
                    _place(tree, path, leaf)
                skeleton = flatten(tree, specs=True).skeleton
                for name, node in iter_leaves(skeleton):
                    if "array" in node:  # tensors as torch, DCP's pickles as numpy bytes
                        node["kind"] = "numpy" if node["array"] in pickled else "torch"
                    elif name in scalars:
                        node["kind"] = "torch"
                self._manifest.tree = skeleton
                manifest, lease = self._manifest, self._lease
                with storage_errors(self.url, saving=True):  # documents of pickles too
                    sync(write_documents(self._location, manifest, _limit()))
                    sync(commit(self._location, manifest, lease, {}, None))
            finally:
                self._end()

        @classmethod
        def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
            return isinstance(checkpoint_id, str) or hasattr(checkpoint_id, "__fspath__")

    return ZStoreStorageWriter


_MISSING = object()


def _limit() -> Any:
    return asyncio.Semaphore(max(1, current().save_concurrency))


def _rank() -> int:
    import torch.distributed as dist

    return int(dist.get_rank()) if dist.is_available() and dist.is_initialized() else 0


def _empty(dtype: Any) -> Any:
    import torch

    return torch.empty(0, dtype=dtype)


def _joined(path: tuple[Any, ...]) -> str:
    return "/".join(s for key in path for s in str(key).split("/"))


def _place(tree: dict[str, Any], path: tuple[Any, ...], leaf: Any) -> None:
    """Put ``leaf`` at ``path`` in a nested dict (list positions become dict keys, as DCP
    names them)."""
    node: dict[Any, Any] = tree
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = leaf

