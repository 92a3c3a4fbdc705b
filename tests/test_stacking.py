"""Many tensors, few objects: tensors that repeat (experts, layers, optimizer slots) are
stacked into one array each, and still read, loaded, verified and reused one by one."""

from __future__ import annotations

import fsspec
import numpy as np
import pytest
import zarr

import zstore
from zstore._format import STACKED_FORMAT
from zstore._read.verify import verify

EXPERTS, TENSORS = 100, 3000  # 3,000 tensors of 64 KiB: an MoE-like state of 188 MiB


def moe(tensors: int = TENSORS, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    layers = tensors // EXPERTS
    return {f"layers.{i}.experts.{j}.w": rng.standard_normal((128, 128), dtype=np.float32)
            for i in range(layers) for j in range(EXPERTS)}


def test_three_thousand_tensors_save_and_load_in_a_few_objects_and_requests(s3):
    tree = moe()
    plan = zstore.plan(tree, backend="s3")
    assert len(plan.arrays) == 1 and "3000 tensors stacked" in plan.notes[0]
    s3.wire.clear()
    info = zstore.save(tree, s3.url(), storage_options=s3.storage_options)
    saved = s3.wire.methods()
    assert info.objects == plan.objects <= 50
    assert saved["PUT"] <= 50, saved
    s3.wire.clear()
    loaded = zstore.load(s3.url(), storage_options=s3.storage_options)
    assert s3.wire.methods() == {"GET": plan.load_requests}
    # open, then 12 shards of 16 MiB, each its index and two parts of 8 MiB
    assert plan.load_requests <= 2 + 12 * 3
    assert all(np.array_equal(loaded[k], v) for k, v in tree.items())


def test_one_stacked_tensor_is_read_lazily_in_a_few_requests_and_its_own_bytes(s3):
    tree = moe()
    zstore.save(tree, s3.url(), storage_options=s3.storage_options)
    ckpt = zstore.open(s3.url(), storage_options=s3.storage_options)
    name = "layers.17.experts.42.w"
    s3.wire.clear()
    got = ckpt[name][...]
    assert np.array_equal(got, tree[name])
    assert s3.wire.methods() == {"GET": 2}  # the shard's index, then the tensor's chunk
    assert s3.wire.bytes_sent < 2 * tree[name].nbytes
    s3.wire.clear()
    assert np.array_equal(ckpt["layers.17.experts.43.w"][5:9], tree["layers.17.experts.43.w"][5:9])
    assert s3.wire.methods() == {"GET": 1}  # its index is remembered


def test_a_plain_zarr_reader_sees_one_meaningful_array_per_group(tmp_path):
    tree = moe(600)
    url = str(tmp_path / "ckpt")
    zstore.save(tree, url)
    stacked = zarr.open_array(store=f"{url}/zstore.stacked/layers.{{}}.experts.{{}}.w", mode="r")
    members = stacked.attrs["zstore"]["members"]
    assert stacked.shape == (600, 128, 128) and len(members) == 600
    for index in (0, 101, 599):
        assert np.array_equal(stacked[index], tree[members[index]])
    assert members[:3] == ["layers.0.experts.0.w", "layers.0.experts.1.w",
                           "layers.0.experts.2.w"]  # natural order, not 0, 1, 10, 11...


def test_every_kind_of_read_of_a_member_reads_that_member(backend):
    tree = {f"blocks.{i}.w": np.arange(i, i + 40 * 24, dtype=np.float32).reshape(40, 24)
            for i in range(5)}
    tree["head"] = np.ones((3, 3))
    zstore.save(tree, backend.url(), storage_options=backend.storage_options,
                access={"blocks.*": ["rows", zstore.split(1, 4)]})
    ckpt = zstore.open(backend.url(), storage_options=backend.storage_options)
    w, expected = ckpt["blocks.3.w"], tree["blocks.3.w"]
    assert w.shape == (40, 24) and w.stacked and ckpt["head"].stacked is None
    for index in [..., np.s_[7], np.s_[-1, 3], np.s_[::-1, 2:9], np.s_[:, 6:12],
                  np.s_[[9, 2, 9]], np.s_[1:30:7]]:
        assert np.array_equal(w[index], expected[index]), index
    out = np.empty((40, 24), np.float32)
    assert w.read(out=out) is out and np.array_equal(out, expected)
    assert np.array_equal(ckpt.load(keys=["blocks.1.w"])["blocks.1.w"], tree["blocks.1.w"])
    assert verify(backend.url(), storage_options=backend.storage_options).ok


def test_tied_members_and_members_of_nested_trees_come_back_as_saved(tmp_path):
    shared = np.full((4, 4), 7.0)
    tree = {"enc": {"layers": [{"w": np.full((4, 4), float(i))} for i in range(3)]},
            "tied": [shared, shared]}
    zstore.save(tree, str(tmp_path / "c"))
    got = zstore.load(str(tmp_path / "c"))
    assert [float(layer["w"][0, 0]) for layer in got["enc"]["layers"]] == [0.0, 1.0, 2.0]
    assert got["tied"][0] is got["tied"][1]


def test_torch_members_are_stacked_and_loaded_into_a_model(tmp_path):
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(6)])
    url = str(tmp_path / "c")
    info = zstore.save(model.state_dict(), url)
    assert info.arrays == 2  # the six weights and the six biases
    fresh = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(6)])
    with zstore.io_stats() as io:
        zstore.load(url, into=fresh)  # each stack read shard by shard, not member by member
    assert io.gets == zstore.plan(model.state_dict(), backend="local").load_requests == 4
    # (2 for open, one shard per stack: tensors of 1 KiB fill no stream)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 fresh.state_dict().values()))


