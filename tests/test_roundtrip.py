"""A saved tree comes back with the same structure, types, dtypes and bits."""

from __future__ import annotations

import uuid

import ml_dtypes
import numpy as np
import pytest

import zstore


def memory_url() -> str:
    return f"memory://roundtrip/{uuid.uuid4().hex}"


def roundtrip(tree, **load_kwargs):
    url = memory_url()
    zstore.save(tree, url)
    return zstore.load(url, **load_kwargs)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


EXACT_DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                "float16", "float32", "float64", "complex64", "complex128"]
ML_DTYPES = [ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2]


def awkward_values(dtype: np.dtype, shape=(37, 11)) -> np.ndarray:
    """Random bits, so NaN payloads, -0.0, infinities and subnormals all appear."""
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
    if dtype.kind == "b":
        return (raw[: int(np.prod(shape))] & 1).astype(bool).reshape(shape)
    return raw.view(dtype).reshape(shape)


@pytest.mark.parametrize("dtype", EXACT_DTYPES + ML_DTYPES, ids=str)
def test_every_dtype_round_trips_bit_exact(dtype):
    array = awkward_values(np.dtype(dtype))
    back = roundtrip({"a": array})["a"]
    assert same_bits(array, back)


@pytest.mark.parametrize("dtype", ["float32", ml_dtypes.bfloat16], ids=str)
def test_all_negative_zero_chunk_keeps_its_sign(dtype):
    array = np.full((300, 1024), -0.0, dtype=dtype)  # several chunks, each all -0.0
    back = roundtrip({"z": array})["z"]
    assert same_bits(array, back)


def test_special_floats_round_trip_bit_exact():
    values = np.array([np.nan, -np.nan, np.inf, -np.inf, -0.0, 5e-324, 1e-310], dtype=np.float64)
    payload = np.array([0x7FF0000000000123], dtype=np.uint64).view(np.float64)
    array = np.concatenate([values, payload])
    assert same_bits(array, roundtrip({"x": array})["x"])


def test_big_endian_arrays_come_back_with_the_same_values():
    array = np.arange(10, dtype=">i4")
    back = roundtrip({"x": array})["x"]
    assert back.dtype == np.dtype("int32") and np.array_equal(back, array)


def test_structure_and_python_types_are_preserved():
    tree = {
        "ints": {0: "zero", 1: [1, 2.5, True, None]},
        "strs": {"0": "string key zero"},
        "tuple": (1, (2, 3), []),
        "float": float("nan"),
        "negzero": -0.0,
        "big": 2**70,
        "empty": {},
    }
    back = roundtrip(tree)
    assert back["ints"] == {0: "zero", 1: [1, 2.5, True, None]}
    assert back["strs"] == {"0": "string key zero"}
    assert back["tuple"] == (1, (2, 3), []) and isinstance(back["tuple"][1], tuple)
    assert np.isnan(back["float"]) and str(back["negzero"]) == "-0.0"
    assert back["big"] == 2**70 and back["empty"] == {}
    assert type(back["ints"][1][2]) is bool


def test_numpy_scalars_and_zero_d_arrays_keep_their_type_and_dtype():
    tree = {"s": np.float32(1.5), "z": np.array(7, dtype=np.int16), "b": np.bool_(True),
            "h": np.array(1.0, dtype=ml_dtypes.bfloat16)}
    back = roundtrip(tree)
    assert isinstance(back["s"], np.float32) and back["s"] == 1.5
    assert (isinstance(back["z"], np.ndarray) and back["z"].shape == ()
            and back["z"].dtype == np.int16)
    assert back["b"] is np.True_ or back["b"] == np.True_
    assert back["h"].dtype == ml_dtypes.bfloat16 and float(back["h"]) == 1.0


def test_zero_length_and_non_contiguous_arrays():
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    tree = {"empty": np.zeros((0, 4), dtype=np.int8), "strided": base[::2, 1::3],
            "transposed": base.T}
    back = roundtrip(tree)
    assert back["empty"].shape == (0, 4) and back["empty"].dtype == np.int8
    assert np.array_equal(back["strided"], base[::2, 1::3])
    assert np.array_equal(back["transposed"], base.T)


def test_framework_numpy_converts_torch_leaves():
    pytest.importorskip("torch")
    import torch

    back = roundtrip({"t": torch.arange(4)}, framework="numpy")
    assert isinstance(back["t"], np.ndarray) and back["t"].tolist() == [0, 1, 2, 3]


