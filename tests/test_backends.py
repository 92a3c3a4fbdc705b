"""Saving, opening and committing behave the same on local disk, memory:// and S3 (moto)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import zstore
from zstore._format import COMMIT_MARKER, LEASE, ROOT


def model_tree() -> dict:
    rng = np.random.default_rng(1)
    return {
        "model": {
            "embed.weight": rng.standard_normal((3000, 256)).astype(ml_dtypes.bfloat16),
            "layers.0.weight": rng.standard_normal((256, 256)).astype(np.float32),
            "layers.0.bias": np.zeros(256, np.float32),
        },
        "optim": {"state": {0: {"exp_avg": rng.standard_normal(256).astype(np.float32),
                                "step": np.float32(3)}}},
        "step": 1000,
    }


def assert_same_tree(a, b) -> None:
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same_tree(a[key], b[key])
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    else:
        assert a == b


def test_save_then_load_gives_back_the_tree(backend):
    tree = model_tree()
    info = zstore.save(tree, backend.url(), storage_options=backend.storage_options,
                       metadata={"step": 1000, "config": {"lr": 0.1}})
    assert info.arrays == 4 and info.logical_bytes == 3000 * 256 * 2 + 256 * 256 * 4 + 512 * 4
    back = zstore.load(backend.url(), storage_options=backend.storage_options)
    assert_same_tree(tree, back)
    ckpt = zstore.open(backend.url(), storage_options=backend.storage_options)
    assert ckpt.metadata == {"step": 1000, "config": {"lr": 0.1}}


def test_metadata_with_int_keys_and_numpy_scalars_round_trips(backend):
    config = {"id2label": {0: "NEGATIVE", 1: "POSITIVE"}, "label2id": {"NEGATIVE": 0},
              "hidden_size": np.int64(384), "layer_norm_eps": np.float32(1e-12),
              "tie_word_embeddings": np.bool_(True), "stages": [{3: "x"}, (1, 2)]}
    zstore.save({"w": np.ones(2)}, backend.url(), storage_options=backend.storage_options,
                metadata={"config": config})
    back = zstore.open(backend.url(), storage_options=backend.storage_options).metadata["config"]
    assert back["id2label"] == {0: "NEGATIVE", 1: "POSITIVE"}
    assert list(back["id2label"]) == [0, 1] and back["label2id"] == {"NEGATIVE": 0}
    assert back["hidden_size"] == 384 and type(back["hidden_size"]) is int
    assert back["layer_norm_eps"] == float(np.float32(1e-12))
    assert back["tie_word_embeddings"] is True
    assert back["stages"] == [{3: "x"}, [1, 2]]


def test_metadata_is_stored_as_plain_json_readable_without_zstore(tmp_path):
    zstore.save({"w": np.ones(2)}, str(tmp_path / "c"), metadata={"id2label": {0: "A"}})
    stored = json.loads((tmp_path / "c" / ROOT).read_text())["attributes"]["zstore"]
    assert stored["metadata"] == {"id2label": {"0": "A"}}  # as config.json holds it
    assert stored["metadata_int_keys"] == [["id2label", "0"]]


def test_bf16_weights_compress_with_blosc(backend):
    info = zstore.save(model_tree(), backend.url(), storage_options=backend.storage_options,
                       codec="blosc")
    assert info.stored_bytes < 0.8 * info.logical_bytes  # random normal bf16: exponent bits


def test_the_default_codec_compresses_only_where_storage_is_slower_than_the_cores(backend):
    zstore.save(model_tree(), backend.url(), storage_options=backend.storage_options)
    ckpt = zstore.open(backend.url(), storage_options=backend.storage_options)
    expected = zstore.plan(model_tree(), backend=backend.name).arrays["model/embed.weight"]
    assert zstore.plan(ckpt).arrays["model/embed.weight"].layout == expected.layout
    assert expected.layout.codec == ("none" if backend.name in ("local", "memory") or
                                     (os.cpu_count() or 1) < 2 else "blosc")


def test_lazy_slices_match_the_saved_values(backend):
    tree = model_tree()
    zstore.save(tree, backend.url(), storage_options=backend.storage_options)
    ckpt = zstore.open(backend.url(), storage_options=backend.storage_options)
    w = ckpt["model/embed.weight"]
    assert (w.shape, w.dtype, w.nbytes) == ((3000, 256), np.dtype(ml_dtypes.bfloat16), 3000 * 512)
    expected = tree["model"]["embed.weight"]
    for index in [np.s_[1000:1010], np.s_[-1], np.s_[..., 7], np.s_[5:2900:97, ::3], np.s_[0, 0]]:
        assert np.array_equal(w[index], expected[index], equal_nan=True), index


def test_open_reads_two_objects_and_no_array_data(backend):
    zstore.save(model_tree(), backend.url(), storage_options=backend.storage_options)
    with zstore.io_stats() as io:
        ckpt = zstore.open(backend.url(), storage_options=backend.storage_options)
        _ = [(t.shape, t.dtype, t.chunk_shape, t.shard_shape, t.stored_nbytes)
             for t in ckpt.values()]
    assert io.gets == 2 and io.requests == 2


def test_open_costs_two_gets_on_the_wire(s3):
    zstore.save(model_tree(), s3.url(), storage_options=s3.storage_options)
    s3.wire.clear()
    ckpt = zstore.open(s3.url(), storage_options=s3.storage_options)
    _ = ckpt["model/embed.weight"].shape
    assert s3.wire.methods() == {"GET": 2}


def test_one_row_reads_only_its_chunk_on_the_wire(s3):
    zstore.save(model_tree(), s3.url(), storage_options=s3.storage_options)
    ckpt = zstore.open(s3.url(), storage_options=s3.storage_options)
    w = ckpt["model/embed.weight"]
    s3.wire.clear()
    with zstore.io_stats() as io:
        row = w[1234]
    assert row.shape == (256,)
    assert s3.wire.methods() == {"GET": io.gets} and io.gets <= 2  # shard index + inner chunk
    assert all(ranged for _, _, ranged in s3.wire.requests)
    inner_chunks = -(-w.shape[0] // w.chunk_shape[0])
    index_bytes = 16 * inner_chunks + 4
    one_chunk = w.stored_nbytes * w.chunk_shape[0] / w.shape[0]
    assert io.bytes_read <= 1.1 * one_chunk + index_bytes


def test_save_reads_no_chunk_and_writes_each_object_once(s3):
    s3.wire.clear()
    info = zstore.save(model_tree(), s3.url(), storage_options=s3.storage_options)
    gets = [p for m, p, _ in s3.wire.requests if m == "GET" and "list-type" not in p]
    # metadata only: the commit marker and root (is something there?), the lease (still ours?)
    assert {p.rsplit("/", 1)[-1] for p in gets} == {ROOT, COMMIT_MARKER, LEASE}
    assert len(gets) <= 5
    puts = [p for m, p, _ in s3.wire.requests if m == "PUT"]
    assert len(puts) == len(set(puts)) + 1  # only the root zarr.json is written twice
    assert info.objects == len(set(puts)) - 1  # the lease is gone once the save committed
    assert s3.wire.methods()["DELETE"] == 1  # the lease


def test_arrays_are_written_concurrently(s3):
    tree = {f"t{i}": np.full((64, 64), i, np.float32) for i in range(24)}
    s3.wire.clear()
    zstore.save(tree, s3.url(), storage_options=s3.storage_options)
    assert s3.wire.max_in_flight > 1


def test_opening_a_missing_checkpoint_names_the_url(backend):
    url = backend.url("nothing-here")
    with pytest.raises(zstore.CheckpointNotFoundError, match="no checkpoint at") as raised:
        zstore.open(url, storage_options=backend.storage_options)
    assert raised.value.url == url


def test_without_a_commit_marker_the_checkpoint_does_not_open(backend):
    zstore.save(model_tree(), backend.url(), storage_options=backend.storage_options)
    _delete(backend, COMMIT_MARKER)
    with pytest.raises(zstore.IncompleteCheckpointError, match="no commit marker") as raised:
        zstore.open(backend.url(), storage_options=backend.storage_options)
    assert raised.value.url == backend.url()
    with pytest.raises(zstore.IncompleteCheckpointError):
        zstore.load(backend.url(), storage_options=backend.storage_options)


def test_saving_over_a_committed_checkpoint_needs_overwrite(backend):
    url, opts = backend.url(), backend.storage_options
    zstore.save({"a": np.ones(3)}, url, storage_options=opts)
    with pytest.raises(zstore.CheckpointCommittedError, match="overwrite=True") as raised:
        zstore.save({"b": np.zeros(3)}, url, storage_options=opts)
    assert isinstance(raised.value, zstore.CheckpointExistsError) and raised.value.url == url
    assert list(zstore.open(url, storage_options=opts)) == ["a"]  # the old one is intact
    zstore.save({"b": np.zeros(3)}, url, storage_options=opts, overwrite=True)
    assert list(zstore.load(url, storage_options=opts)) == ["b"]
    assert not any(key.startswith("a/") for key in _keys(backend))  # no old objects left


def test_a_crashed_save_is_replaced_without_mixing_objects(backend):
    url, opts = backend.url(), backend.storage_options
    zstore.save({"old": np.ones(3), "both": np.ones(5)}, url, storage_options=opts)
    _delete(backend, COMMIT_MARKER)  # as if that save had died before committing
    zstore.save({"both": np.zeros(5)}, url, storage_options=opts)
    assert not any(key.startswith("old/") for key in _keys(backend))
    assert zstore.load(url, storage_options=opts)["both"].tolist() == [0.0] * 5


def test_a_changed_root_after_commit_is_detected(backend):
    url, opts = backend.url(), backend.storage_options
    zstore.save({"a": np.ones(3)}, url, storage_options=opts)
    location = zstore._storage.location.resolve(url, opts)
    from zstore._compat import sync

    root = json.loads(sync(location.get(ROOT)))
    root["attributes"]["zstore"]["metadata"] = {"tampered": True}
    sync(location.put(ROOT, json.dumps(root).encode()))
    with pytest.raises(zstore.CorruptCheckpointError,
                       match="does not match its commit marker") as raised:
        zstore.open(url, storage_options=opts)
    assert raised.value.url == url and raised.value.key == ROOT


def test_save_refuses_to_delete_objects_it_did_not_write(backend):
    url, opts = backend.url(), backend.storage_options
    from zstore._compat import sync

    location = zstore._storage.location.resolve(url, opts)
    sync(location.put("notes.txt", b"precious"))
    for overwrite in (False, True):
        with pytest.raises(zstore.ForeignObjectsError) as raised:
            zstore.save({"a": np.ones(3)}, url, storage_options=opts, overwrite=overwrite)
        assert isinstance(raised.value, zstore.CheckpointExistsError)
        assert raised.value.url == url
        assert raised.value.objects == 1 and raised.value.example == "notes.txt"
    assert sync(location.get("notes.txt")) == b"precious"


def test_plain_zarr_reads_every_array_without_zstore(backend):
    tree = model_tree()
    zstore.save(tree, backend.url(), storage_options=backend.storage_options)
    if backend.name == "memory":
        pytest.skip("memory:// lives inside this process; the other backends cover it")
    script = f"""
