"""Bad keys, leaves, metadata, URLs, credentials and storage fail with a clear error, before
anything is written where possible, and never at the cost of an earlier checkpoint."""

from __future__ import annotations

import json
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
    ("zstore.lease.json", "reserved"),
    ("zstore.hashes.json/w", "reserved"),
])
def test_path_like_keys_are_rejected_before_writing(url, key, problem):
    with pytest.raises(zstore.InvalidKeyError, match=problem) as raised:
        zstore.save({"fine": np.ones(2), key: np.ones(2)}, url)
    assert raised.value.key == (key,)
    assert_nothing_written(url)


def test_nested_path_like_keys_are_rejected_too(url):
    with pytest.raises(zstore.InvalidKeyError, match="escape") as raised:
        zstore.save({"model": {"..": {"w": np.ones(2)}}}, url)
    assert raised.value.key == ("model", "..", "w")


@pytest.mark.parametrize("tree, second", [
    ({"a/b": np.ones(2), "a": {"b": np.zeros(2)}}, ("a", "b")),
    ({0: np.ones(2), "0": np.zeros(2)}, ("0",)),
], ids=["slash-vs-nesting", "int-vs-str"])
def test_keys_that_collide_after_joining_are_rejected(url, tree, second):
    with pytest.raises(zstore.InvalidKeyError, match="both map to the array name") as raised:
        zstore.save(tree, url)
    assert raised.value.key == second
    assert_nothing_written(url)


def test_a_leaf_that_is_also_a_group_is_rejected(url):
    with pytest.raises(zstore.InvalidKeyError, match="as a group") as raised:
        zstore.save({"a": np.ones(2), "a/b": np.ones(2)}, url)
    assert raised.value.key == ("a/b",)


@pytest.mark.parametrize("key", [1.5, None, True, ("t",)], ids=repr)
def test_non_str_int_keys_are_rejected(url, key):
    with pytest.raises(zstore.InvalidKeyError, match="must be str or int") as raised:
        zstore.save({key: np.ones(2)}, url)
    assert raised.value.key == (key,) and raised.value.url is None  # before any I/O


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


def test_a_module_or_optimizer_points_to_its_state_dict(url):
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(2, 2)
    with pytest.raises(zstore.UnsupportedTypeError, match=r"model\.state_dict\(\)"):
        zstore.save(model, url)
    with pytest.raises(zstore.UnsupportedTypeError, match=r"'model'.*model\.state_dict\(\)"):
        zstore.save({"model": model, "step": 1}, url)
    with pytest.raises(zstore.UnsupportedTypeError, match=r"optimizer\.state_dict\(\)"):
        zstore.save({"optim": torch.optim.SGD(model.parameters(), lr=0.1)}, url)
    assert_nothing_written(url)


@pytest.mark.parametrize("metadata, match", [
    ({"x": object()}, "JSON values only"),
    ({"x": float("nan")}, "JSON cannot hold"),
    ({(1, 2): "tuple key"}, "must be str or int"),
    ({"labels": {1: "a", "1": "b"}}, "cannot tell apart"),
    ({"x": np.ones(2)}, "put it in the tree"),
    ({"x": np.float32("inf")}, "JSON cannot hold"),
    ("not a dict", "must be a dict"),
])
def test_metadata_must_be_json(url, metadata, match):
    with pytest.raises(zstore.UnsupportedTypeError, match=match):
        zstore.save({"a": np.ones(2)}, url, metadata=metadata)
    assert_nothing_written(url)


def test_unknown_protocol_is_a_clear_url_error():
    with pytest.raises(zstore.InvalidURLError, match="nosuchproto://x") as raised:
        zstore.open("nosuchproto://x")
    assert raised.value.url == "nosuchproto://x"


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
    url = "s3://no-such-bucket-zstore/run/step-1"
    with pytest.raises(zstore.CheckpointNotFoundError, match="no checkpoint at") as raised:
        zstore.open(url, storage_options=s3.storage_options)
    assert raised.value.url == url


