"""The checkpoint's root metadata and its commit marker.

On disk (see docs/format.md)::

    zarr.json             Zarr v3 group; consolidated metadata of every node;
                          attributes["zstore"] = the manifest (format, tree, metadata, sizes)
    zstore.commit.json    written last, only if absent; holds the SHA-256 of zarr.json

Opening reads both objects, concurrently: the commit marker proves the save
finished, its hash proves that the ``zarr.json`` read is the one that was
committed (not a later, half-finished overwrite).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zstore._format.names import COMMIT_MARKER, ROOT
from zstore._format.tree import iter_leaves
from zstore.errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    IncompleteCheckpointError,
    UnsupportedFormatError,
    UnsupportedTypeError,
)

FORMAT_VERSION = 5  # the newest format this zstore reads and writes
# Format 2 adds stacked arrays (tree leaves with an "index"); a checkpoint without them is
# written as format 1, which every zstore reads. Format 3 adds per-rank leaves
# ({"per_rank": [leaf, ...]}: a multi-rank save's values that differ between ranks).
# Format 4 adds sparse leaves ({"sparse": {...}}, ``zstore._format.sparse``). Format 5
# adds encrypted arrays (``zstore._format.crypto``; the manifest's "encryption" says with
# which key): an older zstore says to upgrade rather than fail on an unknown codec.
STACKED_FORMAT = 2
PER_RANK_FORMAT = 3
SPARSE_FORMAT = 4
ENCRYPTED_FORMAT = 5


def needed_format(tree: dict[str, Any], stacked: bool, encrypted: bool = False) -> int:
    """The oldest format that holds ``tree`` (and stacked arrays, encrypted ones, if any):
    a checkpoint stays readable by every zstore that understands what it uses."""
    if encrypted:
        return ENCRYPTED_FORMAT
    kinds = {next(iter(node)) for _, node in iter_leaves(tree)}
    if "sparse" in kinds:
        return SPARSE_FORMAT
    if "per_rank" in kinds:
        return PER_RANK_FORMAT
    return STACKED_FORMAT if stacked else 1
MAX_METADATA_BYTES = 1 << 20

__all__ = ["FORMAT_VERSION", "Manifest"]


@dataclass
class Manifest:
    """Everything ``open`` learns from the two metadata objects."""

    tree: dict[str, Any]
    metadata: dict[str, Any]
    arrays: dict[str, dict[str, Any]]  # path -> plain zarr.json document
    stored_bytes: dict[str, int] = field(default_factory=dict)  # path -> bytes in storage
    created: float = 0.0
    zstore_version: str = ""
    format: int = 1
    encryption: dict[str, str] | None = None  # ``Cipher.record()``: algorithm and key id


def encode(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def check_metadata(metadata: Any) -> dict[str, Any]:
    """User metadata as the JSON values it will be stored as, else raise naming the bad entry.

    What users pass as it is: dicts with int keys (a Hugging Face config's
    ``id2label``) come back with int keys (see ``metadata_document``); numpy scalars
    become JSON numbers and bools (``np.float32(0.1)`` comes back as the float
    ``0.10000000149011612``, the value it held); tuples become lists, as in any JSON.
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise UnsupportedTypeError(
            f"metadata must be a dict of JSON values, got {type(metadata).__name__}")
    checked = _json_value(metadata, "")
    size = len(encode(metadata_document(checked)[0]))
    if size > MAX_METADATA_BYTES:
        raise UnsupportedTypeError(
            f"metadata is {size} bytes of JSON; the limit is {MAX_METADATA_BYTES} because every "
            "open reads it: keep large values in the tree as arrays instead")
    return checked  # type: ignore[no-any-return]


