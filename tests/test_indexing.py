"""LazyTensor indexing: numpy's answers, only the chunks needed, clear errors, caller buffers."""

from __future__ import annotations

import numpy as np
import pytest

import zstore

A = np.arange(3000 * 40, dtype=np.float32).reshape(3000, 40)


@pytest.fixture(scope="module")
def w():
    zstore.save({"w": A, "v": np.arange(5)}, "memory://indexing/ckpt", overwrite=True,
                access={"w": "rows"})
    return zstore.open("memory://indexing/ckpt")["w"]


@pytest.mark.parametrize("index", [
    7, -1, (5, -3), np.s_[10:20], np.s_[::-1], np.s_[2900:10:-7, ::3], np.s_[..., 5],
    np.s_[-5:], np.s_[5:2], [2999, 0, 7, 7, -3], np.array([4, 2]), (slice(None), [39, 0]),
    (np.arange(3000) % 997 == 0, slice(1, 3)), np.s_[1:4, ...], (),
], ids=repr)
def test_reads_give_numpys_answer(w, index):
    got = w[index]
    expected = A[index]
    assert got.shape == expected.shape and np.array_equal(got, expected)


@pytest.mark.parametrize("index, message", [
    (3000, "index 3000 is out of range for dim 0 of 'w' with shape \\(3000, 40\\)"),
    ((0, -41), "index -41 is out of range for dim 1"),
    ([1, 3000], "index 3000 is out of range for dim 0"),
    ((0, 0, 0), "too many indices \\(3\\)"),
    ((Ellipsis, 0, Ellipsis), "only one '...'"),
    (([1], [2]), "only one integer or boolean array"),
    (None, "newaxis"),
    ("rows", "not an int, a slice"),
    (np.ones(7, bool), "boolean index of shape \\(7,\\)"),
])
def test_bad_indexes_raise_index_error_naming_the_shape(w, index, message):
    with pytest.raises(IndexError, match=message):
        w[index]


def test_read_decodes_into_a_buffer_the_caller_owns(w):
    out = np.empty((100, 40), np.float32)
    assert w.read(np.s_[200:300], out=out) is out and np.array_equal(out, A[200:300])
    gathered = np.empty((3, 40), np.float32)
    assert w.read([9, 1, 9], out=gathered) is gathered and np.array_equal(gathered, A[[9, 1, 9]])


def test_a_buffer_of_the_wrong_shape_or_dtype_is_refused(w):
    with pytest.raises(ValueError,
                       match="must be a C-contiguous float32 array of shape \\(10, 40\\)"):
        w.read(np.s_[:10], out=np.empty((10, 40), np.float64))
    with pytest.raises(ValueError, match="not contiguous"):
        w.read(np.s_[:10], out=np.empty((40, 10), np.float32).T)


def test_a_row_gather_on_s3_fetches_only_the_chunks_of_those_rows(s3):
    embed = np.random.default_rng(5).standard_normal((20000, 64), dtype=np.float32)
    zstore.save({"embed": embed}, s3.url(), storage_options=s3.storage_options,
                access={"embed": "rows"}, codec="none")
    ckpt = zstore.open(s3.url(), storage_options=s3.storage_options)
    rows_per_chunk = ckpt["embed"].chunk_shape[0]
    tokens = np.array([17, 19000, 17, 5 * rows_per_chunk + 1])  # three distinct chunks
    s3.wire.clear()
    with zstore.io_stats() as io:
        got = ckpt["embed"][tokens]
    assert np.array_equal(got, embed[tokens])
    shards = {int(t) // ckpt["embed"].shard_shape[0] for t in tokens}
    # one GET per chunk and one per shard index (zarr 3.2+ may merge neighbouring ranges)
    assert s3.wire.methods()["GET"] <= 3 + len(shards)
    # the three chunks, their indexes, and on zarr 3.2+ gaps it merges (at most 1 MiB each)
    chunk_bytes = rows_per_chunk * 64 * 4 + 4
    assert io.bytes_read <= 3 * chunk_bytes + len(shards) * 64 * 1024 + 2 * (1 << 20)
