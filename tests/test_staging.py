"""Loading onto a device: pinned staging buffers, reused and bounded, decode overlapping copy.

The pipeline is the same for every device; on a machine without CUDA it runs
with ordinary buffers onto "cpu", which is what these tests drive directly.
The CUDA-only tests run where a GPU is present.
"""

from __future__ import annotations

import asyncio

import ml_dtypes
import numpy as np
import pytest

import zstore
from zstore._budget import ByteBudget
from zstore._compat import sync
from zstore._read import DeviceStager

torch = pytest.importorskip("torch")


@pytest.fixture
def ckpt():
    rng = np.random.default_rng(0)
    tree = {
        "w": rng.standard_normal((64, 48)).astype("float32"),
        "bf": rng.standard_normal((40, 8)).astype(ml_dtypes.bfloat16),
        "ids": np.arange(100, dtype="int64"),
        "scalar": np.float32(2.5),
    }
    url = "memory://staging/ckpt"
    zstore.save(tree, url, overwrite=True)
    return zstore.open(url), tree


def test_the_stager_places_whole_arrays_and_slices_with_their_dtype(ckpt):
    opened, tree = ckpt
    stager = DeviceStager("cpu")
    w = sync(stager.to_device(opened["w"], np.s_[3:9, ::5]))
    bf = sync(stager.to_device(opened["bf"]))
    assert np.array_equal(w.numpy(), tree["w"][3:9, ::5])
    assert bf.dtype == torch.bfloat16
    assert np.array_equal(bf.view(torch.int16).numpy(), tree["bf"].view(np.int16))


def test_staging_buffers_are_reused_not_allocated_per_tensor(ckpt, monkeypatch):
    opened, _ = ckpt
    stager = DeviceStager("cpu")
    allocated = []
    real_empty = torch.empty

    def counting_empty(*args, **kwargs):
        if kwargs.get("dtype") is torch.uint8:
            allocated.append(args[0])
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", counting_empty)
    for _ in range(5):  # one after another: each finds the previous buffer free
        sync(stager.to_device(opened["w"]))
        sync(stager.to_device(opened["ids"]))
    assert allocated == [opened["w"].nbytes]


def test_bytes_staged_at_once_stay_within_the_budget(ckpt, monkeypatch):
    opened, tree = ckpt
    budget = ByteBudget(opened["w"].nbytes * 2)
    stager = DeviceStager("cpu", budget)
    peak, held = [0], [0]
    real_read = type(opened["w"]).read_async

    async def slow_read(self, index=Ellipsis, *, out=None):
        held[0] += out.nbytes
        peak[0] = max(peak[0], held[0])
        await asyncio.sleep(0.01)  # every read is in flight together unless the budget waits
        try:
            return await real_read(self, index, out=out)
        finally:
            held[0] -= out.nbytes

    monkeypatch.setattr(type(opened["w"]), "read_async", slow_read)

    async def many():
        return await asyncio.gather(*(stager.to_device(opened["w"]) for _ in range(6)))

    results = sync(many())
    assert all(np.array_equal(r.numpy(), tree["w"]) for r in results)
    assert peak[0] == budget.limit


def test_copy_into_casts_to_the_target_dtype(ckpt):
    opened, tree = ckpt
    target = torch.zeros(40, 8, dtype=torch.float32)
    sync(DeviceStager("cpu").copy_into(opened["bf"], target))
    assert np.array_equal(target.numpy(), tree["bf"].astype("float32"))


def test_load_with_a_device_gives_torch_tensors_and_refuses_numpy(ckpt):
    opened, tree = ckpt
    loaded = opened.load(device="cpu")
    assert isinstance(loaded["w"], torch.Tensor) and np.array_equal(loaded["w"].numpy(), tree["w"])
    with pytest.raises(ValueError, match="framework='numpy'"):
        opened.load(device="cpu", framework="numpy")


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_a_full_load_to_cuda_matches_the_host_load(ckpt):
    opened, tree = ckpt
    loaded = zstore.load(opened.url, device="cuda")
    assert loaded["w"].device.type == "cuda"
    assert np.array_equal(loaded["w"].cpu().numpy(), tree["w"])
    assert torch.equal(loaded["bf"].cpu().view(torch.int16),
                       torch.from_numpy(tree["bf"].view(np.int16)))


@needs_cuda
def test_cuda_staging_buffers_are_pinned(ckpt):
    opened, _ = ckpt
    stager = DeviceStager("cuda")
    sync(stager.to_device(opened["w"]))
    assert stager._free and all(b.is_pinned() for b in stager._free)


@needs_cuda
def test_load_into_a_cuda_model_copies_in_place(ckpt, tmp_path):
    model = torch.nn.Linear(48, 64).cuda()
    source = torch.nn.Linear(48, 64)
    zstore.save(source.state_dict(), str(tmp_path / "lin"))
    pointer = model.weight.data_ptr()
    zstore.load(str(tmp_path / "lin"), into=model)
    assert model.weight.data_ptr() == pointer
    assert torch.equal(model.weight.cpu(), source.weight)


def test_buffers_of_many_sizes_in_flight_are_reused_by_identity(tmp_path):
    sizes = [(96, 3), (7, 64), (1,), (48, 128), (5, 32), (17, 80), (2, 2), (64, 64)] * 3
    tree = {f"t{i}": np.full(shape, i, dtype="float32") for i, shape in enumerate(sizes)}
    zstore.save(tree, str(tmp_path / "c"))
    opened = zstore.open(str(tmp_path / "c"))
    stager = DeviceStager("cpu")

    async def all_at_once():
        targets = {k: torch.zeros(v.shape, dtype=torch.bfloat16) for k, v in tree.items()}
        await asyncio.gather(*(stager.copy_into(opened[k], t) for k, t in targets.items()))
        return targets

    for _ in range(2):  # the second round draws every buffer from the free list
        targets = sync(all_at_once())
        assert all(torch.equal(targets[k], torch.from_numpy(v).to(torch.bfloat16))
                   for k, v in tree.items())


def test_a_device_that_does_not_exist_is_a_clear_error_before_any_read(ckpt):
    opened, _ = ckpt
    missing = "cuda:64" if torch.cuda.is_available() else "cuda"
    with zstore.io_stats() as stats:
        with pytest.raises(zstore.DeviceUnavailableError, match="CUDA") as caught:
            zstore.load(opened.url, device=missing)
    assert isinstance(caught.value, RuntimeError)
    assert (caught.value.device, caught.value.url) == (missing, opened.url)
    assert stats.gets <= 2  # the open's metadata only: no array was read
    with pytest.raises(zstore.DeviceUnavailableError, match="not a torch device") as caught:
        opened["w"].torch(device="gpu-please")
    assert caught.value.device == "gpu-please"


@needs_cuda
def test_another_dtype_loads_into_a_cuda_model_as_load_state_dict_would(tmp_path):
    source = torch.nn.Sequential(torch.nn.Linear(48, 96), torch.nn.Linear(96, 7))
    zstore.save(source.state_dict(), str(tmp_path / "c"))
    model = torch.nn.Sequential(torch.nn.Linear(48, 96), torch.nn.Linear(96, 7)).cuda().half()
    expected = torch.nn.Sequential(torch.nn.Linear(48, 96), torch.nn.Linear(96, 7)).cuda().half()
    expected.load_state_dict(source.state_dict())
    zstore.load(str(tmp_path / "c"), into=model)
    for key, value in expected.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
