"""save(base=...): objects whose raw bytes did not change are copied, never re-encoded or
uploaded."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

import zstore
from zstore._format import HASHES, box_hash, decode_hashes, object_boxes


def test_object_boxes_tile_the_array_with_ragged_edges():
    boxes = dict(object_boxes("w", (5, 7), (2, 4)))
    assert list(boxes)[:3] == ["w/c/0/0", "w/c/0/1", "w/c/1/0"]
    assert len(boxes) == 3 * 2
    assert boxes["w/c/2/1"] == (slice(4, 5), slice(4, 7))
    covered = np.zeros((5, 7), int)
    for box in boxes.values():
        covered[box] += 1
    assert (covered == 1).all()
    assert dict(object_boxes("e", (0, 3), (4, 3))) == {}


def test_box_hash_sees_every_bit_of_bf16_and_strided_boxes():
    a = np.zeros((4, 6), ml_dtypes.bfloat16)
    b = a.copy()
    b.view(np.uint16)[3, 5] ^= 1  # the lowest bit of one value
    box = (slice(2, 4), slice(1, 6, 1))
    assert box_hash(a, box) != box_hash(b, box)
    assert (box_hash(a, (slice(0, 2), slice(0, 6)))
            == box_hash(a.T.copy().T, (slice(0, 2), slice(0, 6))))


@pytest.mark.parametrize("raw", [None, b"not json", b'{"algorithm": "md5", "objects": {"a": "b"}}',
                                 b'{"algorithm": "sha256", "objects": [1]}', b"[]"])
def test_unreadable_hashes_mean_nothing_is_reused(raw):
    assert decode_hashes(raw) == {}


def _rows(n_rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n_rows, 256)).astype(np.float32)


def test_only_the_changed_shard_of_an_array_is_uploaded(s3):
    options = s3.storage_options
    w = _rows(4096)
    split = {"w": zstore.split(0, 4)}  # one shard (at least) per tensor-parallel part
    first = zstore.save({"w": w}, s3.url("a"), storage_options=options, access=split)
    ckpt = zstore.open(s3.url("a"), storage_options=options)
    shards = -(-w.shape[0] // ckpt["w"].shard_shape[0])
    assert shards >= 2, ckpt["w"].shard_shape
    # the first save had no base, so it recorded no hashes: the second reuses nothing
    second = zstore.save({"w": w}, s3.url("b"), storage_options=options, base=s3.url("a"),
                         access=split)
    assert second.copied_objects == 0 and first.copied_objects == 0
    changed = w.copy()
    changed[-1, -1] += 1.0  # the last shard only
    s3.wire.clear()
    third = zstore.save({"w": changed}, s3.url("c"), storage_options=options, base=s3.url("b"),
                        access=split)
    assert third.copied_objects == shards - 1 == s3.wire.copies
    assert s3.wire.bytes_received < 2 * third.stored_bytes / shards + 64 * 1024
    assert np.array_equal(zstore.load(s3.url("c"), storage_options=options)["w"], changed)


def test_a_changed_layout_reuses_nothing(tmp_path):
    w = _rows(2048)
    zstore.save({"w": w}, str(tmp_path / "a"), base=None)
    zstore.save({"w": w}, str(tmp_path / "b"), base=str(tmp_path / "a"))
    same = zstore.save({"w": w}, str(tmp_path / "c"), base=str(tmp_path / "b"))
    assert same.copied_objects > 0 and same.uploaded_bytes == 0
    other = zstore.save({"w": w}, str(tmp_path / "d"), base=str(tmp_path / "c"),
                        access={"w": "rows"})
    assert other.copied_objects == 0
    assert np.array_equal(zstore.open(str(tmp_path / "d"))["w"][5], w[5])


def test_a_base_that_never_committed_is_refused_before_anything_is_written(tmp_path):
    zstore.save({"w": np.ones(4)}, str(tmp_path / "a"))
    (tmp_path / "a" / "zstore.commit.json").unlink()
    with pytest.raises(zstore.IncompleteCheckpointError):
        zstore.save({"w": np.ones(4)}, str(tmp_path / "b"), base=str(tmp_path / "a"))
    assert not (tmp_path / "b").exists()


def test_hashes_stay_out_of_the_root_metadata(tmp_path):
    zstore.save({"w": np.ones(4)}, str(tmp_path / "a"))
    zstore.save({"w": np.ones(4)}, str(tmp_path / "b"), base=str(tmp_path / "a"))
    recorded = json.loads((tmp_path / "b" / HASHES).read_text())
    assert list(recorded["objects"]) == ["w/c/0"]
    assert "objects" not in (tmp_path / "b" / "zarr.json").read_text()
