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
import math
import json
import time
from dataclasses import dataclass, field
from typing import Any

from zstore.errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    IncompleteCheckpointError,
    UnsupportedFormatError,
    UnsupportedTypeError,
)
from zstore.tree import COMMIT_MARKER

FORMAT_VERSION = 1
ROOT = "zarr.json"
MAX_METADATA_BYTES = 1 << 20

__all__ = ["COMMIT_MARKER", "FORMAT_VERSION", "ROOT", "Manifest"]


@dataclass
class Manifest:
    """Everything ``open`` learns from the two metadata objects."""

    tree: dict[str, Any]
    metadata: dict[str, Any]
    arrays: dict[str, dict[str, Any]]  # path -> plain zarr.json document
    stored_bytes: dict[str, int] = field(default_factory=dict)  # path -> bytes in storage
    created: float = 0.0
    zstore_version: str = ""


def encode(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def check_metadata(metadata: Any) -> dict[str, Any]:
    """Return user metadata if it is a JSON object, else raise naming the bad entry."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise UnsupportedTypeError(f"metadata must be a dict of JSON values, got {type(metadata).__name__}")

    def visit(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                if not isinstance(key, str):
                    raise UnsupportedTypeError(f"metadata key {key!r} at {where} must be a str")
                visit(child, f"{where}[{key!r}]")
        elif isinstance(value, (list, tuple)):
            for i, child in enumerate(value):
                visit(child, f"{where}[{i}]")
        elif isinstance(value, float) and not math.isfinite(value):
            raise UnsupportedTypeError(f"metadata{where} is {value!r}, which JSON cannot hold")
        elif value is not None and not isinstance(value, (str, int, float, bool)):
            raise UnsupportedTypeError(
                f"metadata{where} is a {type(value).__name__}; metadata holds JSON values only "
                "(str, int, float, bool, None, lists and dicts)"
            )

    visit(metadata, "")
    size = len(encode(metadata))
    if size > MAX_METADATA_BYTES:
        raise UnsupportedTypeError(
            f"metadata is {size} bytes of JSON; the limit is {MAX_METADATA_BYTES} because every "
            "open reads it: keep large values in the tree as arrays instead")
    return metadata


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
        "format": FORMAT_VERSION,
        "state": "complete",
        "zstore_version": manifest.zstore_version,
        "created": manifest.created,
        "tree": manifest.tree,
        "metadata": manifest.metadata,
        "stored_bytes": manifest.stored_bytes,
    }}
    nodes: dict[str, Any] = {g: _group(consolidated=True) for g in group_paths(list(manifest.arrays))}
    nodes.update(manifest.arrays)
    doc["consolidated_metadata"]["metadata"] = nodes
    return doc


def commit_document(root_bytes: bytes) -> bytes:
    return encode({
        "format": FORMAT_VERSION,
        "committed": time.time(),
        "zarr_json_sha256": hashlib.sha256(root_bytes).hexdigest(),
    })


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
        raise CheckpointNotFoundError(f"no checkpoint at {url!r} (neither {ROOT} nor {COMMIT_MARKER} exists)")
    if commit is None:
        raise IncompleteCheckpointError(
            f"the checkpoint at {url!r} has no commit marker: its save crashed or is still "
            "running. Save it again (overwrite=True), or restore an earlier checkpoint"
        )
    if root is None:
        raise CorruptCheckpointError(f"{url!r} has a commit marker but no {ROOT}")
    try:
        marker = parse_json(commit)
        expected = marker["zarr_json_sha256"]
        version = marker["format"]
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(f"the commit marker of {url!r} is unreadable: {e}") from None
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"{url!r} was written in zstore format {version!r}; this zstore reads format "
            f"{FORMAT_VERSION} and older: upgrade zstore"
        )
    if hashlib.sha256(root).hexdigest() != expected:
        raise CorruptCheckpointError(
            f"{url}/{ROOT} does not match its commit marker: it was changed or damaged after "
            "the save committed"
        )
    try:
        doc = parse_json(root)
        info = doc["attributes"]["zstore"]
        nodes = doc["consolidated_metadata"]["metadata"]
        return Manifest(
            tree=info["tree"],
            metadata=info["metadata"],
            arrays={k: v for k, v in nodes.items() if v.get("node_type") == "array"},
            stored_bytes=info.get("stored_bytes", {}),
            created=info.get("created", 0.0),
            zstore_version=info.get("zstore_version", ""),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptCheckpointError(f"{url}/{ROOT} is not a zstore manifest: {e!r}") from None