def test_save_to_a_missing_bucket_names_the_bucket(s3):
    url = "s3://no-such-bucket-zstore/run/step-1"
    with pytest.raises(zstore.InvalidURLError, match="no-such-bucket-zstore") as raised:
        zstore.save({"a": np.ones(2)}, url, storage_options=s3.storage_options)
    assert raised.value.url == url


# --- storage that refuses, fails or runs out of room; metadata that lies ---------------------

SECRET = "s3cr3t-DO-NOT-PRINT"


@pytest.fixture
def denying(moto_s3):
    from zstore.testing import Faults

    yield moto_s3
    moto_s3.faults = Faults()


def test_wrong_credentials_are_an_access_error_that_never_shows_the_secret(denying, caplog):
    from zstore.testing import Faults

    bucket = denying.new_bucket("denied")
    options = dict(denying.storage_options, secret=SECRET)
    denying.faults = Faults(rate=1.0, kinds=("403",))
    caplog.set_level("DEBUG")
    with pytest.raises(zstore.StorageAccessError, match="credentials") as raised:
        zstore.save({"w": np.ones(3)}, f"s3://{bucket}/c", storage_options=options)
    with pytest.raises(zstore.StorageAccessError) as opened:
        zstore.open(f"s3://{bucket}/c", storage_options=options)
    for text in (str(raised.value), str(opened.value), caplog.text):
        assert SECRET not in text


def test_missing_credentials_are_an_access_error(s3, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    options = {k: v for k, v in s3.storage_options.items() if k not in ("key", "secret")}
    with pytest.raises(zstore.StorageAccessError, match="credentials"):
        zstore.save({"w": np.ones(3)}, s3.url(), storage_options=options)


def test_a_read_only_bucket_refuses_the_save_and_keeps_the_old_checkpoint(denying):
    from zstore.testing import Faults

    bucket = denying.new_bucket("readonly")
    url, options = f"s3://{bucket}/c", denying.storage_options
    zstore.save({"w": np.ones(3)}, url, storage_options=options)
    denying.faults = Faults(rate=1.0, kinds=("403",), methods=("PUT", "POST", "DELETE"))
    with pytest.raises(zstore.StorageAccessError) as raised:
        zstore.save({"w": np.zeros(3)}, url, storage_options=options, overwrite=True)
    assert raised.value.url == url
    assert np.array_equal(zstore.load(url, storage_options=options)["w"], np.ones(3))


def test_a_full_disk_midway_fails_cleanly_and_the_next_save_works(tmp_path, monkeypatch):
    import errno
    import os

    real, writes = os.writev, [0]

    def filling_up(fd, buffers):  # the system call local data objects are written with
        writes[0] += 1
        if writes[0] > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, buffers)

    zstore.save({"w": np.ones(3)}, str(tmp_path / "previous"))
    monkeypatch.setattr(os, "writev", filling_up)
    tree = {f"a{i}": np.full(100, i) for i in range(10)}
    with pytest.raises(zstore.StorageFailedError, match="No space left") as raised:
        zstore.save(tree, str(tmp_path / "c"))
    assert raised.value.url == str(tmp_path / "c")
    monkeypatch.undo()
    with pytest.raises(zstore.IncompleteCheckpointError):
        zstore.open(str(tmp_path / "c"))
    assert np.array_equal(zstore.load(str(tmp_path / "previous"))["w"], np.ones(3))
    zstore.save(tree, str(tmp_path / "c"))  # room again: the leftovers are replaced
    assert np.array_equal(zstore.load(str(tmp_path / "c"))["a7"], np.full(100, 7))


def test_huge_metadata_is_refused_before_writing(url):
    with pytest.raises(zstore.UnsupportedTypeError, match="limit"):
        zstore.save({"a": np.ones(2)}, url, metadata={"blob": "x" * (2 << 20)})
    assert_nothing_written(url)


