"""A Layout as Zarr v3 JSON and back: TensorStore's dtype names, crc32c on every chunk."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from zstore._format import CODECS, Layout, array_metadata, layout_from_metadata

SHARDED = Layout((256, 256), (3000, 256))


@pytest.mark.parametrize("dtype, name, fill", [
    (np.dtype(ml_dtypes.bfloat16), "bfloat16", 0),
    (np.dtype(ml_dtypes.float8_e4m3fn), "float8_e4m3fn", 0),
    (np.dtype(ml_dtypes.float8_e5m2), "float8_e5m2", 0),
    (np.dtype("bool"), "bool", False),
    (np.dtype("complex64"), "complex64", [0.0, 0.0]),
])
def test_array_metadata_uses_tensorstore_dtype_names(dtype, name, fill):
    doc = array_metadata("w", (3000, 256), dtype, SHARDED)
    assert doc["data_type"] == name and doc["fill_value"] == fill
    codecs = doc["codecs"][0]["configuration"]["codecs"]
    assert codecs[-1] == {"name": "crc32c"}
    assert ("endian" in codecs[0].get("configuration", {})) == (dtype.itemsize > 1)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("layout", [Layout((64, 8), None), SHARDED])
def test_a_layout_reads_back_from_its_metadata(layout, codec):
    layout = Layout(layout.chunk_shape, layout.shard_shape, codec)
    document = array_metadata("w", (3000, 256), np.dtype("float32"), layout)
    assert layout_from_metadata(document) == layout


def test_blosc_gets_an_explicit_block_size_and_shuffle_by_item_width():
    wide = array_metadata("w", (3000, 256), np.dtype("float32"), SHARDED)
    narrow = array_metadata("w", (3000, 256), np.dtype("int8"), SHARDED)
    blosc = [c for c in wide["codecs"][0]["configuration"]["codecs"] if c["name"] == "blosc"][0]
    assert blosc["configuration"]["blocksize"] == 1 << 20
    assert blosc["configuration"]["shuffle"] == "shuffle"
    assert "bitshuffle" in str(narrow["codecs"])