class TestTorch:
    @pytest.fixture(autouse=True)
    def _torch(self):
        pytest.importorskip("torch")

    @pytest.mark.parametrize("name", ["bool", "uint8", "int8", "int16", "int32", "int64",
                                      "float16", "bfloat16", "float32", "float64",
                                      "complex64", "complex128", "float8_e4m3fn", "float8_e5m2",
                                      "uint16", "uint32", "uint64"])
    def test_torch_dtypes_round_trip_bit_exact(self, name):
        import torch

        dtype = getattr(torch, name)
        bits = torch.randint(0, 256, (64 * dtype.itemsize,), dtype=torch.uint8)
        tensor = (bits & 1).bool() if dtype == torch.bool else bits.view(dtype)
        back = roundtrip({"t": tensor})["t"]
        assert back.dtype == dtype
        assert torch.equal(back.view(torch.uint8), tensor.view(torch.uint8))

    def test_bf16_crosses_to_numpy_without_a_copy(self):
        import torch

        from zstore._format import numpy_to_torch, torch_to_numpy

        tensor = torch.randn(8, dtype=torch.bfloat16)
        array = torch_to_numpy(tensor, "t")
        assert array.dtype == ml_dtypes.bfloat16
        assert array.__array_interface__["data"][0] == tensor.data_ptr()
        again = numpy_to_torch(array)
        assert again.data_ptr() == tensor.data_ptr() and again.dtype == torch.bfloat16

    def test_state_dict_and_adam_state_load_back_into_fresh_objects(self):
        import torch

        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16),
                                    torch.nn.Linear(16, 2))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.8, 0.9))
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(4, 8)).sum().backward()
            opt.step()
        back = roundtrip({"model": model.state_dict(), "optim": opt.state_dict()})

        fresh = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16),
                                    torch.nn.Linear(16, 2))
        fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1.0)
        fresh.load_state_dict(back["model"])
        fresh_opt.load_state_dict(back["optim"])
        for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
            assert torch.equal(a, b)
        saved, loaded = opt.state_dict(), fresh_opt.state_dict()
        assert loaded["param_groups"] == saved["param_groups"]
        assert isinstance(back["optim"]["param_groups"][0]["betas"], tuple)
        for key, state in saved["state"].items():
            assert set(loaded["state"][key]) == set(state)
            for name, value in state.items():
                assert torch.equal(loaded["state"][key][name], value)

    def test_tied_tensors_are_stored_once_and_come_back_sharing_memory(self):
        import torch

        embed = torch.randn(50, 8)
        url = memory_url()
        info = zstore.save({"embed.weight": embed, "lm_head.weight": embed}, url)
        assert info.arrays == 1
        back = zstore.load(url)
        assert back["embed.weight"].data_ptr() == back["lm_head.weight"].data_ptr()
        assert torch.equal(back["lm_head.weight"], embed)
        assert zstore.open(url)["lm_head.weight"].shape == (50, 8)

    def test_views_and_non_contiguous_tensors_are_saved_as_seen(self):
        import torch

        base = torch.arange(48.0).reshape(6, 8)
        tree = {"t": base.t(), "rows": base[1:4], "step": base[::2, ::3]}
        back = roundtrip(tree)
        for key, value in tree.items():
            assert torch.equal(back[key], value), key

    def test_cuda_tensors_save_from_and_load_to_the_gpu(self):
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
        tensor = torch.randn(300, 70, device="cuda", dtype=torch.bfloat16)
        url = memory_url()
        zstore.save({"t": tensor, "t_view": tensor[:, ::7]}, url)
        ckpt = zstore.open(url)
        back = ckpt["t"].torch(device="cuda")
        assert back.device.type == "cuda" and torch.equal(back, tensor)
        assert torch.equal(ckpt["t_view"].torch(), tensor[:, ::7].cpu())

    def test_parameters_with_grad_are_saved_detached(self):
        import torch

        param = torch.nn.Parameter(torch.ones(3))
        back = roundtrip({"p": param})
        assert torch.equal(back["p"], torch.ones(3)) and not back["p"].requires_grad

    def test_meta_tensors_are_rejected_before_anything_is_written(self):
        import torch

        url = memory_url()
        with pytest.raises(zstore.UnsupportedTypeError, match="meta"):
            zstore.save({"ok": torch.ones(2), "w": torch.empty(3, device="meta")}, url)
        with pytest.raises(zstore.CheckpointNotFoundError):
            zstore.open(url)