def test_an_incremental_save_copies_the_unchanged_shards_of_a_stacked_array(s3):
    tree, options = moe(3000), s3.storage_options
    zstore.save(tree, s3.url("a"), storage_options=options)
    zstore.save(tree, s3.url("b"), storage_options=options, base=s3.url("a"))  # hashes now
    changed = dict(tree)
    changed["layers.29.experts.99.w"] = changed["layers.29.experts.99.w"] + 1  # the last shard
    info = zstore.save(changed, s3.url("c"), storage_options=options, base=s3.url("b"))
    assert info.copied_objects >= 1 and info.uploaded_bytes < info.stored_bytes
    got = zstore.load(s3.url("c"), storage_options=options)
    assert all(np.array_equal(got[k], v) for k, v in changed.items())


def test_members_worth_a_request_each_are_shards_of_their_own_and_reuploaded_alone(s3):
    """12 layers of 3 MiB (more than one S3 stream moves in a request's latency, and more
    layers than streams): one shard per member, so a step that trains one layer uploads
    that layer and nothing beside it."""
    rng = np.random.default_rng(1)
    tree = {f"layers.{i}.w": rng.standard_normal((768, 1024), dtype=np.float32)
            for i in range(12)}
    plan = zstore.plan(tree, backend="s3", codec="none")
    array = plan.array_of("layers.0.w")
    assert len(plan.arrays) == 1 and array.layout.shard_shape == (1, 768, 1024)
    options = s3.storage_options
    zstore.save(tree, s3.url("a"), storage_options=options, codec="none")
    zstore.save(tree, s3.url("b"), storage_options=options, codec="none",
                base=s3.url("a"))  # hashes now
    changed = {**tree, "layers.3.w": tree["layers.3.w"] + 1}
    info = zstore.save(changed, s3.url("c"), storage_options=options, codec="none",
                       base=s3.url("b"))
    member = tree["layers.3.w"].nbytes
    assert member <= info.uploaded_bytes < member + 64 * 1024  # its shard, and metadata
    assert info.copied_objects == 11
    got = zstore.load(s3.url("c"), storage_options=options)
    assert all(np.array_equal(got[k], v) for k, v in changed.items())


def test_stack_false_keeps_one_array_per_tensor(tmp_path):
    tree = moe(200)
    info = zstore.save(tree, str(tmp_path / "c"), stack=False)
    assert info.arrays == 200
    assert all(zstore.open(str(tmp_path / "c"))[k].stacked is None for k in list(tree)[:3])


def test_a_checkpoint_with_stacks_says_so_to_a_zstore_too_old_to_read_it(tmp_path):
    url = str(tmp_path / "c")
    zstore.save(moe(200), url)
    marker = fsspec.filesystem("file").cat(f"{url}/zstore.commit.json")
    assert f'"format":{STACKED_FORMAT}'.encode() in marker.replace(b" ", b"")
    plain = str(tmp_path / "plain")
    zstore.save({"w": np.ones(3)}, plain)  # nothing stacked: the format every zstore reads
    assert b'"format":1' in fsspec.filesystem("file").cat(f"{plain}/zstore.commit.json")


def test_a_hundred_thousand_tensors_are_one_array(tmp_path):
    tree = {f"layers.{i // 1000}.experts.{i % 1000}.b": np.full(16, i % 7, np.float32)
            for i in range(100_000)}
    plan = zstore.plan(tree, backend="local")
    info = zstore.save(tree, str(tmp_path / "c"))
    assert len(plan.arrays) == 1 and info.objects == plan.objects <= 20
    ckpt = zstore.open(str(tmp_path / "c"))
    assert np.array_equal(ckpt["layers.57.experts.321.b"][...], np.full(16, 57321 % 7))
