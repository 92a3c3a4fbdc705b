"""The contenders: zstore and the baselines it is measured against, one interface.

Each system saves a state dict to a URL and loads it back whole. ``raw`` is the
storage limit for the same bytes: one file on local disk; 8 MiB objects put and
got in parallel through s3fs on S3 (``raw[obstore]``: through obstore, the client zstore's
S3 reads use). safetensors and ``torch.save`` write local
files; PyTorch DCP goes through its fsspec writer and reader on both backends.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
from zarr.core.sync import sync

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
    s3_only = False

    def prepare(self, state: dict[str, np.ndarray]) -> None:
        """Anything done once, outside the timings (conversions, templates)."""

    def save(self, state: dict[str, np.ndarray], target: Target) -> None:
        raise NotImplementedError

    def load(self, target: Target) -> Any:
        raise NotImplementedError


class Zstore(System):
    """zstore as a user gets it (the planner's default layout, codec ``auto``, S3 reads
    through obstore), or a codec or an S3 reader forced (``reader="s3fs"``: as before
    obstore was adopted)."""

    def __init__(self, codec: str = "auto", reader: str = "auto") -> None:
        self.codec, self.reader = codec, reader
        forced = [c for c in (codec, reader) if c != "auto"]
        self.name = f"zstore[{','.join(forced)}]" if forced else "zstore"
        self.s3_only = reader != "auto"

    def save(self, state: dict[str, np.ndarray], target: Target) -> None:
        zstore.save(state, target.url, storage_options=target.options, codec=self.codec,
                    overwrite=True)

    def load(self, target: Target) -> Any:
        with zstore.configure(s3_reader=self.reader):
            return zstore.load(target.url, storage_options=target.options)


class Raw(System):
    """The same bytes with no format at all: the storage limit (on S3 through s3fs, or with
    ``client="obstore"`` through obstore, 8 MiB objects moved 8 at a time)."""

    def __init__(self, client: str = "s3fs") -> None:
        self.client = client
        self.name = "raw" if client == "s3fs" else f"raw[{client}]"
        self.s3_only = client != "s3fs"

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
        parts = {f"part-{i:05d}": p for i, p in enumerate(self._parts(state))}
        if self.client == "obstore":
            import obstore

            store, prefix = _obstore(target)
            sync(bounded(obstore.put_async(store, f"{prefix}/{k}", p)
                          for k, p in parts.items()))
            return
        target.fs().pipe({f"{target.url}/{k}": bytes(p) for k, p in parts.items()})

    def load(self, target: Target) -> Any:
        if target.is_local:
            out = np.empty(self.total, np.uint8)
            with open(os.path.join(target.url, "raw.bin"), "rb") as f:
                f.readinto(memoryview(out))
            return out
        fs = target.fs()
        keys = sorted(fs.find(target.url))
        if self.client == "obstore":
            import obstore

            store, _ = _obstore(target)

            async def get(key: str) -> Any:
                return await (await obstore.get_async(store, key.split("/", 1)[1])).bytes_async()

            return sync(bounded(get(key) for key in keys))
        return fs.cat(keys)


def _obstore(target: Target) -> tuple[Any, str]:
    """An obstore client for ``target`` on an S3 server of the benchmark, and its prefix."""
    bucket, _, prefix = target.url.removeprefix("s3://").partition("/")
    return obstore_client(bucket, target.options), prefix


def obstore_client(bucket: str, options: dict[str, Any]) -> Any:
    """An obstore client for ``bucket`` on a benchmark's S3 server (``options``: s3fs's).

    Its calls run on zarr's event loop thread, as zstore's do: awaited from ``asyncio.run``
    on the main thread, 16 GETs of 8 MiB took 2.0 s instead of 0.1 s (measured, moto and
    SeaweedFS alike)."""
    from obstore.store import S3Store

    return S3Store(bucket, endpoint=options["endpoint_url"], access_key_id=options["key"],
                   secret_access_key=options["secret"], region="us-east-1",
                   virtual_hosted_style_request=False, client_options={"allow_http": True})


async def bounded(calls: Iterable[Awaitable[Any]], limit: int = 8) -> list[Any]:
    """Await ``calls``, ``limit`` at a time."""
    semaphore = asyncio.Semaphore(limit)

    async def one(call: Awaitable[Any]) -> Any:
        async with semaphore:
            return await call

    return await asyncio.gather(*(one(call) for call in calls))


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


def drop_cache(path: str) -> None:
    """Evict every file in the folder ``path`` from the page cache (written back first), so the next
    read comes from the disk: a cold-cache load."""
    os.sync()
    for folder, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


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
