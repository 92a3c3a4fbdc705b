"""Reading every stored object of a checkpoint and checking it against its checksums."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from zstore._format.crypto import KeySource, key_needed
from zstore._format.hashes import box_hash, decode_hashes, object_boxes
from zstore._format.layout import object_shape
from zstore._format.manifest import parse_json
from zstore._format.names import HASHES, ROOT
from zstore._read.reader import Checkpoint, LazyTensor
from zstore._read.reader import open as open_checkpoint
from zstore._storage.failures import is_storage_failure
from zstore._storage.location import run
from zstore.errors import CorruptCheckpointError


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
           max_concurrency: int = 8, encryption_key: KeySource | None = None) -> VerifyReport:
    """Check every stored object of the checkpoint at ``url``.

    - every object each array needs exists (zarr would silently read a missing
      one as the fill value), and decodes with its crc32c checks passing;
    - where the save recorded hashes (``zstore.hashes.json``), the decoded bytes
      of each object hash to what was recorded: end to end, past the codecs;
    - each array's own ``zarr.json`` (what plain zarr readers use) says what the
      committed, consolidated metadata says.

    An encrypted checkpoint needs its ``encryption_key``: each chunk's AES-GCM tag is
    checked too, and its keyed hashes are recomputed under it.

    Raises:
        EncryptionKeyError: the checkpoint is encrypted and no key, or another key, was given.
    """
    ckpt = open_checkpoint(url, storage_options=storage_options, encryption_key=encryption_key)
    if ckpt.encryption is not None and ckpt._cipher is None:
        raise key_needed(url, ckpt.encryption["key_id"],
                         "check its objects (`zstore verify --key-file`)")
    return run(ckpt.url, _verify(ckpt, max_concurrency))


async def _verify(ckpt: Checkpoint, max_concurrency: int) -> VerifyReport:
    report = VerifyReport()
    location = ckpt._location
    stored, raw_hashes = await asyncio.gather(location.sizes(), location.get(HASHES))
    hashes = decode_hashes(raw_hashes)
    if raw_hashes is not None and not hashes and b'"objects":{}' not in raw_hashes:
        report.problems.append(f"{HASHES}: unreadable (incremental saves will not reuse objects)")
    documents = ckpt.array_documents()
    limit = asyncio.Semaphore(max_concurrency)

    async def check_object(tensor: LazyTensor, key: str, box: tuple[slice, ...]) -> None:
        if key not in stored:
            report.problems.append(f"{key}: missing")
            return
        async with limit:
            try:
                data = await tensor.read_async(box)
            except CorruptCheckpointError as e:
                why = "fails its AES-GCM authentication" if "AES-GCM" in str(e) else \
                    "fails its crc32c check"
                report.problems.append(f"{key}: damaged ({why})")
                return
            except Exception as e:  # any decode failure is a finding, not a crash
                if is_storage_failure(e):  # the storage failed, not the object: no finding
                    raise
                report.problems.append(f"{key}: damaged ({type(e).__name__}: {e})")
                return
            finally:
                report.objects_checked += 1
        if key in hashes and box_hash(data, tuple(slice(None) for _ in box),
                                      ckpt._cipher) != hashes[key]:
            report.problems.append(f"{key}: decodes, but not to the bytes that were saved")

    async def check_document(path: str, expected: dict[str, Any]) -> None:
        raw = await location.get(f"{path}/{ROOT}")
        try:
            same = raw is not None and parse_json(raw) == expected
        except ValueError:
            same = False
        if not same:
            report.problems.append(f"{path}/{ROOT}: missing or differs from the committed "
                                   "metadata (plain zarr readers would misread this array)")

    jobs = []
    for path, tensor in ckpt.stored_arrays().items():
        report.arrays.append(path)
        document, _ = documents[path]
        jobs.append(check_document(path, document))
        jobs.extend(check_object(tensor, key, box)
                    for key, box in object_boxes(path, tensor.shape, object_shape(document)))
    await asyncio.gather(*jobs)
    report.problems.sort()
    return report
