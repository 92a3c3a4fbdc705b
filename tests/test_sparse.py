"""Sparse leaves: torch COO/CSR/CSC tensors and scipy.sparse coo/csr/csc matrices and
arrays are stored as their parts, cost about their nonzeros, and load back exactly."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import zstore

torch = pytest.importorskip("torch")  # the Python 3.12 leg runs without torch
sp = pytest.importorskip("scipy.sparse")
pytestmark = pytest.mark.filterwarnings("ignore:Sparse:UserWarning")  # torch's beta notes


def _coo(n: int = 100_000, nnz: int = 1000, coalesce: bool = False) -> torch.Tensor:
    rng = np.random.default_rng(0)
    indices = torch.tensor(rng.integers(0, n, size=(2, nnz)))
    values = torch.tensor(rng.standard_normal(nnz), dtype=torch.float32)
    t = torch.sparse_coo_tensor(indices, values, (n, n))
    return t.coalesce() if coalesce else t


def _same_torch(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.layout != b.layout or a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.layout == torch.sparse_coo:
        return (a.is_coalesced() == b.is_coalesced() and torch.equal(a._indices(), b._indices())
                and torch.equal(a._values(), b._values()))
    pointers = (a.crow_indices(), b.crow_indices()) if a.layout == torch.sparse_csr else \
        (a.ccol_indices(), b.ccol_indices())
    others = (a.col_indices(), b.col_indices()) if a.layout == torch.sparse_csr else \
        (a.row_indices(), b.row_indices())
    return (torch.equal(*pointers) and torch.equal(*others)
            and torch.equal(a.values(), b.values()))


def _same_scipy(a: object, b: object) -> bool:
    if type(a) is not type(b) or a.shape != b.shape or a.dtype != b.dtype:  # type: ignore
        return False
    if a.format == "coo":  # type: ignore[attr-defined]
        return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("row", "col", "data"))
    return all(np.array_equal(getattr(a, k), getattr(b, k))
               for k in ("indptr", "indices", "data"))


def test_a_huge_coo_tensor_costs_about_its_nonzeros(tmp_path):
    coo = _coo()
    url = str(tmp_path / "coo")
    zstore.save({"adj": coo}, url, codec="none")
    ckpt = zstore.open(url)
    nonzeros = coo._nnz() * (2 * 8 + 4)  # int64 row and column, float32 value
    assert ckpt.sparse("adj").nbytes == nonzeros and ckpt.sparse("adj").nnz == 1000
    assert ckpt.stored_nbytes < nonzeros + 4096  # 10^10 dense elements; ~20 KB stored
    back = zstore.load(url)["adj"]
    assert _same_torch(back, coo) and not back.is_coalesced()  # as saved, duplicates kept
    # the parts are plain arrays any Zarr reader sees
    assert np.array_equal(zarr.open_group(url, mode="r")["adj/indices"][...], coo._indices())


@pytest.mark.parametrize("make", [
    lambda: _coo(500, 300, coalesce=True),
    lambda: _coo(500, 300).to_dense().to_sparse_csr(),
    lambda: _coo(500, 300).to_dense().to_sparse_csc(),
    lambda: _coo(500, 300).to_dense().to(torch.bfloat16).to_sparse_csr(),
])
def test_torch_sparse_layouts_load_back_exactly(tmp_path, make):
    tensor = make()
    zstore.save({"m": tensor, "dense": torch.ones(3)}, str(tmp_path / "c"))
    back = zstore.load(str(tmp_path / "c"))
    assert _same_torch(back["m"], tensor) and torch.equal(back["dense"], torch.ones(3))


@pytest.mark.parametrize("kind", ["coo_matrix", "csr_matrix", "csc_matrix", "coo_array",
                                  "csr_array", "csc_array"])
def test_scipy_matrices_and_arrays_load_back_as_the_same_class(tmp_path, kind):
    base = sp.random(2000, 700, density=0.005, format="csr", random_state=3, dtype=np.float64)
    matrix = getattr(sp, kind)(base)
    zstore.save({"m": matrix}, str(tmp_path / "c"))
    back = zstore.load(str(tmp_path / "c"))["m"]
    assert _same_scipy(back, matrix)


@pytest.mark.parametrize("make", [
    lambda: torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0),
                                    (7, 9)),
    lambda: torch.zeros(7, 9).to_sparse_csr(),
    lambda: sp.csr_matrix((7, 9), dtype=np.float32),
    lambda: sp.coo_array((7, 9), dtype=np.int64),
])
def test_a_sparse_leaf_with_no_nonzeros(tmp_path, make):
    value = make()
    zstore.save({"nothing": value}, str(tmp_path / "c"))
    ckpt = zstore.open(str(tmp_path / "c"))
    assert ckpt.sparse("nothing").nnz == 0
    back = zstore.load(str(tmp_path / "c"))["nothing"]
    assert (_same_torch(back, value) if isinstance(value, torch.Tensor)
            else _same_scipy(back, value))


def test_csr_rows_and_csc_columns_read_lazily(tmp_path):
    rng = np.random.default_rng(5)  # 2,000,000 x 256: 8 MB of row pointers, 51,200 nonzeros
    rows = np.sort(rng.integers(0, 2_000_000, 51_200))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=2_000_000))])
    matrix = sp.csr_matrix((rng.standard_normal(51_200).astype(np.float32),
                            rng.integers(0, 256, 51_200).astype(np.int32),
                            indptr.astype(np.int32)), shape=(2_000_000, 256))
    url = str(tmp_path / "c")
    zstore.save({"rows": matrix, "cols": sp.csc_matrix(matrix.T)}, url, codec="none")
    ckpt = zstore.open(url)
    with zstore.io_stats() as stats:
        part = ckpt.sparse("rows").rows(50_000, 50_100)
    assert _same_scipy(part, matrix[50_000:50_100])
    whole = ckpt.sparse("rows").nbytes
    assert stats.bytes_read < whole / 10  # a chunk of each part, never all of them
    cols = ckpt.sparse("cols").columns(50_000, 50_100, framework="torch")
    assert cols.layout == torch.sparse_csc and cols.shape == (256, 100)
    assert np.array_equal(cols.to_dense().numpy(), matrix[50_000:50_100].toarray().T)
    with pytest.raises(ValueError, match="columns"):
        ckpt.sparse("rows").columns(0, 1)
    with pytest.raises(KeyError, match="sparse leaf"):
        ckpt["rows"]
    assert ckpt.sparse_names == ["rows", "cols"]


def test_sparse_leaves_with_numbered_names_are_never_stacked(tmp_path):
    layers = [_coo(300, 50 + i) for i in range(3)]  # the same shapes... of different nnz
    same = [torch.zeros(4, 4).to_sparse_csr() for _ in range(3)]  # ... and of equal parts
    zstore.save({"adj": layers, "csr": same}, str(tmp_path / "c"))
    back = zstore.load(str(tmp_path / "c"))
    assert all(_same_torch(a, b) for a, b in zip(back["adj"], layers))
    assert all(_same_torch(a, b) for a, b in zip(back["csr"], same))


def test_unsupported_sparse_kinds_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(zstore.UnsupportedTypeError, match="tocsr"):
        zstore.save({"m": sp.lil_matrix((3, 3))}, str(tmp_path / "lil"))
    batched = torch.stack([torch.eye(3), torch.eye(3)]).to_sparse_csr()
    with pytest.raises(zstore.UnsupportedTypeError, match="batched"):
        zstore.save({"m": batched}, str(tmp_path / "batched"))
    assert not (tmp_path / "lil").exists() and not (tmp_path / "batched").exists()


def test_framework_converts_between_torch_and_scipy(tmp_path):
    matrix = sp.random(50, 40, density=0.1, format="csr", random_state=2, dtype=np.float32)
    zstore.save({"m": matrix}, str(tmp_path / "c"))
    t = zstore.load(str(tmp_path / "c"), framework="torch")["m"]
    assert t.layout == torch.sparse_csr
    assert np.array_equal(t.to_dense().numpy(), matrix.toarray())


def test_zstore_info_lists_sparse_leaves(tmp_path, capsys):
    from zstore._cli import main

    zstore.save({"adj": torch.eye(5).to_sparse_csr()}, str(tmp_path / "c"))
    assert main(["info", str(tmp_path / "c")]) == 0
    assert "sparse csr, 5 nonzeros" in capsys.readouterr().out
