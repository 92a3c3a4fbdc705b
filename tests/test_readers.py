"""Every reader the README promises reads every array of a checkpoint, bit for bit.

zarr-python, TensorStore (``zarr3`` driver), ``dask.array.from_zarr`` and xarray each read
every stored array of one checkpoint (float32, float16, int64, bool, bfloat16, a stacked
array, a tied tensor; sharded and not; Blosc and uncompressed) on local disk and on S3
(moto over HTTP), and must see the bytes zstore reads. What a plain reader cannot see
(stacked members, tied names, inline scalars) is in the root group's manifest; the tests
below read it the way ``docs/format.md`` ("Reading a checkpoint without zstore") says to.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import ml_dtypes
import numpy as np
import pytest
import tensorstore as ts
import xarray as xr
import zarr
from zarr.storage import FsspecStore

import zstore
from zstore.testing import MotoS3

torch = pytest.importorskip("torch")  # the Python 3.12 leg runs without torch

STACKED = "zstore.stacked/model/layers.{}.w"


def random_bits(shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    """Any bit pattern (NaN payloads, -0.0, subnormals): the bytes must survive."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.random.default_rng(seed).integers(0, 256, int(np.prod(shape)) * itemsize, np.uint8)
    return raw.view(dtype).reshape(shape)


def state(codec: str) -> tuple[dict[str, Any], dict[str, zstore.Layout]]:
    """One tree with every kind of leaf a plain reader meets, and a sharded layout for one."""
    rng = np.random.default_rng(0)
    floats = [torch.from_numpy(rng.standard_normal(shape, np.float32))
              for shape in [(6, 5), *[(4, 6)] * 4]]
    model = {
        "f32": random_bits((40, 24), "float32", 1),
        "f16": random_bits((9, 7), "float16", 2),
        "i64": rng.integers(-2**62, 2**62, (17, 5)),
        "mask": rng.integers(0, 2, 33).astype(bool),
        "bf16": torch.from_numpy(random_bits((20, 16), "int16", 3)).view(torch.bfloat16),
        **{f"layers.{i}.w": floats[1 + i] for i in range(4)},
        "embed.weight": floats[0],
        "lm_head.weight": floats[0],
        "step": torch.tensor(7),
    }
    # 40 rows in shards of 32 rows of 8-row chunks: a full shard and a partial one.
    return {"model": model, "scale": np.float32(0.5)}, {
        "model/f32": zstore.Layout((8, 24), (32, 24), codec)}


@dataclass
class Saved:
    """A saved checkpoint and how each reader reaches it."""

    url: str
    codec: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    server: MotoS3 | None = None

    def zarr_store(self) -> Any:
        if self.server is None:
            return self.url
        return FsspecStore.from_url(self.url, storage_options=self.storage_options,
                                    read_only=True)

    def kvstore(self, path: str) -> dict[str, Any]:
        if self.server is None:
            return {"driver": "file", "path": f"{self.url}/{path}"}
        bucket, prefix = self.url.removeprefix("s3://").split("/", 1)
        # Credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; moto refuses anonymous.
        return {"driver": "s3", "bucket": bucket, "path": f"{prefix}/{path}/",
                "endpoint": self.server.endpoint_url, "aws_region": "us-east-1",
                "aws_credentials": {"type": "environment"}}


def save(where: str, codec: str, tmp_path_factory: pytest.TempPathFactory,
         server: MotoS3 | None = None) -> Saved:
    tree, layouts = state(codec)
    if server is None:
        saved = Saved(str(tmp_path_factory.mktemp("readers") / "ckpt"), codec)
    else:
        saved = Saved(f"s3://{server.new_bucket()}/ckpt", codec, server.storage_options, server)
    zstore.save(tree, saved.url, storage_options=saved.storage_options, codec=codec,
                layouts=layouts)
    return saved


@pytest.fixture(scope="module", params=[("local", "none"), ("local", "blosc"),
                                        ("s3", "none"), ("s3", "blosc")], ids="-".join)
