"""PyTorch DCP's ``StorageReader`` over zstore: ``dcp.load(sd, storage_reader=...)`` reads a
zstore checkpoint, whether ``zstore.save`` or zstore's DCP writer wrote it.

DCP names every leaf of a state dict by its keys joined with ``.`` (``model.0.weight``);
the reader gives DCP that name for every leaf of the checkpoint's tree, each array as one
chunk holding the whole global tensor. DCP's load planner then asks for boxes of it (each
rank its own part), and each box is read lazily: only the objects it touches. Plain values
are handed to DCP as it expects them, pickled by ``torch.save`` here from values zstore
stored as JSON; arrays of bytes DCP pickled are handed back as they were.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from zstore._format.tensors import numpy_to_torch, require_torch, torch_dtype_of
from zstore._format.tree import unflatten
from zstore._options import concurrency, current


def storage_reader_class() -> type:
    """The ``StorageReader`` subclass (made on first use: torch is an optional extra)."""
    torch = require_torch()
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        ChunkStorageMetadata,
        Metadata,
        TensorProperties,
        TensorStorageMetadata,
    )
    from torch.distributed.checkpoint.planner import LoadItemType
    from torch.distributed.checkpoint.storage import StorageReader
    from torch.futures import Future

    from zstore._read.reader import _gather
    from zstore._read.reader import open as open_checkpoint
    from zstore._storage.location import run

    class ZStoreStorageReader(StorageReader):
        """``dcp.load(state, storage_reader=zstore.dcp.StorageReader(url))``."""

        def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
            super().__init__()
            self.url, self.options = str(url), storage_options
            self._ckpt: Any = None
            self._leaves: dict[str, tuple[str, Any]] = {}  # fqn -> (array name | value)

        def reset(self, checkpoint_id: Any = None) -> None:
            if checkpoint_id is not None:
                self.url = str(checkpoint_id)
            self._ckpt, self._leaves = None, {}

        def _open(self) -> Any:
            if self._ckpt is None:
                self._ckpt = open_checkpoint(self.url, storage_options=self.options)
                self._leaves = _dcp_leaves(self._ckpt)
            return self._ckpt

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            ckpt = self._open()
            entries: dict[str, Any] = {}
            for fqn, (kind, what) in self._leaves.items():
                if kind == "array":
                    tensor = ckpt[what]
                    size = torch.Size(tensor.shape)
                    entries[fqn] = TensorStorageMetadata(
                        TensorProperties(dtype=torch_dtype_of(tensor.dtype)), size,
                        [ChunkStorageMetadata(torch.Size([0] * len(size)), size)])
                else:
                    entries[fqn] = BytesStorageMetadata()
            return Metadata(state_dict_metadata=entries)

        def set_up_storage_reader(self, metadata: Any, is_coordinator: bool, *args: Any,
                                  **kwargs: Any) -> None:
            self._open()

        def prepare_local_plan(self, plan: Any) -> Any:
            return plan

        def prepare_global_plan(self, plans: list[Any]) -> list[Any]:
            return plans

        def read_data(self, plan: Any, planner: Any) -> Any:
            """Every box of the plan, read concurrently in batches of at most
            ``Settings.staging_budget`` decoded bytes (one larger box alone), each batch
            copied into its targets before the next is read."""
            ckpt = self._open()
            batches: list[dict[str, Any]] = [{}]
            held = 0
            for i, item in enumerate(plan.items):
                kind, what = self._leaves[item.storage_index.fqn]
                if item.type == LoadItemType.BYTE_IO:
                    planner.load_bytes(item, io.BytesIO(self._bytes(kind, what)))
                    continue
                box = tuple(slice(int(o), int(o) + int(n))
                            for o, n in zip(item.storage_offsets, item.lengths))
                nbytes = math.prod(int(n) for n in item.lengths) * ckpt[what].dtype.itemsize
                if batches[-1] and held + nbytes > current().staging_budget:
                    batches.append({})
                    held = 0
                batches[-1][str(i)] = (ckpt[what], box)
                held += nbytes
            for batch in batches:
                if not batch:
                    continue
                loaded = run(self.url, _gather(batch, concurrency(None, saving=False)))
                for key, data in loaded.items():
                    item = plan.items[int(key)]
                    target = planner.resolve_tensor(item).detach()
                    target.copy_(numpy_to_torch(np.asarray(data)).reshape(target.shape))
                    planner.commit_tensor(item, target)
            future: Any = Future()
            future.set_result(None)
            return future

        def _bytes(self, kind: str, what: Any) -> bytes:
            """What DCP loads for a non-tensor leaf: the bytes it pickled, or a value pickled
            here (zstore keeps plain values as JSON)."""
            if kind == "array":  # DCP's own pickle, kept as uint8
                return bytes(self._ckpt[what][...].tobytes())
            buffer = io.BytesIO()
            torch.save(what, buffer)
            return buffer.getvalue()

        @classmethod
        def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
            return isinstance(checkpoint_id, str) or hasattr(checkpoint_id, "__fspath__")

    return ZStoreStorageReader


def _dcp_leaves(ckpt: Any) -> dict[str, tuple[str, Any]]:
    """{DCP name: ("array", array name) or ("value", Python value)} for every leaf DCP sees.

    DCP walks dicts, and lists that hold tensors or dicts; any other list, and every
    tuple, is one value to it (``traverse_state_dict``). An inline scalar (an optimizer's
    step) is a 0-d tensor to DCP."""
    found: dict[str, tuple[str, Any]] = {}

    def terminal(node: dict[str, Any]) -> bool:
        kind = next(iter(node))
        if kind == "dict" or kind in ("array", "scalar"):
            return False
        if kind == "list":
            return all(terminal(child) for child in node["list"])
        return True  # a tuple, or a Python value

    def visit(node: dict[str, Any], keys: tuple[str, ...]) -> None:
        kind = next(iter(node))
        if kind == "dict":
            for key, child in node["dict"]:
                visit(child, (*keys, str(key)))
        elif kind in ("array", "scalar"):
            found[".".join(keys)] = ("array", "/".join(keys))
        elif terminal(node):
            found[".".join(keys)] = ("value", unflatten(node, {}, None))
        else:
            for i, child in enumerate(node[kind]):
                visit(child, (*keys, str(i)))

    visit(ckpt._manifest.tree, ())
    return found
