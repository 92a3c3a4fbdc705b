"""Reading many arrays at once: read_many, load(keys=...), overlapped on the wire."""

from __future__ import annotations

import numpy as np
import pytest

import zstore

TREE = {"model": {f"layers.{i}.weight": np.full((4, 4), i, np.float32) for i in range(6)},
        "embed": np.arange(1000.0).reshape(100, 10), "step": 5}


@pytest.fixture(scope="module")
def ckpt():
    zstore.save(TREE, "memory://batched/ckpt", overwrite=True)
    return zstore.open("memory://batched/ckpt")


def test_read_many_reads_each_slice_asked_for(ckpt):
    got = ckpt.read_many({"embed": np.s_[[3, 1]], "model/layers.2.weight": (0, 0)})
    assert np.array_equal(got["embed"], TREE["embed"][[3, 1]])
    assert got["model/layers.2.weight"] == 2


def test_load_with_key_globs_gives_only_those_arrays(ckpt):
    got = zstore.load("memory://batched/ckpt", keys=["model/layers.[12].*", "embed"])
    assert list(got) == ["model/layers.1.weight", "model/layers.2.weight", "embed"]
    assert np.array_equal(got["embed"], TREE["embed"])


def test_load_with_keys_converts_to_torch_when_asked(ckpt):
    torch = pytest.importorskip("torch")
    got = ckpt.load(keys="model/*", framework="torch")
    assert len(got) == 6 and all(isinstance(t, torch.Tensor) for t in got.values())


def test_a_glob_that_matches_nothing_is_an_error_not_a_smaller_load(ckpt):
    with pytest.raises(KeyError, match="matches 'modle/\\*'"):
        ckpt.load(keys=["embed", "modle/*"])


def test_many_small_tensors_are_fetched_with_overlapping_requests(s3):
    tree = {f"t{i}": np.full(16, i, np.int32) for i in range(500)}
    zstore.save(tree, s3.url(), storage_options=s3.storage_options)
    s3.wire.clear()
    got = zstore.load(s3.url(), storage_options=s3.storage_options, keys=["t*"])
    assert all(np.array_equal(got[k], v) for k, v in tree.items())
    assert s3.wire.methods() == {"GET": 502}  # open, then one GET per tensor
    assert s3.wire.max_in_flight >= 8, "round trips overlap instead of queueing one by one"
