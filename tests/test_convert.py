"""zstore.convert and `zstore convert`: every source and destination, round trips exact."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the Python 3.12 leg runs without torch

import fsspec  # noqa: E402
from safetensors.torch import load_file, save, save_file  # noqa: E402

import zstore  # noqa: E402
from zstore._cli import main  # noqa: E402


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(300, 64, generator=g).to(torch.bfloat16),
        "layers.0.w": torch.randn(64, 64, generator=g),
        "layers.1.w": torch.randn(64, 64, generator=g),
        "norm.weight": torch.randn(64, generator=g).to(torch.float16),
        "positions": torch.arange(300, dtype=torch.int64),
        "mask": torch.rand(17, generator=g) > 0.5,
        "empty": torch.zeros(0, 4),
    }


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def test_a_safetensors_file_converts_and_exports_back_exactly(tmp_path):
    state = _state()
    src = str(tmp_path / "model.safetensors")
    save_file(state, src, metadata={"format": "pt", "source": "test"})
    info = zstore.convert(src, str(tmp_path / "ckpt"))
    assert info.logical_bytes == sum(v.nbytes for v in state.values())  # layers stack: 6 arrays
    loaded = zstore.load(str(tmp_path / "ckpt"))
    assert loaded.keys() == state.keys() and all(_same(loaded[k], v) for k, v in state.items())
    assert zstore.open(str(tmp_path / "ckpt")).metadata == {"safetensors": {"source": "test"}}
    out = str(tmp_path / "out.safetensors")
    zstore.convert(str(tmp_path / "ckpt"), out)
    back = load_file(out)  # the safetensors library reads the export
    assert back.keys() == state.keys() and all(_same(back[k], v) for k, v in state.items())


def test_ties_values_and_nesting_survive_safetensors_as_hugging_face_writes_it(tmp_path):
    embed = torch.randn(50, 8)
    tree = {"model": {"embed.weight": embed, "lm_head.weight": embed,
                      "blocks": [torch.ones(3), torch.zeros(2, 2)]},
            "step": 7, "lr": 0.5, "name": "run", "scale": torch.tensor(2.5),
            "pair": (np.arange(3), None)}
    zstore.save(tree, str(tmp_path / "ckpt"), metadata={"epoch": 3})
    out = str(tmp_path / "model.safetensors")
    zstore.convert(str(tmp_path / "ckpt"), out)
    plain = load_file(out)  # no "Some tensors share memory": the tie is written once
    assert "model/embed.weight" in plain and "model/lm_head.weight" not in plain
    assert torch.equal(plain["model/embed.weight"], embed)
    with open(out, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert header["__metadata__"]["format"] == "pt"
    zstore.convert(out, str(tmp_path / "again"))
    ckpt = zstore.open(str(tmp_path / "again"))
    assert ckpt.metadata == {"epoch": 3}
    back = zstore.load(str(tmp_path / "again"))
    assert back["model"]["lm_head.weight"] is back["model"]["embed.weight"]  # tied again
    assert torch.equal(back["model"]["embed.weight"], embed)
    assert back["step"] == 7 and back["lr"] == 0.5 and back["name"] == "run"
    assert isinstance(back["pair"], tuple) and np.array_equal(back["pair"][0], np.arange(3))
    assert back["pair"][1] is None and isinstance(back["model"]["blocks"], list)
    assert back["scale"].item() == 2.5 and isinstance(back["scale"], torch.Tensor)


def test_hugging_face_shards_convert_and_large_exports_shard(tmp_path):
    state = _state()
    names = list(state)
    folder = tmp_path / "hf"
    folder.mkdir()
    halves = {"model-00001-of-00002.safetensors": names[:3],
              "model-00002-of-00002.safetensors": names[3:]}
    for file, keys in halves.items():
        save_file({k: state[k] for k in keys}, str(folder / file), metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(v.nbytes for v in state.values())},
             "weight_map": {k: f for f, keys in halves.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    zstore.convert(str(folder), str(tmp_path / "ckpt"))  # the folder, found by its index
    loaded = zstore.load(str(tmp_path / "ckpt"))
    assert all(_same(loaded[k], v) for k, v in state.items())

    out = tmp_path / "export" / "model.safetensors"
    info = zstore.convert(str(tmp_path / "ckpt"), str(out), max_shard_size=30_000)
    written = json.loads((tmp_path / "export" / "model.safetensors.index.json").read_text())
    files = sorted(set(written["weight_map"].values()))
    assert len(files) > 1 and info.objects == len(files) + 1
    assert files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert written["metadata"]["total_size"] == sum(v.nbytes for v in state.values())
    for file in files:  # each shard is a file the safetensors library reads
        for name, tensor in load_file(str(tmp_path / "export" / file)).items():
            assert written["weight_map"][name] == file and _same(tensor, state[name])
    zstore.convert(str(tmp_path / "export" / "model.safetensors.index.json"),
                   str(tmp_path / "again"))
    again = zstore.load(str(tmp_path / "again"))
    assert again.keys() == state.keys() and all(_same(again[k], v) for k, v in state.items())


def test_a_torch_file_converts_with_its_ties_and_values(tmp_path):
    shared = torch.randn(10, 4)
    tree = {"model": {"a": shared, "b": shared, "c": torch.randn(3).to(torch.bfloat16)},
            "optim": {"state": {0: {"step": torch.tensor(5.0)}}, "lr": 0.1},
            "epoch": 2}
    src = str(tmp_path / "model.pt")
    torch.save(tree, src)
    zstore.convert(src, str(tmp_path / "ckpt"))
    back = zstore.load(str(tmp_path / "ckpt"))
    assert back["model"]["a"] is back["model"]["b"] and torch.equal(back["model"]["a"], shared)
    assert _same(back["model"]["c"], tree["model"]["c"])
    assert back["optim"]["state"][0]["step"].item() == 5.0 and back["epoch"] == 2


class Arbitrary:  # not something weights_only=True loads
    pass


def test_a_torch_file_that_needs_arbitrary_unpickling_is_refused_and_nothing_is_written(
        tmp_path):
    src = str(tmp_path / "evil.bin")
    with open(src, "wb") as f:
        torch.save({"w": torch.ones(2), "obj": Arbitrary()}, f, pickle_module=pickle)
    with pytest.raises(zstore.UnsupportedFormatError, match="weights_only=True") as caught:
        zstore.convert(src, str(tmp_path / "ckpt"))
    assert isinstance(caught.value, zstore.ZStoreError) and "nothing was written" in str(
        caught.value)
    assert not os.path.exists(tmp_path / "ckpt")


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_dcp_checkpoint_converts_with_its_nesting(tmp_path):
    import torch.distributed.checkpoint as dcp

    state = {"model": {"w": torch.randn(20, 6), "b": torch.randn(6).to(torch.bfloat16)},
             "optim": {"state": {"w": {"exp_avg": torch.randn(20, 6)}},
                       "param_groups": [{"lr": 0.01, "params": ["w"]}]},
             "step": 12}
    dcp.save(state, checkpoint_id=str(tmp_path / "dcp"), no_dist=True)
    zstore.convert(str(tmp_path / "dcp"), str(tmp_path / "ckpt"))
    back = zstore.load(str(tmp_path / "ckpt"))
    assert _same(back["model"]["w"], state["model"]["w"])
    assert _same(back["model"]["b"], state["model"]["b"])
    assert torch.equal(back["optim"]["state"]["w"]["exp_avg"],
                       state["optim"]["state"]["w"]["exp_avg"])
    assert back["optim"]["param_groups"] == state["optim"]["param_groups"]
    assert back["step"] == 12


def test_an_hdf5_file_converts_groups_datasets_and_attributes(tmp_path):
    h5py = pytest.importorskip("h5py")
    src = str(tmp_path / "data.h5")
    rows = np.arange(5000 * 33, dtype=np.float32).reshape(5000, 33)
    with h5py.File(src, "w") as f:
        f.attrs["creator"] = "test"
        group = f.create_group("embeddings")
        group.attrs["dims"] = np.array([5000, 33])
        dataset = group.create_dataset("table", data=rows, chunks=(100, 33))
        dataset.attrs["unit"] = b"m"
        f.create_dataset("count", data=np.int64(9))
        f.create_dataset("label", data="hello")
    zstore.convert(src, str(tmp_path / "ckpt"))
    ckpt = zstore.open(str(tmp_path / "ckpt"))
    assert np.array_equal(ckpt["embeddings/table"][1000:1002], rows[1000:1002])
    back = zstore.load(str(tmp_path / "ckpt"))
    assert np.array_equal(back["embeddings"]["table"], rows)
    assert back["count"] == 9 and back["label"] == "hello"
    assert ckpt.metadata["hdf5"] == {"/": {"creator": "test"},
                                     "/embeddings": {"dims": [5000, 33]},
                                     "/embeddings/table": {"unit": "m"}}


def test_a_zstore_checkpoint_is_replanned_recoded_and_copied_to_s3(tmp_path, moto_s3):
    state = {"embed": np.random.default_rng(0).standard_normal((4096, 64)).astype(np.float32),
             "w": np.ones((64, 64), np.float32)}
    zstore.save(state, str(tmp_path / "ckpt"), codec="none")
    url = f"s3://{moto_s3.new_bucket()}/converted"
    info = zstore.convert(str(tmp_path / "ckpt"), url, dst_storage_options=moto_s3.storage_options,
                          access={"embed": "rows"}, codec="zstd")
    ckpt = zstore.open(url, storage_options=moto_s3.storage_options)
    assert np.array_equal(ckpt["embed"][...], state["embed"])
    assert ckpt["embed"].chunk_shape != zstore.open(str(tmp_path / "ckpt"))["embed"].chunk_shape
    assert "zstd" in json.dumps(ckpt.array_documents()["embed"][0]["codecs"])
    assert info.stored_bytes < sum(v.nbytes for v in state.values())
    # and from S3 back to a local safetensors file, with storage_options for the source only
    out = str(tmp_path / "from-s3.safetensors")
    zstore.convert(url, out, storage_options=moto_s3.storage_options, dst_storage_options={})
    assert np.array_equal(load_file(out)["embed"].numpy(), state["embed"])


def test_a_damaged_source_leaves_no_checkpoint_and_no_file(tmp_path):
    src = str(tmp_path / "model.safetensors")
    save_file(_state(), src)
    with open(src, "r+b") as f:
        f.truncate(os.path.getsize(src) - 1000)  # the last tensors' bytes are gone
    with pytest.raises(zstore.CorruptCheckpointError, match="truncated"):
        zstore.convert(src, str(tmp_path / "ckpt"))
    with pytest.raises(zstore.ZStoreError):
        zstore.open(str(tmp_path / "ckpt"))  # never committed
    with pytest.raises(zstore.CorruptCheckpointError, match="truncated"):
        zstore.convert(src, str(tmp_path / "out.safetensors"))
    assert sorted(os.listdir(tmp_path)) == sorted(["model.safetensors"] + (
        ["ckpt"] if os.path.exists(tmp_path / "ckpt") else []))


def test_converting_onto_existing_data_needs_overwrite(tmp_path):
    src = str(tmp_path / "model.safetensors")
    save_file({"w": torch.ones(2)}, src)
    zstore.convert(src, str(tmp_path / "out.safetensors"))
    with pytest.raises(zstore.CheckpointExistsError, match="overwrite"):
        zstore.convert(src, str(tmp_path / "out.safetensors"))
    zstore.convert(src, str(tmp_path / "out.safetensors"), overwrite=True)


def test_unknown_sources_say_what_is_converted(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("hi")
    with pytest.raises(zstore.UnsupportedFormatError, match="safetensors"):
        zstore.convert(str(tmp_path / "in"), str(tmp_path / "ckpt"))
    with pytest.raises(zstore.CheckpointNotFoundError):
        zstore.convert(str(tmp_path / "missing.safetensors"), str(tmp_path / "ckpt"))
    with pytest.raises(zstore.CheckpointNotFoundError):
        zstore.convert(str(tmp_path / "missing"), str(tmp_path / "ckpt"))


def test_the_command_line_converts(tmp_path, capsys):
    src = str(tmp_path / "model.safetensors")
    save_file(_state(), src)
    assert main(["convert", src, str(tmp_path / "ckpt"), "--codec", "zstd"]) == 0
    assert "converted" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "ckpt"), str(tmp_path / "again.safetensors")]) == 0
    assert load_file(str(tmp_path / "again.safetensors")).keys() == _state().keys()
    assert main(["convert", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2


class _Evil:
    def __reduce__(self):  # what a hostile .metadata would run under plain pickle.load
        return (os.system, ("touch PWNED",))


def test_a_dcp_metadata_file_never_runs_code(tmp_path, monkeypatch):
    folder = tmp_path / "dcp"
    folder.mkdir()
    with open(folder / ".metadata", "wb") as f:
        pickle.dump(_Evil(), f)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(zstore.UnsupportedFormatError, match="posix.system|os.system"):
        zstore.convert(str(folder), str(tmp_path / "ckpt"))
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_an_optimizer_converted_from_dcp_loads_back_into_the_optimizer(tmp_path):
    import torch.distributed.checkpoint as dcp

    model = torch.nn.Linear(4, 3)
    optim = torch.optim.Adam(model.parameters())
    model(torch.ones(2, 4)).sum().backward()
    optim.step()
    dcp.save({"optim": optim.state_dict()}, checkpoint_id=str(tmp_path / "dcp"), no_dist=True)
    zstore.convert(str(tmp_path / "dcp"), str(tmp_path / "ckpt"))
    fresh = torch.optim.Adam(model.parameters())
    fresh.load_state_dict(zstore.load(str(tmp_path / "ckpt"))["optim"])
    assert torch.equal(fresh.state[model.weight]["exp_avg"], optim.state[model.weight]["exp_avg"])


def test_converting_a_checkpoint_onto_itself_is_refused(tmp_path):
    url = str(tmp_path / "ckpt")
    zstore.save({"w": np.ones(3)}, url)
    for dst in (url, url + "/", str(tmp_path)):
        with pytest.raises(ValueError, match="its own source"):
            zstore.convert(url, dst, overwrite=True, codec="zstd")
    assert np.array_equal(zstore.load(url)["w"], np.ones(3))


def test_overwriting_an_export_keeps_the_old_one_until_the_new_one_is_whole(tmp_path):
    first = {"a": torch.ones(100, 100), "b": torch.zeros(100, 100)}
    src = str(tmp_path / "first.safetensors")
    save_file(first, src)
    out = tmp_path / "exp" / "model.safetensors"
    zstore.convert(src, str(out), max_shard_size=50_000)  # two shards and an index
    bad = str(tmp_path / "bad.safetensors")
    save_file({"a": torch.full((100, 100), 2.0), "b": torch.ones(100, 100)}, bad)
    with open(bad, "r+b") as f:  # its second tensor is cut short: found before writing
        f.truncate(os.path.getsize(bad) - 100)
    with pytest.raises(zstore.CorruptCheckpointError):
        zstore.convert(bad, str(out), overwrite=True, max_shard_size=50_000)
    again = zstore.load(zstore.convert(str(tmp_path / "exp"), str(tmp_path / "c1")).url)
    assert torch.equal(again["a"], first["a"]) and torch.equal(again["b"], first["b"])
    zstore.convert(str(tmp_path / "c1"), str(out), overwrite=True)  # now one file
    assert sorted(os.listdir(tmp_path / "exp")) == ["model.safetensors"]  # no stale shards


def test_hdf5_big_endian_data_and_unsupported_datasets(tmp_path):
    h5py = pytest.importorskip("h5py")
    src = str(tmp_path / "be.h5")
    with h5py.File(src, "w") as f:
        f.create_dataset("x", data=np.arange(6, dtype=">f4"))
    zstore.convert(src, str(tmp_path / "ckpt"))
    assert np.array_equal(zstore.load(str(tmp_path / "ckpt"))["x"], np.arange(6, dtype="f4"))
    bad = str(tmp_path / "refs.h5")
    with h5py.File(bad, "w") as f:
        f.create_dataset("r", data=[f.ref], dtype=h5py.ref_dtype)
    with pytest.raises(zstore.UnsupportedTypeError, match="references"):
        zstore.convert(bad, str(tmp_path / "refs"))
    assert not (tmp_path / "refs").exists()


def test_a_layout_split_by_columns_reads_the_source_once(tmp_path, moto_s3):
    """Objects side by side along dim 1 need the same rows: they share one read of them."""
    state = {"w": torch.randn(2048, 1024)}
    url = f"s3://{moto_s3.new_bucket()}/model.safetensors"
    with fsspec.open(url, "wb", **moto_s3.storage_options) as f:
        f.write(save(state))
    size = fsspec.filesystem("s3", **moto_s3.storage_options).size(url)
    moto_s3.log.clear()
    zstore.convert(url, str(tmp_path / "ckpt"), storage_options=moto_s3.storage_options,
                   dst_storage_options={}, access={"w": zstore.split(1, 8)}, codec="none")
    assert moto_s3.log.bytes_sent <= 1.1 * size  # not 8x: each row block is fetched once
    ckpt = zstore.open(str(tmp_path / "ckpt"))
    assert ckpt["w"].shard_shape[1] <= 128  # the layout is split by columns
    assert torch.equal(zstore.load(str(tmp_path / "ckpt"))["w"], state["w"])


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_dcp_checkpoint_on_s3_converts(tmp_path, moto_s3):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

    state = {"w": torch.randn(8, 3), "step": 4}
    url = f"s3://{moto_s3.new_bucket()}/dcp"
    dcp.save(state, storage_writer=FsspecWriter(url, **moto_s3.storage_options), no_dist=True)
    zstore.convert(url, str(tmp_path / "ckpt"), storage_options=moto_s3.storage_options,
                   dst_storage_options={})
    back = zstore.load(str(tmp_path / "ckpt"))
    assert torch.equal(back["w"], state["w"]) and back["step"] == 4
