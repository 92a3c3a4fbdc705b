"""The contenders: zstore and the baselines it is measured against, one interface.

Each system saves a state dict to a URL and loads it back whole. ``raw`` is the
storage limit for the same bytes: one file on local disk; 8 MiB objects put and
got in parallel through s3fs on S3. safetensors and ``torch.save`` write local
files; PyTorch DCP goes through its fsspec writer and reader on both backends.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np

import zstore
from zstore._format.tensors import is_torch_tensor, numpy_to_torch, torch_to_numpy

PART = 8 << 20


@dataclass
class Target:
    """A place a system writes to: a URL and the fsspec options to reach it."""

    url: str
    options: dict[str, Any]

    @property
    def is_local(self) -> bool:
        return "://" not in self.url

    def fs(self) -> Any:
        """A filesystem with no listing cache: every system writes through its own client."""
        options = dict(self.options)
        if not self.is_local:
            options["use_listings_cache"] = False
        return fsspec.core.url_to_fs(self.url, **options)[0]


class System:
    name = ""
    local_only = False

    def prepare(self, state: dict[str, np.ndarray]) -> None:
        """Anything done once, outside the timings (conversions, templates)."""

    def save(self, state: dict[str, np.ndarray], target: Target) -> None:
        raise NotImplementedError

    def load(self, target: Target) -> Any:
        raise NotImplementedError


class Zstore(System):
    """zstore as a user gets it (the planner's default layout, codec ``auto``), or a codec
    forced."""

    def __init__(self, codec: str = "auto") -> None:
        self.codec = codec
        self.name = "zstore" if codec == "auto" else f"zstore[{codec}]"

    def save(self, state: dict[str, np.ndarray], target: Target) -> None:
        zstore.save(state, target.url, storage_options=target.options, codec=self.codec,
                    overwrite=True)

    def load(self, target: Target) -> Any:
        return zstore.load(target.url, storage_options=target.options)


class Raw(System):
    """The same bytes with no format at all: the storage limit."""

    name = "raw"

    def prepare(self, state: dict[str, np.ndarray]) -> None:
        self.total = sum(a.nbytes for a in state.values())

    def _parts(self, state: dict[str, np.ndarray]) -> list[memoryview]:
        parts = []
        for array in state.values():
            flat = memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
            parts.extend(flat[i:i + PART] for i in range(0, len(flat), PART))
        return parts

    def save(self, state: dict[str, np.ndarray], target: Target) -> None:
        if target.is_local:
            os.makedirs(target.url, exist_ok=True)
            with open(os.path.join(target.url, "raw.bin"), "wb") as f:
                for part in self._parts(state):
                    f.write(part)
            return
        fs = target.fs()
        fs.pipe({f"{target.url}/part-{i:05d}": bytes(p) for i, p in enumerate(self._parts(state))})

    def load(self, target: Target) -> Any:
        if target.is_local:
            out = np.empty(self.total, np.uint8)
            with open(os.path.join(target.url, "raw.bin"), "rb") as f:
                f.readinto(memoryview(out))
            return out
        fs = target.fs()
        return fs.cat(sorted(fs.find(target.url)))


class Safetensors(System):
    name = "safetensors"
    local_only = True

    def prepare(self, state: dict[str, np.ndarray]) -> None:
        self.tensors = {k: numpy_to_torch(np.ascontiguousarray(v)) for k, v in state.items()}

    def save(self, state: dict[str, np.ndarray], target: Target) -> None:
        from safetensors.torch import save_file

        os.makedirs(target.url, exist_ok=True)
        save_file(self.tensors, os.path.join(target.url, "model.safetensors"))

    def load(self, target: Target) -> Any:
        from safetensors.torch import load_file

        return load_file(os.path.join(target.url, "model.safetensors"))


class TorchSave(System):
    name = "torch.save"
    local_only = True

    def prepare(self, state: dict[str, np.ndarray]) -> None:
        self.tensors = {k: numpy_to_torch(v) for k, v in state.items()}

    def save(self, state: dict[str, np.ndarray], target: Target) -> None:
        import torch

        os.makedirs(target.url, exist_ok=True)
        torch.save(self.tensors, os.path.join(target.url, "model.pt"))

    def load(self, target: Target) -> Any:
        import torch

        return torch.load(os.path.join(target.url, "model.pt"), weights_only=True)


class DCP(System):
    """PyTorch distributed checkpoint, single process, through its fsspec writer/reader.

    On S3 it writes one file per tensor (``single_file_per_rank=False``): its
    default, one file per rank, goes through a multipart upload that moto serves
    slowly and, in our runs, with server errors, which would measure moto.
    """

    name = "dcp"

    def prepare(self, state: dict[str, np.ndarray]) -> None:
        import torch

        self.tensors = {k: numpy_to_torch(v) for k, v in state.items()}
        self.template = {k: torch.empty_like(v) for k, v in self.tensors.items()}

    def save(self, state: dict[str, np.ndarray], target: Target) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

        writer = FsspecWriter(target.url, single_file_per_rank=target.is_local, **target.options)
        dcp.save(self.tensors, storage_writer=writer)

    def load(self, target: Target) -> Any:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

        dcp.load(self.template, storage_reader=FsspecReader(target.url, **target.options))
        return self.template


def touch(loaded: Any) -> int:
    """Read one byte of every page of a loaded result, so lazy (mmap) loads pay for their data.

    safetensors' ``load_file`` maps the file and returns before reading it; a
    training job touches every byte soon after, so every system pays for it here.
    """
    if isinstance(loaded, dict):
        return sum(touch(v) for v in loaded.values())
    if isinstance(loaded, (list, tuple)):
        return sum(touch(v) for v in loaded)
    if isinstance(loaded, (bytes, bytearray)):
        return sum(memoryview(loaded)[::4096])
    array = torch_to_numpy(loaded, "loaded") if is_torch_tensor(loaded) else np.asarray(loaded)
    return int(np.ascontiguousarray(array).reshape(-1).view(np.uint8)[::4096].sum())


def safetensors_blob(state: dict[str, np.ndarray]) -> bytes:
    """A safetensors file of ``state``, in memory."""
    from safetensors.torch import save

    return save({k: numpy_to_torch(np.ascontiguousarray(v)) for k, v in state.items()})
