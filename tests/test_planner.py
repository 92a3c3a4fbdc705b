"""The planner: invariants over random arrays and patterns, and what it chooses for known cases."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zstore
from zstore._format import chunks_per_part
from zstore._plan import (
    BUILTIN,
    CHUNK_FULL,
    INDEX_ENTRY,
    INDEX_SHARE,
    MAX_OBJECTS,
    TINY,
    Split,
    plan_specs,
)

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = [np.dtype(d) for d in ("bool", "int8", "float16", "float32", "float64", "complex128")]
DTYPES += [BF16, np.dtype(ml_dtypes.float8_e4m3fn)]


@st.composite
def arrays_and_patterns(draw):
    shape = tuple(draw(st.lists(st.one_of(st.integers(0, 3000), st.sampled_from([1, 7, 1009])),
                                min_size=1, max_size=4)))
    if draw(st.booleans()) and len(shape) <= 2:  # large arrays, where shards matter
        shape = (draw(st.integers(1, 2_000_000)), *shape[1:2])
    dtype = draw(st.sampled_from(DTYPES))
    patterns = draw(st.lists(st.one_of(
        st.sampled_from(["full", "rows", "tensor"]),
        st.builds(Split, st.integers(0, len(shape) - 1), st.integers(1, 16))), max_size=3))
    return shape, dtype, patterns, draw(st.sampled_from(sorted(BUILTIN)))


def _plan_one(shape, dtype, patterns, backend, codec="none"):
    return plan_specs({"a": (shape, dtype)}, access={"a": patterns} if patterns else None,
                      profile=BUILTIN[backend], codec=codec, cores=2).arrays["a"]


@settings(max_examples=400, deadline=None)
@given(arrays_and_patterns())
def test_layout_invariants(case):
    shape, dtype, patterns, backend = case
    a = _plan_one(shape, dtype, patterns, backend)
    chunk, obj = a.layout.chunk_shape, a.layout.object_shape
    extent = [max(1, n) for n in shape]
    nbytes = math.prod(shape) * dtype.itemsize
    assert all(c >= 1 for c in chunk)
    assert all(o % c == 0 for o, c in zip(obj, chunk)), "a shard is whole inner chunks"
    if a.layout.shard_shape is not None:
        grid = [-(-n // c) for n, c in zip(extent, chunk)]
        assert all(g % (o // c) == 0 for g, o, c in zip(grid, obj, chunk)), "shards tile exactly"
        assert math.prod(obj) * dtype.itemsize <= BUILTIN[backend].shard_max
    if nbytes <= TINY:
        assert a.layout.shard_shape is None and a.objects <= 1, "tiny arrays are one object"
        return
    for p in a.patterns:
        if isinstance(p, Split):
            part = p.part_size(shape[p.dim])
            boundary = math.gcd(part, shape[p.dim])
            if boundary * 64 < part:  # a ragged last part: aligned to the part size instead
                boundary = part
            assert boundary % chunk[p.dim] == 0, "part boundaries fall on chunk boundaries"
            assert boundary % obj[p.dim] == 0, "a rank writing its part writes whole shards"
            # each rank reads its part only, save what zarr pads edge chunks of other dims with
            padding = math.prod(-(-n // c) * c / n for d, (n, c) in enumerate(zip(extent, chunk))
                                if d != p.dim)
            assert a.costs[str(p)].amplification <= 1.05 * padding
    if "rows" in a.patterns and a.layout.shard_shape is not None:
        chunks_per_shard = math.prod(o // c for o, c in zip(obj, chunk))
        chunk_bytes = math.prod(chunk) * dtype.itemsize
        assert chunks_per_shard * INDEX_ENTRY <= max(INDEX_ENTRY, INDEX_SHARE * chunk_bytes)
    if not any(isinstance(p, Split) for p in a.patterns) and "rows" not in a.patterns:
        chunk_bytes = math.prod(chunk) * dtype.itemsize
        assert chunk_bytes >= min(nbytes, CHUNK_FULL) // 4, "chunks large enough for the codec"
        assert chunk_bytes <= 4 * CHUNK_FULL, "and small enough to read in parts"
        # Past MAX_OBJECTS only where exact tiling leaves no better choice (prime leading
        # extents), and never with objects smaller than a full chunk.
        object_bytes = math.prod(obj) * dtype.itemsize
        assert a.objects <= MAX_OBJECTS or object_bytes >= min(nbytes, CHUNK_FULL)


@settings(max_examples=100, deadline=None)
@given(arrays_and_patterns())
def test_same_input_same_plan(case):
    shape, dtype, patterns, backend = case
    assert _plan_one(shape, dtype, patterns, backend) == _plan_one(shape, dtype, patterns, backend)


def test_a_row_of_an_embedding_costs_two_small_ranged_gets():
    a = _plan_one((32000, 2048), BF16, ["rows"], "s3", codec="blosc")
    rows = a.costs["rows"]
    chunk_bytes = math.prod(a.layout.chunk_shape) * 2
    assert a.layout.chunk_shape[1] == 2048 and chunk_bytes <= 256 << 10  # tens of KiB: one row
    assert rows.requests == 2
    assert rows.bytes <= 1.1 * (chunk_bytes * 0.69 + 4)


def test_tensor_parallel_parts_are_read_without_amplification():
    a = _plan_one((2048, 8192), BF16, [zstore.split(1, 8)], "s3")
    part = a.costs["split(1,8)"]
    assert part.asked == 2048 * 1024 * 2
    assert part.amplification <= 1.05
    assert a.layout.object_shape[1] == 1024


def test_a_short_last_part_is_still_whole_chunks():
    a = _plan_one((1000, 4096), np.dtype("float32"), [zstore.split(0, 4)], "local")
    assert 250 % a.layout.chunk_shape[0] == 0
    assert a.costs["split(0,4)"].amplification <= 1.05


def test_a_ragged_last_part_aligns_chunks_to_the_part_size():
    a = _plan_one((1000, 4096), np.dtype("float32"), [zstore.split(0, 3)], "local")
    assert 334 % a.layout.chunk_shape[0] == 0
    assert a.costs["split(0,3)"].amplification <= 1.05


def test_tiny_tensors_are_not_split():
    a = _plan_one((64, 64), np.dtype("float32"), [zstore.split(0, 8)], "s3")
    assert a.layout.shard_shape is None and a.layout.chunk_shape == (64, 64)


@pytest.mark.parametrize("shape", [(0,), (0, 4096), (4096, 0)])
def test_zero_length_dims_cost_nothing_to_read(shape):
    a = _plan_one(shape, np.dtype("float32"), ["rows"], "s3")
    assert all(c >= 1 for c in a.layout.chunk_shape)
    assert a.costs["full"].requests == 0


def test_huge_1d_arrays_get_bounded_object_counts():
    a = _plan_one((3 * 10**9 + 7,), np.dtype("float32"), [], "s3")
    assert 10 <= a.objects <= MAX_OBJECTS
    assert math.prod(a.layout.chunk_shape) * 4 >= CHUNK_FULL // 2


def test_prime_row_counts_still_tile_into_shards():
    a = _plan_one((50257, 768), np.dtype("float32"), [], "s3")
    assert a.layout.shard_shape is not None and a.objects <= 4
    # A full read needs every chunk of every object: from S3 each is its index, then its
    # chunks in parts of READ_PART bytes, and nothing more.
    chunks = math.prod(o // c for o, c in zip(a.layout.object_shape, a.layout.chunk_shape))
    group = chunks_per_part(math.prod(a.layout.chunk_shape) * 4)
    assert a.costs["full"].requests == a.objects * (1 + -(-chunks // group))


def test_s3_shards_are_tens_of_mib():
    a = _plan_one((32000, 8192), np.dtype("float32"), [], "s3")
    shard_bytes = math.prod(a.layout.shard_shape) * 4
    assert 32 << 20 <= shard_bytes <= 1 << 30


def test_auto_codec_compresses_only_where_storage_is_slower_than_the_cores():
    specs = {"w": ((4096, 4096), np.dtype("float32"))}
    for backend, cores, expected in [("s3", 2, "blosc"), ("local", 2, "none"),
                                     ("memory", 2, "none"), ("s3", 64, "blosc")]:
        p = plan_specs(specs, access=None, profile=BUILTIN[backend], codec="auto", cores=cores)
        assert p.arrays["w"].layout.codec == expected, (backend, cores)


def test_plan_accepts_meta_tensors_and_names_leaves_like_save():
    torch = pytest.importorskip("torch")
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Embedding(1000, 64), torch.nn.Linear(64, 64))
    p = zstore.plan({"model": model.state_dict(), "step": 3}, access={"*0.weight": "rows"})
    assert set(p.arrays) == {"model/0.weight", "model/1.weight", "model/1.bias"}
    assert "rows" in p.arrays["model/0.weight"].costs
    assert str(p.arrays["model/0.weight"].dtype) == "float32"


def test_plan_counts_tied_weights_once_as_save_stores_them():
    torch = pytest.importorskip("torch")

    def tied(device):
        with torch.device(device):
            model = torch.nn.Sequential(torch.nn.Embedding(100, 8), torch.nn.Linear(8, 100),
                                        torch.nn.Linear(8, 100, bias=False))
        model[1].weight = model[0].weight  # tied, as a language model's head and embedding
        return model.state_dict()

    for device in ("cpu", "meta"):  # meta: planned before the weights exist
        p = zstore.plan(tied(device), stack=False)
        assert set(p.arrays) == {"0.weight", "1.bias", "2.weight"}, device
        assert p.parameters == 100 * 8 * 2 + 100
    assert zstore.save(tied("cpu"), "memory://plan/tied", stack=False).arrays == len(p.arrays)


def test_plan_refuses_the_keys_save_refuses():
    for tree in ({"zstore.hashes": np.zeros(3)}, {"a": np.zeros(2), "a/b": np.zeros(2)},
                 {"../up": np.zeros(2)}):
        with pytest.raises(zstore.InvalidKeyError) as planned:
            zstore.plan(tree)
        with pytest.raises(zstore.InvalidKeyError) as saved:
            zstore.save(tree, "memory://plan/refused")
        assert str(planned.value) == str(saved.value)


def test_plan_table_names_every_array_and_the_totals():
    p = zstore.plan({"embed": np.zeros((4000, 256), BF16), "norm": np.zeros(256, BF16)},
                    access={"embed": ["rows", zstore.split(1, 2)]}, backend="s3")
    text = str(p)
    for expected in ("embed", "norm", "rows", "split(1,2)", "2 arrays", "objects", "full load"):
        assert expected in text
    assert p.parameters == 4000 * 256 + 256
    assert p.objects == p.data_objects + 2 + 3  # two arrays' zarr.json, root, hashes, marker


@pytest.mark.parametrize("access, message", [
    ({"w": "diagonal"}, "unknown access pattern"),
    ({"w": zstore.split(2, 4)}, "does not fit 'w' of shape"),
])
def test_bad_access_patterns_name_the_problem(access, message):
    with pytest.raises(ValueError, match=message):
        zstore.plan({"w": np.zeros((8, 8))}, access=access)


def test_split_rejects_nonsense_parts():
    with pytest.raises(ValueError, match="positive"):
        zstore.split(0, 0)


def test_unknown_codec_and_backend_are_named():
    with pytest.raises(ValueError, match="unknown codec 'lz5'"):
        zstore.plan({"w": np.zeros(8)}, codec="lz5")
    with pytest.raises(zstore.ZStoreError, match="unknown backend profile 'tape'"):
        zstore.plan({"w": np.zeros(8)}, backend="tape")


def test_access_patterns_parse_from_their_spelling():
    p = zstore.plan({"w": np.zeros((1 << 12, 1 << 10), "float32")},
                    access={"w": ["split(1, 4)", "ROWS"]})
    assert list(p.arrays["w"].costs) == ["full", "split(1,4)", "rows"]


def test_a_full_load_is_priced_only_where_the_profile_has_prices():
    tree = {"w": np.zeros((8192, 8192), np.float32)}
    s3, local = zstore.plan(tree, backend="s3"), zstore.plan(tree, backend="local")
    expected = s3.load_requests * 4e-7 + s3.stored_bytes / 1e9 * 0.09
    assert s3.load_requests > 2 + s3.data_objects  # its 256 MiB is read in parts
    assert s3.load_price == pytest.approx(expected) and local.load_price == 0
    assert "$" in str(s3) and "$" not in str(local)


MINILM_LIKE = {"embeddings.word_embeddings.weight": np.zeros((30522, 384), np.float32),
               "embeddings.LayerNorm.weight": np.zeros(384, np.float32),
               "encoder.layer.0.attention.self.query.weight": np.zeros((384, 384), np.float32)}


def test_an_access_glob_that_matches_nothing_names_the_closest_arrays():
    with pytest.raises(zstore.InvalidKeyError, match="'\\*embd\\*' matches no array") as e:
        zstore.plan(MINILM_LIKE, access={"*embd*": "rows"})
    assert "'embeddings.word_embeddings.weight'" in str(e.value)
    assert isinstance(e.value, ValueError) and e.value.key == "*embd*"


def test_save_refuses_an_access_glob_that_matches_nothing_before_writing(tmp_path):
    url = str(tmp_path / "ckpt")
    with pytest.raises(zstore.InvalidKeyError, match="close names: .*query") as raised:
        zstore.save(MINILM_LIKE, url, access={"*.quary.weight": zstore.split(0, 2)})
    assert raised.value.key == "*.quary.weight"
    assert not (tmp_path / "ckpt").exists()


def test_a_pattern_for_every_array_needs_no_match():
    assert zstore.plan({}, access={"*embed*": "rows"}).arrays == {}
    assert "rows" in zstore.plan(MINILM_LIKE, access="rows").arrays[
        "embeddings.word_embeddings.weight"].costs


def test_rows_of_a_1d_array_are_skipped_with_a_note():
    p = zstore.plan(MINILM_LIKE, access={"*embed*": "rows"}, backend="s3")
    norm = p.arrays["embeddings.LayerNorm.weight"]
    assert list(norm.costs) == ["full"] and norm.patterns == ("full",)
    assert "rows" in p.arrays["embeddings.word_embeddings.weight"].costs
    assert len(p.notes) == 1 and "'embeddings.LayerNorm.weight' (384,)" in p.notes[0]
    assert "note: rows skipped for 1-D arrays" in str(p)
    assert max(c.amplification for a in p.arrays.values() for c in a.costs.values()) < 384
