"""The default layout: whole inner chunks per shard, ~1 MiB chunks, bounded shards."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zstore.layout import CHUNK_TARGET, SHARD_TARGET, array_metadata, default_layout

DTYPES = [np.dtype(d) for d in ("bool", "int8", "float16", "float32", "float64", "complex128")]
DTYPES.append(np.dtype(ml_dtypes.bfloat16))


@settings(max_examples=300, deadline=None)
@given(shape=st.lists(st.integers(0, 5000), min_size=1, max_size=4),
       dtype=st.sampled_from(DTYPES))
def test_default_layout_invariants(shape, dtype):
    layout = default_layout(tuple(shape), dtype)
    chunk, shard = layout.chunk_shape, layout.object_shape
    assert all(c >= 1 for c in chunk)
    assert all(s % c == 0 for s, c in zip(shard, chunk)), "a shard holds whole inner chunks"
    chunk_bytes = math.prod(chunk) * dtype.itemsize
    assert chunk_bytes <= CHUNK_TARGET or all(c == 1 for c in chunk)
    if layout.shard_shape is not None:
        assert math.prod(shard) * dtype.itemsize <= SHARD_TARGET
        assert any(s > c for s, c in zip(shard, chunk))
    assert all(c <= max(1, n) for c, n in zip(chunk, shape))


def test_small_arrays_are_one_unsharded_object():
    layout = default_layout((256, 256), np.dtype("float32"))
    assert layout.shard_shape is None and layout.chunk_shape == (256, 256)


def test_huge_1d_arrays_are_chunked_and_sharded():
    layout = default_layout((10**9,), np.dtype("float32"))
    assert math.prod(layout.chunk_shape) * 4 <= CHUNK_TARGET
    assert layout.shard_shape is not None and layout.shard_shape[0] * 4 <= SHARD_TARGET


def test_same_input_same_layout():
    assert default_layout((32000, 2048), np.dtype("float32")) == default_layout(
        (32000, 2048), np.dtype("float32"))


@pytest.mark.parametrize("dtype, name, fill", [
    (np.dtype(ml_dtypes.bfloat16), "bfloat16", 0),
    (np.dtype(ml_dtypes.float8_e4m3fn), "float8_e4m3fn", 0),
    (np.dtype(ml_dtypes.float8_e5m2), "float8_e5m2", 0),
    (np.dtype("bool"), "bool", False),
    (np.dtype("complex64"), "complex64", [0.0, 0.0]),
])
def test_array_metadata_uses_tensorstore_dtype_names(dtype, name, fill):
    doc = array_metadata((3000, 256), dtype, default_layout((3000, 256), dtype))
    assert doc["data_type"] == name and doc["fill_value"] == fill
    codecs = doc["codecs"][0]["configuration"]["codecs"] if doc["codecs"][0]["name"] == \
        "sharding_indexed" else doc["codecs"]
    assert codecs[-1] == {"name": "crc32c"}
    assert ("endian" in codecs[0].get("configuration", {})) == (dtype.itemsize > 1)


def test_chunks_hold_whole_rows_so_a_row_is_one_chunk():
    layout = default_layout((32000, 2048), np.dtype(ml_dtypes.bfloat16))
    assert layout.chunk_shape == (256, 2048)
    assert layout.shard_shape == (16384, 2048)


def test_rows_wider_than_a_chunk_are_cut_along_the_next_dim():
    layout = default_layout((4, 1 << 20), np.dtype("float32"))
    assert layout.chunk_shape == (1, 1 << 18)