def _json_value(value: Any, where: str) -> Any:
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        as_text: set[str] = set()
        for key, child in value.items():
            if isinstance(key, np.integer):
                key = int(key)
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise UnsupportedTypeError(
                    f"metadata key {key!r} at {where or 'the top'} is a {type(key).__name__}; "
                    "metadata keys must be str or int")
            if str(key) in as_text:
                raise UnsupportedTypeError(
                    f"metadata at {where or 'the top'} has both {key!r} and {str(key)!r} as "
                    "keys, which JSON cannot tell apart: rename one")
            as_text.add(str(key))
            out[key] = _json_value(child, f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_json_value(child, f"{where}[{i}]") for i, child in enumerate(value)]
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        value = value.item()  # the exact Python bool, int or float it holds
    if isinstance(value, float) and not math.isfinite(value):
        raise UnsupportedTypeError(f"metadata{where} is {value!r}, which JSON cannot hold")
    if value is not None and not isinstance(value, (str, int, float, bool)):
        hint = (" (an array: put it in the tree instead)"
                if isinstance(value, np.ndarray) or type(value).__name__ == "Tensor" else "")
        raise UnsupportedTypeError(
            f"metadata{where} is a {type(value).__name__}{hint}; metadata holds JSON values "
            "only (str, int, float, bool, None, numpy scalars, lists, dicts with str or int keys)"
        )
    return value


def metadata_document(metadata: dict[str, Any]) -> tuple[dict[str, Any], list[list[Any]]]:
    """Checked metadata as plain JSON (every key a str, readable by any JSON tool) plus the
    path of each key that was an int: ``[["config", "id2label", "0"], ...]``, each step a
    dict key (str) or a list position (int), so ``metadata_from_document`` restores it."""
    int_keys: list[list[Any]] = []

    def visit(value: Any, path: list[Any]) -> Any:
        if isinstance(value, dict):
            for key in value:
                if isinstance(key, int):
                    int_keys.append([*path, str(key)])
            return {str(k): visit(v, [*path, str(k)]) for k, v in value.items()}
        if isinstance(value, list):
            return [visit(v, [*path, i]) for i, v in enumerate(value)]
        return value

    return visit(metadata, []), int_keys


def metadata_from_document(document: dict[str, Any], int_keys: list[list[Any]]) -> dict[str, Any]:
    """The inverse of ``metadata_document``: the same keys, ints where they were ints, in
    their saved order. A path that leads nowhere is malformed (``KeyError``/``TypeError``)."""
    marked: set[tuple[Any, ...]] = {tuple(p) for p in int_keys}
    if any(not p for p in marked):
        raise ValueError("an empty int-key path")

    def visit(value: Any, path: tuple[Any, ...]) -> Any:
        if isinstance(value, dict):
            return {(int(k) if (*path, k) in marked else k): visit(v, (*path, k))
                    for k, v in value.items()}
        if isinstance(value, list):
            return [visit(v, (*path, i)) for i, v in enumerate(value)]
        return value

    restored = visit(document, ())
    for p in marked:  # every recorded key must exist, or the manifest was tampered with
        node: Any = document
        for step in p:
            node = node[step]
    return restored  # type: ignore[no-any-return]


