"""Flattening a tree of arrays into named arrays plus a JSON skeleton, and back.

A checkpoint stores every array (numpy or torch, one dimension or more) as a
Zarr array named by its tree path, segments joined by ``/``; everything else
(Python scalars, strings, None, 0-d tensors and numpy scalars) lives inline in
the skeleton, which records the exact container types (dict with str or int
keys, list, tuple) so that a round trip gives back the same structure.

Skeleton nodes::

    {"dict": [[key, node], ...]}  {"list": [node, ...]}  {"tuple": [node, ...]}
    {"array": path, "kind": "numpy" | "torch"}   (+ "index": i, a member of a stacked array)
    {"scalar": hex bytes, "dtype": name, "kind": "numpy" | "torch" | "npscalar"}
    {"int": 3}  {"float": "0x1.8p+0"}  {"bool": true}  {"str": "x"}  {"none": null}

Floats and scalars are stored as exact bits (hex), so NaN payloads, -0.0 and
subnormals survive. Two leaves that are the same tensor (tied embeddings) point
at one array path.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zstore._format.dtypes import check_supported, dtype_from_name
from zstore._format.lazy import Lazy
from zstore._format.sparse import build as build_sparse
from zstore._format.sparse import check as check_sparse
from zstore._format.sparse import is_sparse
from zstore._format.sparse import split as split_sparse
from zstore._format.tensors import (
    is_dtensor,
    is_torch_tensor,
    numpy_to_torch,
    torch_numpy_dtype,
    torch_to_numpy,
)
from zstore.errors import InvalidKeyError, UnsupportedTypeError

_RESERVED_SEGMENTS = {"zarr.json"}


@dataclass
class FlatTree:
    """What ``flatten`` found: the skeleton and the arrays it refers to by path."""

    skeleton: dict[str, Any]
    arrays: dict[str, Any] = field(default_factory=dict)  # path -> np.ndarray | torch.Tensor
    alone: set[str] = field(default_factory=set)  # paths never stacked (a sparse leaf's parts)


def flatten(tree: Any, *, specs: bool = False) -> FlatTree:
    """Split ``tree`` into a JSON skeleton and its arrays, validating every key first.

    Raises ``InvalidKeyError`` for keys that are not str/int, would escape the
    checkpoint (``..``, absolute, empty segments), are reserved, or collide with
    another key after joining; ``UnsupportedTypeError`` for leaves zstore cannot
    store. Nothing is converted or copied here.

    With ``specs=True`` (planning) a leaf may also be any object with ``.shape`` and
    ``.dtype`` and no data, and no value is read: 0-d leaves become placeholders.
    Planning and saving thus name, check and deduplicate a tree the same way.
    """
    if not isinstance(tree, (dict, list, tuple)):
        raise UnsupportedTypeError(
            f"the tree to save must be a dict, list or tuple, got {type(tree).__name__}; "
            + (_stateful_hint(tree) or "wrap a single array as {'name': array}")
        )
    flat = FlatTree(skeleton={})
    seen: dict[Any, str] = {}  # identity of a tensor's memory -> its array path
    owners: dict[str, tuple[Any, ...]] = {}  # leaf name -> the key path that produced it

    def visit(node: Any, keys: tuple[Any, ...]) -> dict[str, Any]:
        if isinstance(node, Mapping):
            items = []
            for key, child in node.items():
                if isinstance(key, bool) or not isinstance(key, (str, int)):
                    raise InvalidKeyError(
                        f"key {key!r} at {_show(keys)} is a {type(key).__name__}; "
                        "checkpoint keys must be str or int", key=(*keys, key)
                    )
                items.append([key, visit(child, (*keys, key))])
            return {"dict": items}
        if isinstance(node, (list, tuple)):
            kind = "tuple" if isinstance(node, tuple) else "list"
            return {kind: [visit(child, (*keys, i)) for i, child in enumerate(node)]}
        name = _claim_name(keys, owners)
        if specs and _is_spec(node):
            return _spec_leaf(node, name, flat, seen)
        return _leaf(node, name, flat, seen)

    flat.skeleton = visit(tree, ())
    _check_prefixes(owners)
    return flat


def _leaf(value: Any, name: str, flat: FlatTree, seen: dict[Any, str]) -> dict[str, Any]:
    identity: tuple[Any, ...]  # what the leaf's memory is: the same twice means tied
    if value is None:
        return {"none": None}
    if isinstance(value, bool):
        return {"bool": value}
    if isinstance(value, int):
        return {"int": value}
    if isinstance(value, float):
        return {"float": value.hex()}
    if isinstance(value, str):
        return {"str": value}
    if is_sparse(value):  # its parts, arrays of their own beside each other under its name
        body, parts = split_sparse(value, name)
        for part, array in parts.items():
            flat.arrays[f"{name}/{part}"] = array
            flat.alone.add(f"{name}/{part}")
        return {"sparse": {**body, "arrays": {part: f"{name}/{part}" for part in parts}}}
    if is_torch_tensor(value):
        if value.ndim == 0:
            return _scalar(torch_to_numpy(value, name), "torch")
        torch_numpy_dtype(value, name)
        if is_dtensor(value):  # a rank's empty shard has no memory: never tied to another
            local = value.to_local()
            identity = (("dtensor", _torch_identity(local), str(value.placements))
                        if local.numel() else ("empty", name))
        else:
            identity = _torch_identity(value)
        kind = "torch"
    elif isinstance(value, np.ndarray):
        check_supported(value.dtype, name)
        if value.ndim == 0:
            return _scalar(value, "numpy")
        identity = _numpy_identity(value)
        kind = "numpy"
    elif isinstance(value, np.generic):
        check_supported(value.dtype, name)
        return _scalar(np.asarray(value), "npscalar")
    elif isinstance(value, Lazy):  # a conversion's source, read as each chunk is encoded
        check_supported(value.dtype, name)
        if value.ndim == 0:
            return _scalar(value[()], "torch" if value.kind == "torch" else "numpy")
        identity = ("lazy", id(value))
        kind = value.kind
    else:
        raise UnsupportedTypeError(
            f"leaf {name!r} is a {type(value).__module__}.{type(value).__qualname__}, which "
            "zstore does not store (no pickle): "
            + (_stateful_hint(value) or "use arrays, tensors, int, float, bool, str or None, "
               "and put other objects into metadata as JSON")
        )
    if identity in seen:  # the same memory twice: tied weights, stored once
        return {"array": seen[identity], "kind": kind}
    seen[identity] = name
    flat.arrays[name] = value
    return {"array": name, "kind": kind}


def _is_spec(value: Any) -> bool:
    return (hasattr(value, "shape") and hasattr(value, "dtype")
            and not isinstance(value, (np.ndarray, np.generic)))


def _spec_leaf(value: Any, name: str, flat: FlatTree, seen: dict[Any, str]) -> dict[str, Any]:
    """A leaf known by shape and dtype only (a tensor, possibly on the meta device, or a
    shape-and-dtype record): an array unless 0-d, deduplicated as ``save`` would."""
    if len(value.shape) == 0:
        return {"scalar": None}
    identity = _torch_identity(value) if is_torch_tensor(value) else ("spec", id(value))
    if identity in seen:
        return {"array": seen[identity], "kind": "spec"}
    seen[identity] = name
    flat.arrays[name] = value
    return {"array": name, "kind": "spec"}


def _stateful_hint(value: Any) -> str | None:
    """How to save a torch module or optimizer, the objects people pass most by mistake."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    if isinstance(value, torch.nn.Module):
        return "save its tensors with model.state_dict() (load them back with into=model)"
    if isinstance(value, torch.optim.Optimizer):
        return "save its state with optimizer.state_dict()"
    return None


