"""zstore's own data path (whole-shard reads into place, shards assembled in memory) gives
exactly what zarr's pipeline gives, writes what zarr-python and TensorStore read bit for
bit, finds every damaged chunk, and reads other writers' objects too.
"""

from __future__ import annotations

import tracemalloc

import ml_dtypes
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import zstore
from zstore._compat import sync
from zstore.errors import CorruptCheckpointError

DTYPES = [np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16),
          np.dtype(ml_dtypes.float8_e4m3fn), np.dtype(np.int8), np.dtype(np.float64),
          np.dtype(np.bool_)]


def values(shape: tuple[int, ...], dtype: np.dtype, seed: int = 0) -> np.ndarray:
    """Every bit pattern is possible, NaNs and -0.0 included: the bytes must survive."""
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    raw = rng.integers(0, 256, int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
    return raw.view(dtype).reshape(shape)


def same_bytes(got: np.ndarray, expected: np.ndarray) -> bool:
    return (got.shape == expected.shape and got.dtype == expected.dtype
            and np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(expected).tobytes())


def through_zarr(tensor: zstore.LazyTensor, index: tuple[slice, ...]) -> np.ndarray:
    """The same read through zarr-python's pipeline, on the same open checkpoint's store."""
    return np.asarray(sync(tensor.zarr_array().get_orthogonal_selection(index)))


@st.composite
def arrays_and_boxes(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 40), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from(DTYPES))
    chunk = tuple(draw(st.integers(1, n)) for n in shape)
    per_shard = tuple(draw(st.integers(1, 3)) for _ in shape)
    boxes = []
    for _ in range(3):
        box = []
        for n in shape:
            lo = draw(st.integers(0, n - 1))
            box.append(slice(lo, draw(st.integers(lo + 1, n))))
        boxes.append(tuple(box))
    return shape, dtype, chunk, per_shard, draw(st.sampled_from(["none", "blosc", "zstd"])), boxes


@settings(max_examples=60, deadline=None)
@given(case=arrays_and_boxes(), sharded=st.booleans(), where=st.sampled_from(["local", "memory"]))
def test_the_data_path_reads_what_zarr_reads_and_what_was_saved(tmp_path_factory, case, sharded,
                                                                  where):
    shape, dtype, chunk, per_shard, codec, boxes = case
    layout = zstore.Layout(chunk, tuple(c * k for c, k in zip(chunk, per_shard))
                           if sharded else None, codec)
    array = values(shape, dtype)
    url = (str(tmp_path_factory.mktemp("fast") / "ckpt") if where == "local"
           else f"memory://fast/{tmp_path_factory.mktemp('m').name}")
    zstore.save({"a": array}, url, layouts={"a": layout})
    tensor = zstore.open(url)["a"]
    assert tensor.chunk_shape == chunk
    assert same_bytes(tensor[...], array)
    assert same_bytes(through_zarr(tensor, (slice(None),) * len(shape)), array)
    for box in boxes:
        assert same_bytes(tensor[box], array[box]), box
        assert same_bytes(through_zarr(tensor, box), array[box]), box
    plain = zarr.open_array(store=url + "/a", mode="r") if where == "local" else None
    if plain is not None:  # a reader that knows nothing of zstore
        assert same_bytes(np.asarray(plain[...]).view(dtype), array)


@pytest.mark.parametrize("dtype", [np.dtype(ml_dtypes.bfloat16), np.dtype(ml_dtypes.float8_e4m3fn),
                                   np.dtype(np.float32)], ids=str)
@pytest.mark.parametrize("codec", ["none", "blosc"])
def test_tensorstore_reads_what_zstore_writes_bit_for_bit(tmp_path, dtype, codec):
    ts = pytest.importorskip("tensorstore")
    array = values((300, 96), dtype)
    url = str(tmp_path / "ckpt")
    zstore.save({"w": array}, url, codec=codec, access={"w": "rows"})
    store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{url}/w"}},
                    read=True).result()
    got = store.read().result()
    assert str(store.dtype.name) == str(dtype)
    assert got.tobytes() == array.tobytes()