import json, sys, zarr, numpy as np
if tuple(int(p) for p in zarr.__version__.split(".")[:2]) < (3, 2):
    import zstore._format.dtypes  # zarr 3.1 never loads data-type entry points
group = zarr.open_group({backend.url()!r}, mode="r",
                        storage_options={backend.storage_options!r} or None)
out = {{}}
for path in ["model/embed.weight", "model/layers.0.weight", "optim/state/0/exp_avg"]:
    a = group[path][...]
    out[path] = [str(a.dtype), a.astype("float64").sum().item()]
print(json.dumps(out))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["model/embed.weight"][0] == "bfloat16"
    for path, (_, total) in got.items():
        node = tree
        for part in path.split("/"):
            node = node[int(part) if part.isdigit() else part]
        assert total == pytest.approx(node.astype(np.float64).sum())


def _keys(backend) -> list[str]:
    from zstore._compat import sync

    location = zstore._storage.location.resolve(backend.url(), backend.storage_options)
    return list(sync(location.sizes()))


def _delete(backend, key: str) -> None:
    from zstore._compat import sync

    location = zstore._storage.location.resolve(backend.url(), backend.storage_options)
    sync(location.remove_all([key]))


def test_io_stats_agree_with_the_requests_the_server_saw(s3):
    s3.wire.clear()
    with zstore.io_stats() as io:
        zstore.save(model_tree(), s3.url(), storage_options=s3.storage_options)
        ckpt = zstore.open(s3.url(), storage_options=s3.storage_options)
        ckpt["model/embed.weight"][5:9, 3]
        zstore.load(s3.url(), storage_options=s3.storage_options)
    wire = s3.wire.methods()
    assert io.puts == wire["PUT"]
    assert io.gets == wire["GET"]
    assert io.deletes == wire.get("DELETE", 0)