def _group(consolidated: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {"zarr_format": 3, "node_type": "group", "attributes": {}}
    if consolidated:
        doc["consolidated_metadata"] = {"kind": "inline", "must_understand": False, "metadata": {}}
    return doc


def group_paths(array_paths: list[str]) -> list[str]:
    """The intermediate groups the arrays need, parents first."""
    groups = {"/".join(p.split("/")[:i]) for p in array_paths for i in range(1, p.count("/") + 1)}
    return sorted(groups, key=lambda g: (g.count("/"), g))


def group_document() -> dict[str, Any]:
    """A plain intermediate group's ``zarr.json``."""
    return _group(consolidated=False)


def writing_document() -> dict[str, Any]:
    """The root written first: marks the prefix as a zstore checkpoint being written."""
    doc = _group(consolidated=False)
    doc["attributes"] = {"zstore": {"format": FORMAT_VERSION, "state": "writing"}}
    return doc


def root_document(manifest: Manifest) -> dict[str, Any]:
    """The final root ``zarr.json``: manifest in attributes, every node consolidated."""
    doc = _group(consolidated=True)
    doc["attributes"] = {"zstore": {
        "format": manifest.format,
        "state": "complete",
        "zstore_version": manifest.zstore_version,
        "created": manifest.created,
        "tree": manifest.tree,
        "stored_bytes": manifest.stored_bytes,
    }}
    if manifest.encryption is not None:
        doc["attributes"]["zstore"]["encryption"] = manifest.encryption
    metadata, int_keys = metadata_document(manifest.metadata)
    doc["attributes"]["zstore"]["metadata"] = metadata
    if int_keys:  # absent unless needed: older readers see the same JSON, keys as str
        doc["attributes"]["zstore"]["metadata_int_keys"] = int_keys
    groups = group_paths(list(manifest.arrays))
    nodes: dict[str, Any] = {g: _group(consolidated=True) for g in groups}
    nodes.update(manifest.arrays)
    doc["consolidated_metadata"]["metadata"] = nodes
    return doc


def commit_document(root_bytes: bytes, format: int,  # noqa: A002
                    vouched: str | None = None) -> bytes:
    """The commit marker: the format, and the SHA-256 of the root ``zarr.json`` (with an
    encrypted checkpoint's HMAC of it, ``vouched``, too)."""
    marker = {
        "format": format,
        "committed": time.time(),
        "zarr_json_sha256": hashlib.sha256(root_bytes).hexdigest(),
    }
    if vouched is not None:
        marker["zarr_json_hmac"] = vouched
    return encode(marker)


def vouched_by(commit: bytes) -> Any:
    """The HMAC an encrypted checkpoint's commit marker keeps of its root (None if none);
    ``read_manifest`` has checked the marker parses."""
    marker = parse_json(commit)
    return marker.get("zarr_json_hmac") if isinstance(marker, dict) else None


def parse_json(raw: bytes | str) -> Any:
    """JSON read from storage, where a damaged or hostile object may hold anything: JSON
    nested deeper than Python's recursion limit is malformed too (``ValueError``), not a
    ``RecursionError`` escaping as a crash."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def is_zstore_root(raw: bytes | None) -> bool:
    """Whether a root ``zarr.json`` was written by zstore (complete or not)."""
    try:
        return isinstance(parse_json(raw)["attributes"]["zstore"], dict)  # type: ignore[arg-type]
    except (ValueError, TypeError, KeyError):
        return False


def read_manifest(root: bytes | None, commit: bytes | None, url: str) -> Manifest:
    """Validate the two objects ``open`` fetched and return the manifest they commit."""
    if root is None and commit is None:
        raise CheckpointNotFoundError(
            f"no checkpoint at {url!r} (neither {ROOT} nor {COMMIT_MARKER} exists)", url=url)
    if commit is None:
        raise IncompleteCheckpointError(
            f"the checkpoint at {url!r} has no commit marker: its save crashed or is still "
            "running. Save it again (overwrite=True), or restore an earlier checkpoint",
            url=url)
    if root is None:
        raise CorruptCheckpointError(f"{url!r} has a commit marker but no {ROOT}", url=url,
                                     key=ROOT)
    try:
        marker = parse_json(commit)
        expected = marker["zarr_json_sha256"]
        version = marker["format"]
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(f"the commit marker of {url!r} is unreadable: {e}",
                                     url=url, key=COMMIT_MARKER) from None
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"{url!r} was written in zstore format {version!r}; this zstore reads format "
            f"{FORMAT_VERSION} and older: upgrade zstore", url=url, version=version)
    if hashlib.sha256(root).hexdigest() != expected:
        raise CorruptCheckpointError(
            f"{url}/{ROOT} does not match its commit marker: it was changed or damaged after "
            "the save committed", url=url, key=ROOT)
    try:
        doc = parse_json(root)
        info = doc["attributes"]["zstore"]
        nodes = doc["consolidated_metadata"]["metadata"]
        return Manifest(
            tree=info["tree"],
            metadata=metadata_from_document(info["metadata"], info.get("metadata_int_keys", [])),
            arrays={k: v for k, v in nodes.items() if v.get("node_type") == "array"},
            stored_bytes=info.get("stored_bytes", {}),
            created=info.get("created", 0.0),
            zstore_version=info.get("zstore_version", ""),
            format=version,
            encryption=_encryption(info.get("encryption")),
        )
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        raise CorruptCheckpointError(f"{url}/{ROOT} is not a zstore manifest: {e!r}", url=url,
                                     key=ROOT) from None


def _encryption(record: Any) -> dict[str, str] | None:
    if record is None:
        return None
    if not isinstance(record, dict) or not all(
            isinstance(record.get(k), str) for k in ("algorithm", "key_id", "key_check")):
        raise ValueError(f"its encryption record is malformed: {record!r}")
    return {k: record[k] for k in ("algorithm", "key_id", "key_check")}
