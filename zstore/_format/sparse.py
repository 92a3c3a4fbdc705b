"""Sparse matrices as leaves: stored as their parts, loaded back as the same kind of object.

A torch sparse tensor (COO, CSR or CSC) or a ``scipy.sparse`` matrix or array (``coo``,
``csr``, ``csc``) is saved as plain arrays beside each other under its name, so it costs
about its nonzeros, and any Zarr reader sees them:

- COO: ``<name>/indices`` (ndim x nnz) and ``<name>/values`` (nnz, ...);
- CSR and CSC: ``<name>/indptr`` (one more than the compressed dim), ``<name>/indices``
  (the other dim's index of each value) and ``<name>/values``.

The tree node ``{"sparse": {"layout", "shape", "kind", "arrays": {part: path}, ...}}``
says how to put them back together (format 4). The parts are kept exactly as the object
holds them (an uncoalesced COO tensor stays uncoalesced, unsorted indices stay unsorted),
so what is loaded equals what was saved, bit for bit.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from zstore._format.tensors import numpy_to_torch, require_torch
from zstore.errors import UnsupportedTypeError

PARTS = {"coo": ("indices", "values"), "csr": ("indptr", "indices", "values"),
         "csc": ("indptr", "indices", "values")}


def is_sparse(value: Any) -> bool:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return bool(value.layout in (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc))
    scipy_sparse = sys.modules.get("scipy.sparse")
    return scipy_sparse is not None and bool(scipy_sparse.issparse(value))


def split(value: Any, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the node's body without ``arrays``, {part: array or tensor}) of a sparse leaf."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return _split_torch(torch, value, name)
    layout = value.format
    if layout not in PARTS:
        raise UnsupportedTypeError(
            f"leaf {name!r} is a scipy.sparse {layout} {type(value).__name__}; zstore stores "
            "coo, csr and csc: convert it first (m.tocsr())")
    kind = f"scipy.{type(value).__name__}"  # coo_matrix, csr_array, ...
    if kind not in _SCIPY:
        raise UnsupportedTypeError(
            f"leaf {name!r} is a {type(value).__qualname__}; zstore stores scipy's own "
            f"{layout}_matrix and {layout}_array: convert it (scipy.sparse.{layout}_array(m))")
    body = {"layout": layout, "shape": list(value.shape), "kind": kind}
    if layout == "coo":
        indices = np.stack([np.asarray(value.row), np.asarray(value.col)])
        return body, {"indices": indices, "values": np.asarray(value.data)}
    return body, {"indptr": np.asarray(value.indptr), "indices": np.asarray(value.indices),
                  "values": np.asarray(value.data)}


def _split_torch(torch: Any, value: Any, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if value.device.type != "cpu":
        value = value.cpu()
    body: dict[str, Any] = {"shape": list(value.shape), "kind": "torch"}
    if value.layout == torch.sparse_coo:
        body.update(layout="coo", coalesced=bool(value.is_coalesced()))
        return body, {"indices": value._indices(), "values": value._values()}
    layout = "csr" if value.layout == torch.sparse_csr else "csc"
    if value.ndim != 2 or value.values().ndim != 1:
        raise UnsupportedTypeError(
            f"leaf {name!r} is a batched or hybrid sparse {layout.upper()} tensor "
            f"(shape {tuple(value.shape)}); zstore stores 2-d ones: convert it "
            "(t.to_sparse_coo())")
    if layout == "csr":
        return {**body, "layout": layout}, {"indptr": value.crow_indices(),
                                            "indices": value.col_indices(),
                                            "values": value.values()}
    return {**body, "layout": layout}, {"indptr": value.ccol_indices(),
                                        "indices": value.row_indices(),
                                        "values": value.values()}


def check(body: Any) -> None:
    """``ValueError`` unless ``body`` is a sparse node's body ``split`` could have made."""
    ok = (isinstance(body, dict) and body.get("layout") in PARTS
          and isinstance(body.get("shape"), list)
          and all(isinstance(n, int) and n >= 0 for n in body["shape"])
          and isinstance(body.get("kind"), str)
          and (body["kind"] == "torch" or body["kind"] in _SCIPY)
          and isinstance(body.get("arrays"), dict)
          and sorted(body["arrays"]) == sorted(PARTS[body["layout"]])
          and all(isinstance(p, str) for p in body["arrays"].values()))
    if not ok:
        raise ValueError(f"malformed sparse node {body!r}")


_SCIPY = {f"scipy.{layout}_{what}" for layout in PARTS for what in ("matrix", "array")}


def build(body: dict[str, Any], parts: dict[str, np.ndarray], framework: str | None) -> Any:
    """The sparse object a node and its loaded parts stand for; ``framework`` "torch" or
    "numpy" (scipy) converts, None gives back the kind that was saved."""
    kind, layout, shape = body["kind"], body["layout"], tuple(body["shape"])
    target = framework or ("torch" if kind == "torch" else "scipy")
    if target == "torch":
        torch = require_torch()
        t = {k: numpy_to_torch(np.ascontiguousarray(v)) for k, v in parts.items()}
        if layout == "coo":
            return torch.sparse_coo_tensor(t["indices"], t["values"], shape,
                                           is_coalesced=bool(body.get("coalesced", False)))
        make = torch.sparse_csr_tensor if layout == "csr" else torch.sparse_csc_tensor
        return make(t["indptr"], t["indices"], t["values"], shape)
    try:
        import scipy.sparse
    except ImportError:
        raise ImportError(f"a scipy.sparse leaf needs scipy: pip install scipy ({kind})"
                          ) from None
    cls_name = kind.split(".", 1)[1] if kind.startswith("scipy.") else f"{layout}_matrix"
    cls = getattr(scipy.sparse, cls_name)
    if layout == "coo":
        indices = parts["indices"]
        return cls((parts["values"], (indices[0], indices[1])), shape=shape)
    return cls((parts["values"], parts["indices"], parts["indptr"]), shape=shape)