def test_a_shard_index_already_read_is_not_read_again(s3):
    embed = np.random.default_rng(3).standard_normal((8000, 256), dtype=np.float32)
    zstore.save({"embed": embed}, s3.url(), storage_options=s3.storage_options,
                access={"embed": "rows"}, codec="none")
    ckpt = zstore.open(s3.url(), storage_options=s3.storage_options)
    layout = zstore.plan(ckpt).arrays["embed"].layout
    assert layout.shard_shape is not None and layout.shard_shape[0] > 2 * layout.chunk_shape[0]
    rows = [10, 10 + layout.chunk_shape[0], 10 + 2 * layout.chunk_shape[0]]  # one shard
    gets = []
    for row in rows:
        s3.wire.clear()
        assert np.array_equal(ckpt["embed"][row], embed[row])
        gets.append(s3.wire.methods()["GET"])
    assert gets == [2, 1, 1]  # index + chunk, then the chunk alone
    reopened = zstore.open(s3.url(), storage_options=s3.storage_options)
    s3.wire.clear()
    reopened["embed"][rows[0]]
    assert s3.wire.methods()["GET"] == 2, "the cache belongs to one open checkpoint"


def test_round_trips_count_gets_that_waited_for_each_other(s3):
    """open: 2 GETs at once, 1 round trip; a whole tensor after it: 1 more, however many shards."""
    tree = {"w": np.ones((4096, 256), np.float32)}
    zstore.save(tree, s3.url(), storage_options=s3.storage_options,
                access={"w": zstore.split(0, 4)})
    with zstore.io_stats() as io:
        ckpt = zstore.open(s3.url(), storage_options=s3.storage_options)
        assert io.gets == 2 and io.round_trips == 1
        ckpt["w"].numpy()
    assert io.gets >= 2 + 4
    assert io.round_trips == 2
    with zstore.io_stats() as rows:
        for i in range(3):  # one after another, by construction
            ckpt["w"][i * 1000]
    assert rows.round_trips == rows.gets