def _scalar(array: np.ndarray, kind: str) -> dict[str, Any]:
    native = array.astype(array.dtype.newbyteorder("<"))
    return {"scalar": native.tobytes().hex(), "dtype": str(array.dtype), "kind": kind}


def _torch_identity(tensor: Any) -> tuple[Any, ...]:
    storage = tensor.untyped_storage()
    # Meta tensors have no memory (every data_ptr is 0): their storages still tell tied
    # parameters (one storage) from distinct ones of the same shape.
    where = storage._cdata if tensor.device.type == "meta" else storage.data_ptr()
    return ("torch", tensor.device.type, where, tensor.storage_offset(),
            tuple(tensor.shape), tuple(tensor.stride()), str(tensor.dtype))


def _numpy_identity(array: np.ndarray) -> tuple[Any, ...]:
    return ("numpy", array.__array_interface__["data"][0], array.shape, array.strides,
            array.dtype.str)


def tensor_leaves(tree: Any) -> dict[str, Any]:
    """{name: tensor} of every torch tensor in a nested tree, named as ``flatten`` names
    its leaves (keys joined by ``/``): the tensors ``load(into=tree)`` fills."""
    found: dict[str, Any] = {}

    def visit(node: Any, keys: tuple[Any, ...]) -> None:
        if isinstance(node, Mapping):
            for key, child in node.items():
                visit(child, (*keys, key))
        elif isinstance(node, (list, tuple)):
            for i, child in enumerate(node):
                visit(child, (*keys, i))
        elif is_torch_tensor(node):
            found["/".join(segment for key in keys for segment in str(key).split("/"))] = node

    visit(tree, ())
    return found