def checkpoint(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Saved:
    where, codec = request.param
    server = request.getfixturevalue("moto_s3") if where == "s3" else None
    return save(where, codec, tmp_path_factory, server)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    return save("local", "blosc", tmp_path_factory)


def read_zarr(saved: Saved, path: str) -> np.ndarray:
    return zarr.open_group(saved.zarr_store(), mode="r")[path][...]


def read_tensorstore(saved: Saved, path: str) -> np.ndarray:
    array = ts.open({"driver": "zarr3", "kvstore": saved.kvstore(path)}, read=True).result()
    return array.read().result()


def read_dask(saved: Saved, path: str) -> np.ndarray:
    return da.from_zarr(saved.url, component=path,
                        storage_options=saved.storage_options or None).compute()


def read_xarray(saved: Saved, path: str) -> np.ndarray:
    """xarray opens the array's group as a Dataset (every dim is named)."""
    group, _, name = path.rpartition("/")
    dataset = xr.open_zarr(saved.url, group=group or None, consolidated=False,
                           storage_options=saved.storage_options or None)
    return dataset[name].values


READERS: dict[str, Callable[[Saved, str], np.ndarray]] = {
    "zarr": read_zarr, "tensorstore": read_tensorstore, "dask": read_dask, "xarray": read_xarray}


def same_bits(got: np.ndarray, expected: np.ndarray) -> bool:
    return (got.dtype == expected.dtype and got.shape == expected.shape
            and np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(expected).tobytes())


def manifest_leaves(node: dict[str, Any], name: str = "") -> dict[str, dict[str, Any]]:
    """The skeleton's leaf nodes by tree name (keys joined by ``/``)."""
    if "dict" in node:
        leaves: dict[str, dict[str, Any]] = {}
        for key, child in node["dict"]:
            leaves |= manifest_leaves(child, f"{name}/{key}" if name else str(key))
        return leaves
    return {name: node}


def test_readers_meet_sharded_and_unsharded_arrays_in_the_codec_saved(checkpoint):
    ckpt = zstore.open(checkpoint.url, storage_options=checkpoint.storage_options)
    documents = {path: doc for path, (doc, _) in ckpt.array_documents().items()}
    sharded = {path for path, doc in documents.items()
               if doc["codecs"][0]["name"] == "sharding_indexed"}
    assert sharded == {"model/f32", STACKED}
    assert {("blosc" in json.dumps(doc)) for doc in documents.values()} == {
        checkpoint.codec == "blosc"}


def test_zstore_reads_back_the_bits_it_saved(checkpoint):
    tree, _ = state("none")
    ckpt = zstore.open(checkpoint.url, storage_options=checkpoint.storage_options)
    for name, value in tree["model"].items():
        if isinstance(value, torch.Tensor):
            value = value.view(torch.int16) if value.dtype == torch.bfloat16 else value
            got = ckpt[f"model/{name}"][...]
            assert np.asarray(got).view(value.numpy().dtype).tobytes() == value.numpy().tobytes()
        else:
            assert same_bits(ckpt[f"model/{name}"][...], value), name


@pytest.mark.parametrize("reader", READERS)
def test_every_reader_reads_every_stored_array_bit_for_bit(checkpoint, reader, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # TensorStore's s3 credentials
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    ckpt = zstore.open(checkpoint.url, storage_options=checkpoint.storage_options)
    stored = ckpt.stored_arrays()
    assert set(stored) == set(ckpt.array_documents())
    assert set(stored) == {"model/f32", "model/f16", "model/i64", "model/mask", "model/bf16",
                           "model/embed.weight", STACKED}
    got = {path: READERS[reader](checkpoint, path) for path in stored}
    for path, tensor in stored.items():
        assert same_bits(got[path], tensor[...]), (reader, path, got[path].dtype)
    assert got["model/bf16"].dtype == ml_dtypes.bfloat16  # natively, not as another type


def test_plain_zarr_python_without_zstore_reads_every_array_but_bfloat16(local):
    """zarr 3.1 collects the ``zarr.data_type`` entry points zstore publishes but never loads
    them: without ``import zstore`` a bfloat16 array, a group listing one, and the root's
    consolidated metadata fail to parse; every other array reads through its own path."""
    script = f"""
import json, sys, zarr
url = {local.url!r}
def fails(read):
    try:
        read()
    except ValueError as e:
        return str(e)
g = zarr.open_group(url, mode="r", use_consolidated=False)
print(json.dumps({{
    "zstore_imported": "zstore" in sys.modules,
    "f32": g["model/f32"][...].tobytes().hex(),
    "stacked": g[{STACKED!r}][...].tobytes().hex(),
    "bf16": fails(lambda: g["model/bf16"][...]),
    "root": fails(lambda: zarr.open_group(url, mode="r")),
    "listing": fails(lambda: list(g["model"].array_keys())),
}}))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True)
    seen = json.loads(run.stdout)
    ckpt = zstore.open(local.url)
    assert seen["zstore_imported"] is False
    assert bytes.fromhex(seen["f32"]) == ckpt["model/f32"][...].tobytes()
    assert bytes.fromhex(seen["stacked"]) == ckpt.stored_arrays()[STACKED][...].tobytes()
    error = "No Zarr data type found that matches 'bfloat16'"
    assert seen["bf16"] == seen["root"] == seen["listing"] == error


@pytest.mark.filterwarnings("ignore:Object at zstore.:UserWarning")  # zstore's own JSON files
def test_xarray_opens_every_group_of_a_checkpoint(local):
    """Every array names its dims (``<array name>.<axis>``), unique to it, so a group is a
    Dataset and the checkpoint a DataTree; the root holds the manifest only."""
    tree = xr.open_datatree(local.url, engine="zarr", consolidated=False)
    ckpt = zstore.open(local.url)
    for path, tensor in ckpt.stored_arrays().items():
        group, _, name = path.rpartition("/")
        variable = tree[group][name] if group else tree[name]
        assert variable.dims == tuple(f"{name}.{axis}" for axis in range(tensor.ndim))
        assert same_bits(variable.values, tensor[...])
    assert xr.open_zarr(local.url, consolidated=False).attrs["zstore"]["format"] == 2


def test_a_stacked_array_holds_each_member_at_the_index_the_manifest_gives(local):
    group = zarr.open_group(local.url, mode="r")
    leaves = manifest_leaves(group.attrs["zstore"]["tree"])
    stacked = group[STACKED]
    ckpt = zstore.open(local.url)
    for i in range(4):
        name = f"model/layers.{i}.w"
        assert leaves[name] == {"array": STACKED, "kind": "torch", "index": i}
        assert stacked.attrs["zstore"]["members"][i] == name
        assert same_bits(stacked[i], ckpt[name][...])


def test_a_tied_tensor_is_one_array_under_its_first_name_in_the_tree(local):
    group = zarr.open_group(local.url, mode="r")
    leaves = manifest_leaves(group.attrs["zstore"]["tree"])
    assert leaves["model/embed.weight"] == leaves["model/lm_head.weight"] == {
        "array": "model/embed.weight", "kind": "torch"}
    assert "lm_head.weight" not in group["model"]


def test_0d_values_are_inline_in_the_manifest_not_arrays(local):
    group = zarr.open_group(local.url, mode="r")
    leaves = manifest_leaves(group.attrs["zstore"]["tree"])
    assert leaves["model/step"] == {"scalar": "0700000000000000", "dtype": "int64",
                                    "kind": "torch"}
    assert leaves["scale"] == {"scalar": "0000003f", "dtype": "float32", "kind": "npscalar"}
    assert np.frombuffer(bytes.fromhex(leaves["scale"]["scalar"]), "<f4")[0] == 0.5
    assert "step" not in group["model"] and "scale" not in group
