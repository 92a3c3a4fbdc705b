"""Reading every stored object of a checkpoint and checking it against its checksums."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

from zarr.core.sync import sync

from zstore.reader import Checkpoint, LazyTensor
from zstore.reader import open as open_checkpoint


@dataclass
class VerifyReport:
    """What ``verify`` checked and every problem it found (empty when all is well)."""

    arrays: list[str] = field(default_factory=list)
    objects_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(url: str, *, storage_options: dict[str, Any] | None = None,
           max_concurrency: int = 8) -> VerifyReport:
    """Check that every object each array needs exists and passes its crc32c checks.

    zarr fills a missing chunk with the fill value without complaint, so objects
    are first matched against the listing; each object is then decoded whole.
    """
    ckpt = open_checkpoint(url, storage_options=storage_options)
    return sync(_verify(ckpt, max_concurrency))


def _objects(tensor: LazyTensor) -> list[tuple[str, tuple[slice, ...]]]:
    """Every object key of an array with the region of the array it holds."""
    assert tensor.shard_shape is not None
    ranges = [range(-(-n // s)) for n, s in zip(tensor.shape, tensor.shard_shape)]
    return [
        ("/".join(["c", *map(str, index)]),
         tuple(slice(i * s, min((i + 1) * s, n))
               for i, s, n in zip(index, tensor.shard_shape, tensor.shape)))
        for index in itertools.product(*ranges)
    ]


async def _verify(ckpt: Checkpoint, max_concurrency: int) -> VerifyReport:
    report = VerifyReport()
    stored = await ckpt._location.sizes()
    tensors = {t._path: t for t in ckpt.values() if t._path is not None}
    limit = asyncio.Semaphore(max_concurrency)

    async def check(path: str, tensor: LazyTensor, key: str, region: tuple[slice, ...]) -> None:
        if f"{path}/{key}" not in stored:
            report.problems.append(f"{path}: object {key} is missing")
            return
        async with limit:
            try:
                await tensor.read_async(region)
            except Exception as e:  # any decode failure is a finding, not a crash
                report.problems.append(f"{path}: object {key} is damaged ({e})")
        report.objects_checked += 1

    jobs = []
    for path, tensor in tensors.items():
        report.arrays.append(path)
        jobs.extend(check(path, tensor, key, region) for key, region in _objects(tensor))
    await asyncio.gather(*jobs)
    report.problems.sort()
    return report