def _claim_name(keys: tuple[Any, ...], owners: dict[str, tuple[Any, ...]]) -> str:
    segments = [segment for key in keys for segment in str(key).split("/")]
    if not segments:
        raise UnsupportedTypeError("the tree to save must be a dict, list or tuple")
    name = "/".join(segments)
    for segment in segments:
        _check_segment(segment, name, keys)
    if segments[0].startswith("zstore."):  # the commit marker, lease, hashes and any to come
        raise InvalidKeyError(
            f"key {name!r} is reserved: top-level names starting with 'zstore.' hold zstore's "
            "own objects (commit marker, lease, hashes); rename it", key=keys)
    if name in owners:
        raise InvalidKeyError(
            f"keys {_show(owners[name])} and {_show(keys)} both map to the array name "
            f"{name!r}; rename one of them", key=keys
        )
    owners[name] = keys
    return name


def _check_segment(segment: str, name: str, keys: tuple[Any, ...]) -> None:
    problem = None
    if segment == "":
        problem = "has an empty path segment (leading, trailing or doubled '/')"
    elif segment in (".", ".."):
        problem = f"has the segment {segment!r}, which would escape the checkpoint"
    elif "\\" in segment or any(ord(c) < 32 or ord(c) == 127 for c in segment):
        problem = "contains a backslash or a control character"
    elif segment.startswith("__"):
        problem = "has a segment starting with '__', which Zarr reserves"
    elif segment in _RESERVED_SEGMENTS:
        problem = f"has the segment {segment!r}, which Zarr uses for its metadata"
    if problem:
        raise InvalidKeyError(f"key {_show(keys)} (array name {name!r}) {problem}; rename it",
                              key=keys)


def _check_prefixes(owners: dict[str, tuple[Any, ...]]) -> None:
    for name, keys in owners.items():
        parts = name.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in owners:
                raise InvalidKeyError(
                    f"key {_show(owners[prefix])} names a leaf {prefix!r} that key "
                    f"{_show(keys)} would also need as a group ({name!r}); rename one of them",
                    key=keys)


def _show(keys: tuple[Any, ...]) -> str:
    return "".join(f"[{key!r}]" for key in keys) or "<root>"


_KINDS = {"array": ("numpy", "torch"), "scalar": ("numpy", "torch", "npscalar")}
_BODIES: dict[str, Callable[[Any], bool]] = {
    "int": lambda b: isinstance(b, int) and not isinstance(b, bool),
    "float": lambda b: isinstance(b, str) and _is_hex_float(b),
    "bool": lambda b: isinstance(b, bool),
    "str": lambda b: isinstance(b, str),
    "none": lambda b: b is None,
}


def _is_hex_float(text: str) -> bool:
    try:
        float.fromhex(text)
    except ValueError:
        return False
    return True


def check_skeleton(node: Any) -> None:
    """Raise ``ValueError`` unless ``node`` is a skeleton ``flatten`` could have made.

    A committed manifest is read by code that trusts its shape; this is the one
    place that does not, so a damaged or hostile one fails here, by name.
    """
    if not isinstance(node, dict) or not node:
        raise ValueError(f"tree node {node!r} is not an object")
    kind = next(iter(node))
    body = node[kind]
    if kind == "dict":
        if not isinstance(body, list) or not all(
                isinstance(pair, list) and len(pair) == 2
                and (isinstance(pair[0], str) or _BODIES["int"](pair[0])) for pair in body):
            raise ValueError(f"malformed dict node {node!r}")
        for _, child in body:
            check_skeleton(child)
    elif kind in ("list", "tuple"):
        if not isinstance(body, list):
            raise ValueError(f"malformed {kind} node {node!r}")
        for child in body:
            check_skeleton(child)
    elif kind == "per_rank":  # one leaf per rank of a multi-rank save: values that differ
        if not isinstance(body, list) or not body or any(
                not isinstance(c, dict) or next(iter(c), None) in (
                    "dict", "list", "tuple", "per_rank") for c in body):
            raise ValueError(f"malformed per_rank node {node!r}")
        for child in body:
            check_skeleton(child)
    elif kind in _KINDS:
        if not isinstance(body, str) or node.get("kind") not in _KINDS[kind]:
            raise ValueError(f"malformed {kind} node {node!r}")
        if "index" in node and not (_BODIES["int"](node["index"]) and node["index"] >= 0):
            raise ValueError(f"malformed {kind} node {node!r}")
        if kind == "scalar":
            scalar_value(node)  # its dtype and bytes must decode
    elif kind == "sparse":
        check_sparse(body)
    elif kind not in _BODIES or not _BODIES[kind](body):
        raise ValueError(f"unknown or malformed tree node {node!r}")


