"""Bad keys, leaves, metadata and URLs fail with a clear error before anything is written."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

import zstore


@pytest.fixture
def url() -> str:
    return f"memory://bad-input/{uuid.uuid4().hex}"


def assert_nothing_written(url: str) -> None:
    with pytest.raises(zstore.CheckpointNotFoundError):
        zstore.open(url)


@pytest.mark.parametrize("key, problem", [
    ("..", "escape"),
    ("a/../b", "escape"),
    (".", "escape"),
    ("/abs", "empty path segment"),
    ("trailing/", "empty path segment"),
    ("a//b", "empty path segment"),
    ("back\\slash", "backslash"),
    ("new\nline", "control character"),
    ("__reserved", "Zarr reserves"),
    ("zarr.json", "metadata"),
    ("zstore.commit.json", "commit marker"),
])
def test_path_like_keys_are_rejected_before_writing(url, key, problem):
    with pytest.raises(zstore.InvalidKeyError, match=problem):
        zstore.save({"fine": np.ones(2), key: np.ones(2)}, url)
    assert_nothing_written(url)


def test_nested_path_like_keys_are_rejected_too(url):
    with pytest.raises(zstore.InvalidKeyError, match="escape"):
        zstore.save({"model": {"..": {"w": np.ones(2)}}}, url)


@pytest.mark.parametrize("tree", [
    {"a/b": np.ones(2), "a": {"b": np.zeros(2)}},
    {0: np.ones(2), "0": np.zeros(2)},
], ids=["slash-vs-nesting", "int-vs-str"])
def test_keys_that_collide_after_joining_are_rejected(url, tree):
    with pytest.raises(zstore.InvalidKeyError, match="both map to the array name"):
        zstore.save(tree, url)
    assert_nothing_written(url)


def test_a_leaf_that_is_also_a_group_is_rejected(url):
    with pytest.raises(zstore.InvalidKeyError, match="as a group"):
        zstore.save({"a": np.ones(2), "a/b": np.ones(2)}, url)


@pytest.mark.parametrize("key", [1.5, None, True, ("t",)], ids=repr)
def test_non_str_int_keys_are_rejected(url, key):
    with pytest.raises(zstore.InvalidKeyError, match="must be str or int"):
        zstore.save({key: np.ones(2)}, url)


@pytest.mark.parametrize("leaf, match", [
    (np.array(["a", "b"]), "dtype <U1"),
    (np.array([object()], dtype=object), "dtype object"),
    (np.array(["2020-01-01"], dtype="datetime64[D]"), "datetime64"),
    (object(), "no pickle"),
    (b"bytes", "no pickle"),
    ({1, 2}, "no pickle"),
], ids=["str-array", "object-array", "datetime", "object", "bytes", "set"])
def test_unsupported_leaves_are_rejected_before_writing(url, leaf, match):
    with pytest.raises(zstore.UnsupportedTypeError, match=match):
        zstore.save({"ok": np.ones(2), "bad": leaf}, url)
    assert_nothing_written(url)


def test_a_bare_array_is_not_a_tree(url):
    with pytest.raises(zstore.UnsupportedTypeError, match="wrap a single array"):
        zstore.save(np.ones(3), url)


@pytest.mark.parametrize("metadata, match", [
    ({"x": object()}, "JSON values only"),
    ({"x": float("nan")}, "JSON cannot hold"),
    ({1: "int key"}, "must be a str"),
    ("not a dict", "must be a dict"),
])
def test_metadata_must_be_json(url, metadata, match):
    with pytest.raises(zstore.UnsupportedTypeError, match=match):
        zstore.save({"a": np.ones(2)}, url, metadata=metadata)
    assert_nothing_written(url)


def test_unknown_protocol_is_a_clear_url_error():
    with pytest.raises(zstore.InvalidURLError, match="nosuchproto://x"):
        zstore.open("nosuchproto://x")


def test_empty_url_is_rejected():
    with pytest.raises(zstore.InvalidURLError, match="non-empty"):
        zstore.save({"a": np.ones(1)}, "")


def test_unknown_codec_is_rejected_before_writing(url):
    with pytest.raises(ValueError, match="unknown codec 'lz5'"):
        zstore.save({"a": np.ones(1)}, url, codec="lz5")
    assert_nothing_written(url)


def test_slice_out_of_range_names_the_array_and_shape(url):
    zstore.save({"w": np.ones((4, 3))}, url)
    w = zstore.open(url)["w"]
    with pytest.raises(IndexError, match=r"'w' with shape \(4, 3\)"):
        w[4]
    with pytest.raises(IndexError, match="out of range"):
        w[0, 5]


def test_unknown_name_suggests_similar_ones(url):
    zstore.save({"model": {"embed.weight": np.ones(2)}}, url)
    with pytest.raises(KeyError, match="model/embed.weight"):
        zstore.open(url)["embed.weight"]


def test_open_in_a_missing_bucket_is_not_found(s3):
    with pytest.raises(zstore.CheckpointNotFoundError, match="no checkpoint at"):
        zstore.open("s3://no-such-bucket-zstore/run/step-1", storage_options=s3.storage_options)


def test_save_to_a_missing_bucket_names_the_bucket(s3):
    with pytest.raises(zstore.ZStoreError, match="no-such-bucket-zstore"):
        zstore.save({"a": np.ones(2)}, "s3://no-such-bucket-zstore/run/step-1",
                    storage_options=s3.storage_options)
