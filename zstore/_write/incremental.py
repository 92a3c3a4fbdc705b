"""Which stored objects a save may copy from the previous checkpoint instead of uploading.

Every object (a shard, or an unsharded chunk) holds one box of its array. A
save that keeps hashes records, per object, the SHA-256 of that box's raw
bytes (before any codec: so an unchanged box is found without compressing it
again). The next save hashes its own boxes; where the array's ``zarr.json``
is identical to the previous checkpoint's and the hash matches, the object's
bytes are the same, and it is copied on the server (S3 CopyObject, a hard
link on local disk) rather than encoded and uploaded. The new checkpoint owns
its copy, so it stays self-contained: deleting the old one never touches it.

The hashes live beside the manifest, in ``zstore.hashes.json``, not inside
``zarr.json``, so opening a checkpoint never pays to read them.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zstore._format.manifest import parse_json

HASHES = "zstore.hashes.json"
ALGORITHM = "sha256"  # ~1.8 GB/s a core with SHA extensions, and no collisions to fear


@dataclass
class Baseline:
    """What a previous checkpoint offers for reuse: its array documents and object hashes."""

    url: str
    documents: dict[str, dict[str, Any]]  # array path -> zarr.json document
    hashes: dict[str, str]  # object key -> hex digest
    location: Any = None  # storage.Location of the previous checkpoint


@dataclass
class ArrayPlan:
    """One array's objects split into those to copy from the baseline and those to write."""

    hashes: dict[str, str] = field(default_factory=dict)
    copy: list[tuple[str, tuple[slice, ...]]] = field(default_factory=list)  # key, box
    write: list[tuple[slice, ...]] = field(default_factory=list)  # boxes to encode and upload

    @property
    def writes_everything(self) -> bool:
        return not self.copy


def object_boxes(path: str, shape: tuple[int, ...], object_shape: tuple[int, ...]
                 ) -> Iterator[tuple[str, tuple[slice, ...]]]:
    """Each stored object's key (``path/c/i/j``) and the box of the array it holds."""
    grid = [range(math.ceil(n / c)) for n, c in zip(shape, object_shape)]
    for index in itertools.product(*grid):
        box = tuple(slice(i * c, min((i + 1) * c, n))
                    for i, c, n in zip(index, object_shape, shape))
        yield "/".join([path, "c", *map(str, index)]), box


def box_hash(array: np.ndarray, box: tuple[slice, ...]) -> str:
    """SHA-256 of a box's bytes in C order (copied to contiguous memory only if needed)."""
    raw = np.ascontiguousarray(array[box]).reshape(-1).view(np.uint8)  # bf16/fp8 too
    return hashlib.new(ALGORITHM, raw).hexdigest()


def object_shape(document: dict[str, Any]) -> tuple[int, ...]:
    return tuple(document["chunk_grid"]["configuration"]["chunk_shape"])


async def plan_array(path: str, array: np.ndarray, document: dict[str, Any],
                     baseline: Baseline | None) -> ArrayPlan:
    """Hash every object's box (in threads: hashlib releases the GIL) and sort them."""
    boxes = list(object_boxes(path, tuple(document["shape"]), object_shape(document)))
    digests = await asyncio.gather(*(asyncio.to_thread(box_hash, array, box) for _, box in boxes))
    plan = ArrayPlan(hashes={key: digest for (key, _), digest in zip(boxes, digests)})
    same_layout = baseline is not None and baseline.documents.get(path) == document
    for (key, box), digest in zip(boxes, digests):
        if same_layout and baseline.hashes.get(key) == digest:  # type: ignore[union-attr]
            plan.copy.append((key, box))
        else:
            plan.write.append(box)
    return plan


def encode_hashes(hashes: dict[str, str]) -> bytes:
    return json.dumps({"algorithm": ALGORITHM, "objects": hashes}, separators=(",", ":")).encode()


def decode_hashes(raw: bytes | None) -> dict[str, str]:
    """The object hashes a checkpoint recorded; empty when absent or unreadable (reuse nothing)."""
    if raw is None:
        return {}
    try:
        doc = parse_json(raw)
        objects = doc["objects"] if doc.get("algorithm") == ALGORITHM else {}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}
    if not isinstance(objects, dict):
        return {}
    return {k: v for k, v in objects.items() if isinstance(k, str) and isinstance(v, str)}