def has_per_rank(skeleton: dict[str, Any]) -> bool:
    """Whether a skeleton holds values kept per rank (a multi-rank save's differing ones)."""
    return any("per_rank" in node for _, node in iter_leaves(skeleton))


def for_rank(skeleton: dict[str, Any], rank: int) -> tuple[dict[str, Any], list[str]]:
    """The skeleton as rank ``rank`` sees it: each per-rank leaf replaced by that rank's
    (rank 0's for a rank the save did not have); and the names of the leaves so replaced
    by rank 0's."""
    borrowed: list[str] = []

    def resolve(node: dict[str, Any], name: str) -> dict[str, Any]:
        kind = next(iter(node))
        body = node[kind]
        if kind == "dict":
            return {"dict": [[k, resolve(c, f"{name}/{k}" if name else str(k))]
                             for k, c in body]}
        if kind in ("list", "tuple"):
            return {kind: [resolve(c, f"{name}/{i}" if name else str(i))
                           for i, c in enumerate(body)]}
        if kind == "per_rank":
            if rank >= len(body):
                borrowed.append(name)
            value: dict[str, Any] = body[rank] if rank < len(body) else body[0]
            return value
        return node

    return resolve(skeleton, ""), borrowed


def leaf_key(node: dict[str, Any]) -> str:
    """What an array leaf's data is: its array's path, and for a member of a stacked array
    (``{"array": path, "index": i}``, see ``docs/format.md``) its index there too."""
    path: str = node["array"]
    return path if "index" not in node else f"{path}[{node['index']}]"


def iter_leaves(skeleton: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every leaf node with its name, in tree order."""
    kind = next(iter(skeleton))
    body = skeleton[kind]
    if kind in ("dict", "list", "tuple"):
        pairs = body if kind == "dict" else enumerate(body)
        for key, child in pairs:
            yield from iter_leaves(child, f"{prefix}/{key}" if prefix else str(key))
    else:
        yield prefix, skeleton


def scalar_value(node: dict[str, Any]) -> np.ndarray:
    """The 0-d array an inline scalar node holds (bit-exact)."""
    dtype = dtype_from_name(node["dtype"]).newbyteorder("<")
    return np.frombuffer(bytes.fromhex(node["scalar"]), dtype=dtype).reshape(()).astype(
        dtype.newbyteorder("=")
    )


def unflatten(
    skeleton: dict[str, Any], arrays: Mapping[str, Any], framework: str | None
) -> Any:
    """Rebuild the saved tree from its skeleton and the arrays loaded for it.

    ``framework`` None gives each leaf back as it was saved; "numpy" or "torch"
    converts every array leaf to that framework. ``arrays`` is keyed by ``leaf_key``; a
    key loaded once stays one object, so tied tensors come back sharing memory.
    """
    converted: dict[str, Any] = {}

    def build(node: dict[str, Any]) -> Any:
        kind = next(iter(node))  # a node's first key names its kind
        body = node[kind]
        if kind == "dict":
            return {key: build(child) for key, child in body}
        if kind in ("list", "tuple"):
            children = [build(child) for child in body]
            return tuple(children) if kind == "tuple" else children
        if kind == "array":
            key = leaf_key(node)
            if key not in converted:
                converted[key] = as_framework(arrays[key], node["kind"], framework)
            return converted[key]
        if kind == "scalar":
            return as_framework(scalar_value(node), node["kind"], framework)
        if kind == "sparse":
            return build_sparse(body, {part: arrays[path] for part, path
                                       in body["arrays"].items()}, framework)
        return _PYTHON_LEAVES[kind](body)

    return build(skeleton)


def as_framework(array: Any, kind: str, framework: str | None) -> Any:
    """A loaded array as the leaf it was saved as (``kind``), or as ``framework`` asks.

    Tensors already placed on a device by the loader pass through unchanged.
    """
    if not isinstance(array, np.ndarray):
        return array
    target = framework or ("torch" if kind == "torch" else "numpy")
    if target == "torch":
        return numpy_to_torch(array)
    return array[()] if kind == "npscalar" else array


_PYTHON_LEAVES: dict[str, Callable[[Any], Any]] = {
    "none": lambda _: None,
    "bool": bool,
    "int": int,
    "float": float.fromhex,
    "str": str,
}
