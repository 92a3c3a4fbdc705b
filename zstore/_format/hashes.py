"""The hashes a checkpoint records of its stored objects (``zstore.hashes.json``).

Every object (a shard, or an unsharded chunk) holds one box of its array; the
hash is the SHA-256 of that box's raw bytes in C order, before any codec, so an
unchanged box is found without encoding it again. Incremental saves compare
them to decide what to copy; ``verify`` checks stored bytes against them. An encrypted
checkpoint's hashes are keyed (HMAC-SHA256 under a key derived from its encryption key,
``Cipher.digest``): a plain hash of the plaintext would confirm a guess of its contents.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterator

import numpy as np

from zstore._format.crypto import Cipher
from zstore._format.manifest import parse_json
from zstore._format.names import object_key

ALGORITHM = "sha256"  # ~1.8 GB/s a core with SHA extensions, and no collisions to fear
KEYED = "hmac-sha256"  # an encrypted checkpoint's


def object_boxes(path: str, shape: tuple[int, ...], object_shape: tuple[int, ...]
                 ) -> Iterator[tuple[str, tuple[slice, ...]]]:
    """Each stored object's key (``path/c/i/j``) and the box of the array it holds."""
    grid = [range(math.ceil(n / c)) for n, c in zip(shape, object_shape)]
    for index in itertools.product(*grid):
        box = tuple(slice(i * c, min((i + 1) * c, n))
                    for i, c, n in zip(index, object_shape, shape))
        yield object_key(path, index), box


def box_hash(array: np.ndarray, box: tuple[slice, ...], cipher: Cipher | None = None) -> str:
    """SHA-256 of a box's bytes in C order (copied to contiguous memory only if needed);
    keyed by ``cipher`` for an encrypted array."""
    raw = np.ascontiguousarray(array[box]).reshape(-1).view(np.uint8)  # bf16/fp8 too
    return cipher.digest(raw.data) if cipher else hashlib.new(ALGORITHM, raw.data).hexdigest()


def encode_hashes(hashes: dict[str, str], keyed: bool = False) -> bytes:
    return json.dumps({"algorithm": KEYED if keyed else ALGORITHM, "objects": hashes},
                      separators=(",", ":")).encode()


def decode_hashes(raw: bytes | None) -> dict[str, str]:
    """The object hashes a checkpoint recorded; empty when absent or unreadable (reuse nothing)."""
    if raw is None:
        return {}
    try:
        doc = parse_json(raw)
        objects = doc["objects"] if doc.get("algorithm") in (ALGORITHM, KEYED) else {}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}
    if not isinstance(objects, dict):
        return {}
    return {k: v for k, v in objects.items() if isinstance(k, str) and isinstance(v, str)}