def test_a_truncated_root_metadata_is_corrupt(tmp_path):
    zstore.save({"a": np.ones(2)}, str(tmp_path / "c"))
    root = tmp_path / "c" / "zarr.json"
    root.write_bytes(root.read_bytes()[:50])
    with pytest.raises(zstore.CorruptCheckpointError,
                       match="does not match its commit marker") as raised:
        zstore.open(str(tmp_path / "c"))
    assert raised.value.url == str(tmp_path / "c") and raised.value.key == "zarr.json"


def test_a_checkpoint_from_a_newer_format_is_refused_by_name(tmp_path):
    zstore.save({"a": np.ones(2)}, str(tmp_path / "c"))
    marker = tmp_path / "c" / "zstore.commit.json"
    doc = json.loads(marker.read_text())
    marker.write_text(json.dumps(dict(doc, format=99)))
    with pytest.raises(zstore.UnsupportedFormatError, match="upgrade zstore") as raised:
        zstore.open(str(tmp_path / "c"))
    assert raised.value.version == 99 and raised.value.url == str(tmp_path / "c")


def test_a_meta_tensor_is_refused_before_writing(url):
    torch = pytest.importorskip("torch")
    with pytest.raises(zstore.UnsupportedTypeError, match="meta device"):
        zstore.save({"ok": torch.ones(2), "w": torch.empty(3, device="meta")}, url)
    assert_nothing_written(url)


def test_a_checkpoint_nested_in_another_is_never_deleted_with_it(tmp_path):
    from zstore._write.delete import delete

    outer, inner = str(tmp_path / "a"), str(tmp_path / "a" / "inner")
    zstore.save({"w": np.ones(3)}, outer)
    zstore.save({"w": np.full(3, 2.0)}, inner)
    with pytest.raises(zstore.NestedCheckpointError) as raised:
        zstore.save({"w": np.zeros(3)}, outer, overwrite=True)
    assert isinstance(raised.value, zstore.CheckpointExistsError)
    assert raised.value.url == outer and raised.value.nested == "inner"
    with pytest.raises(zstore.NestedCheckpointError) as raised:
        delete(outer)
    assert raised.value.url == outer and raised.value.nested == "inner"
    with pytest.raises(zstore.NestedCheckpointError) as raised:  # a folder holding checkpoints
        zstore.save({"w": np.zeros(3)}, str(tmp_path))
    assert raised.value.url == str(tmp_path) and raised.value.nested == "a"
    assert "not written by zstore" not in str(raised.value)  # they are zstore's, not foreign
    assert np.array_equal(zstore.load(outer)["w"], np.ones(3))
    assert np.array_equal(zstore.load(inner)["w"], np.full(3, 2.0))


# --- opening something that is not a checkpoint says what it is -----------------------------

def test_opening_a_run_root_lists_its_steps_and_how_to_open_one(backend):
    root = backend.url("run")
    mgr = zstore.CheckpointManager(root, storage_options=backend.storage_options)
    for step in (100, 200):
        mgr.save(step, {"w": np.ones(3)})
    with pytest.raises(zstore.CheckpointNotFoundError) as caught:
        zstore.open(root, storage_options=backend.storage_options)
    message = str(caught.value)
    assert "CheckpointManager run" in message and "100, 200" in message
    assert f"zstore.open({root + '/step-200'!r})" in message


def test_opening_a_folder_of_checkpoints_names_them(tmp_path):
    for name in ("a", "b"):
        zstore.save({"w": np.ones(3)}, str(tmp_path / "ckpts" / name))
    with pytest.raises(zstore.CheckpointNotFoundError, match="2 below it: a, b") as raised:
        zstore.open(str(tmp_path / "ckpts"))
    assert raised.value.url == str(tmp_path / "ckpts")


def test_opening_a_safetensors_file_says_so_and_how_to_convert_it(tmp_path):
    safetensors = pytest.importorskip("safetensors.numpy")
    path = str(tmp_path / "model.safetensors")
    safetensors.save_file({"w": np.zeros(4, np.float32)}, path)
    with pytest.raises(zstore.CheckpointNotFoundError,
                       match=r"is a safetensors file.*zstore\.convert\("):
        zstore.open(path)
