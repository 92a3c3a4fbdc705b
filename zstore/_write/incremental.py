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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zstore._format.crypto import Cipher
from zstore._format.hashes import box_hash, decode_hashes, object_boxes
from zstore._format.layout import object_shape
from zstore._format.manifest import read_manifest
from zstore._format.names import COMMIT_MARKER, HASHES, ROOT
from zstore._storage.location import Location


@dataclass
class Baseline:
    """What a previous checkpoint offers for reuse: its array documents and object hashes."""

    url: str
    documents: dict[str, dict[str, Any]]  # array path -> zarr.json document
    hashes: dict[str, str]  # object key -> hex digest
    location: Any = None  # storage.Location of the previous checkpoint

    def offers(self, key: str, path: str, digest: str, document: dict[str, Any]) -> bool:
        """Whether this checkpoint's object ``key`` of the array at ``path`` holds the bytes
        an object of hash ``digest`` stored by ``document`` would: same hash, same layout
        and codecs (an encrypted one's key id and path included)."""
        return self.hashes.get(key) == digest and self.documents.get(path) == document


async def read_baseline(source: Location) -> Baseline:
    """The committed checkpoint at ``source``: its array documents and object hashes."""
    root, commit, hashes = await asyncio.gather(
        source.get(ROOT), source.get(COMMIT_MARKER), source.get(HASHES))
    manifest = read_manifest(root, commit, source.url)
    return Baseline(source.url, manifest.arrays, decode_hashes(hashes), source)


@dataclass
class ArrayPlan:
    """One array's objects split into those to copy from the baseline and those to write."""

    hashes: dict[str, str] = field(default_factory=dict)
    copy: list[tuple[str, tuple[slice, ...]]] = field(default_factory=list)  # key, box
    write: list[tuple[slice, ...]] = field(default_factory=list)  # boxes to encode and upload

    @property
    def writes_everything(self) -> bool:
        return not self.copy


async def plan_array(path: str, array: np.ndarray, document: dict[str, Any],
                     baseline: Baseline | None, cipher: Cipher | None) -> ArrayPlan:
    """Hash every object's box (in threads: hashlib releases the GIL; keyed under
    ``cipher`` for an encrypted array) and sort them."""
    boxes = list(object_boxes(path, tuple(document["shape"]), object_shape(document)))
    digests = await asyncio.gather(*(asyncio.to_thread(box_hash, array, box, cipher)
                                     for _, box in boxes))
    plan = ArrayPlan(hashes={key: digest for (key, _), digest in zip(boxes, digests)})
    for (key, box), digest in zip(boxes, digests):
        if baseline is not None and baseline.offers(key, path, digest, document):
            plan.copy.append((key, box))
        else:
            plan.write.append(box)
    return plan