def test_a_flipped_byte_in_any_chunk_is_found_by_every_kind_of_read(tmp_path):
    array = values((64, 256), np.dtype(np.float32))
    url = str(tmp_path / "ckpt")
    layout = zstore.Layout((8, 256), (32, 256), "none")
    zstore.save({"a": array}, url, layouts={"a": layout})
    shard = tmp_path / "ckpt" / "a" / "c" / "1" / "0"
    data = bytearray(shard.read_bytes())
    index = np.frombuffer(bytes(data[-(4 * 16 + 4):-4]), "<u8").reshape(4, 2)
    assert list(index[:, 1]) == [8 * 256 * 4 + 4] * 4  # each body and its crc32c
    assert all(offset % 64 == 0 for offset in index[:, 0])  # bodies start cache-line aligned
    data[int(index[3, 0]) + 100] ^= 0x01  # inside the fourth chunk of the second shard
    shard.write_bytes(bytes(data))
    tensor = zstore.open(url)["a"]
    for index in [np.s_[...], np.s_[32:64], np.s_[56:60, 3:9]]:
        with pytest.raises(CorruptCheckpointError, match="crc32c") as failed:
            tensor[index]
        assert failed.value.key == "a/c/1/0"
    assert same_bytes(tensor[0:32], array[0:32])  # the undamaged shard still reads
    assert same_bytes(tensor[32:56], array[32:56])  # and the undamaged chunks of this one


def test_objects_another_writer_laid_out_differently_are_read_too(tmp_path):
    """zarr orders a shard's chunks along a Morton curve where zstore writes C order: the
    one-read guess fails on the index and the object is decoded from memory instead."""
    array = values((32, 32), np.dtype(np.float32))
    url = str(tmp_path / "ckpt")
    layout = zstore.Layout((8, 8), (32, 32), "none")
    zstore.save({"a": np.zeros_like(array)}, url, layouts={"a": layout})
    zarr.open_array(store=url + "/a", mode="r+")[...] = array  # zarr rewrites the shard
    assert same_bytes(zstore.open(url)["a"][...], array)
    assert same_bytes(zstore.open(url)["a"][3:20, 9:30], array[3:20, 9:30])


def test_a_local_load_decodes_into_the_output_with_no_copy_in_between(tmp_path):
    array = values((4096, 4096), np.dtype(ml_dtypes.bfloat16))  # 32 MiB
    url = str(tmp_path / "ckpt")
    zstore.save({"w": array}, url, codec="none")
    tensor = zstore.open(url)["w"]
    out = np.empty_like(array)
    tensor.read(out=out)  # warm-up: imports, thread pool
    tracemalloc.start()
    try:
        tensor.read(out=out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert same_bytes(out, array)
    assert peak < 1 << 20, peak  # scratch for the crc32c slots and the index only


def test_a_save_writes_each_object_in_one_request(s3):
    array = values((1024, 1024), np.dtype(np.float32))
    layout = zstore.Layout((64, 1024), (256, 1024), "blosc")
    s3.wire.clear()
    with zstore.io_stats() as io:
        zstore.save({"a": array}, s3.url(), layouts={"a": layout},
                    storage_options=s3.storage_options)
    shards = [path.split("?")[0] for method, path, _ in s3.wire.requests
              if method == "PUT" and "/c/" in path]
    assert sorted(s.rsplit("/ckpt/", 1)[1] for s in shards) == [f"a/c/{i}/0" for i in range(4)]
    assert not [path for method, path, _ in s3.wire.requests  # never read-modify-write
                if method == "GET" and "/c/" in path]
    assert io.puts == s3.wire.methods()["PUT"]


def test_a_client_reads_a_large_shard_in_parts_within_the_read_budget(s3):
    array = values((3072, 4096), np.dtype(np.float32))  # 48 MiB, one shard of 24 chunks
    layout = zstore.Layout((128, 4096), (3072, 4096), "none")
    zstore.save({"a": array}, s3.url(), layouts={"a": layout}, codec="none",
                storage_options=s3.storage_options)
    ckpt = zstore.open(s3.url(), storage_options=s3.storage_options)
    out = np.empty_like(array)
    with zstore.configure(read_budget=8 << 20):
        s3.wire.clear()
        tracemalloc.start()
        try:
            ckpt["a"].read(out=out)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert same_bytes(out, array)
    # Its index, then six ranged GETs of 8 MiB (four 2 MiB chunks), as the plan counts.
    assert s3.wire.methods() == {"GET": 7}
    assert zstore.plan(ckpt).load_requests == 2 + 7
    # One GET of the whole shard holds it three times over (moto, in this process, reads
    # the object from its store; s3fs joins what it read): 144 MiB. Parts of 8 MiB, one at
    # a time, hold a few of them (56 MiB measured, moto's 48 MiB read of the object for
    # each ranged GET included).
    assert peak < 72 << 20, peak
