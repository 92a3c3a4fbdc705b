"""Moving tensors between torch and numpy without copying where the bits allow.

This is the only module that touches torch, and only once a caller has imported
it (or asked for ``framework="torch"``): zstore works without torch installed.
bfloat16 and float8 tensors cross by reinterpreting their bits as an integer of
the same width, so a CPU tensor and its numpy array share memory.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import ml_dtypes
import numpy as np

from zstore._format.dtypes import check_supported
from zstore.errors import UnsupportedTypeError


def require_torch() -> ModuleType:
    try:
        import torch
    except ImportError:
        raise ImportError(
            "framework='torch' needs PyTorch: pip install 'zstore[torch]' (or any torch>=2.4)"
        ) from None
    return torch


def is_torch_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def is_dtensor(value: Any) -> bool:
    """Whether ``value`` is a ``torch.distributed.tensor.DTensor`` (a global tensor of which
    this rank holds a part)."""
    if not is_torch_tensor(value):
        return False
    module = sys.modules.get("torch.distributed.tensor")
    dtensor = getattr(module, "DTensor", None)
    return dtensor is not None and isinstance(value, dtensor)


def _bit_views(torch: ModuleType) -> dict[Any, tuple[Any, np.dtype]]:
    """torch dtypes numpy lacks, each with (same-width torch int, ml_dtypes dtype)."""
    return {
        torch.bfloat16: (torch.int16, np.dtype(ml_dtypes.bfloat16)),
        torch.float8_e4m3fn: (torch.uint8, np.dtype(ml_dtypes.float8_e4m3fn)),
        torch.float8_e5m2: (torch.uint8, np.dtype(ml_dtypes.float8_e5m2)),
    }


def torch_numpy_dtype(tensor: Any, name: str) -> np.dtype:
    """The numpy dtype ``tensor`` is stored as; raises for tensors zstore cannot store.

    Touches no data, so it is safe on accelerators and runs before any I/O.
    """
    _check_tensor(tensor, name)
    return numpy_dtype_of(tensor.dtype, name)


def numpy_dtype_of(torch_dtype: Any, name: str) -> np.dtype:
    """The numpy dtype a torch dtype is stored as (meta tensors included: no data needed)."""
    torch = sys.modules["torch"]
    return torch_to_numpy(torch.empty(0, dtype=torch_dtype), name).dtype


def _check_tensor(tensor: Any, name: str) -> None:
    torch = sys.modules["torch"]
    if tensor.is_meta or tensor.device.type == "meta":
        raise UnsupportedTypeError(
            f"tensor {name!r} is on the meta device and holds no data; materialize it "
            "(e.g. module.to_empty(device='cpu') and initialize) before saving"
        )
    if tensor.layout != torch.strided or tensor.is_quantized:
        raise UnsupportedTypeError(
            f"tensor {name!r} has layout {tensor.layout} / dtype {tensor.dtype}; zstore stores "
            "dense tensors only: convert with .to_dense() or .dequantize() first"
        )


def torch_to_numpy(tensor: Any, name: str) -> np.ndarray:
    """A host numpy view of ``tensor`` (a copy only when it lives on an accelerator)."""
    torch = sys.modules["torch"]
    _check_tensor(tensor, name)
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    views = _bit_views(torch)
    if tensor.dtype in views:
        int_dtype, np_dtype = views[tensor.dtype]
        bits: np.ndarray = tensor.view(int_dtype).numpy().view(np_dtype)
        return bits
    try:
        array: np.ndarray = tensor.numpy()
    except TypeError as e:
        raise UnsupportedTypeError(
            f"tensor {name!r} has dtype {tensor.dtype}, which zstore cannot store losslessly; "
            "convert it to a standard float, int, bool or complex dtype"
        ) from e
    check_supported(array.dtype, name)
    return array


def torch_dtype_of(dtype: np.dtype) -> Any:
    """The torch dtype an array of numpy ``dtype`` loads as (bf16/fp8 included)."""
    return numpy_to_torch(np.empty(0, dtype)).dtype


def host_array(value: Any, name: str) -> np.ndarray:
    """An array or tensor as the host numpy array zstore stores (a view where possible)."""
    array = torch_to_numpy(value, name) if is_torch_tensor(value) else value
    native = check_supported(array.dtype, name)
    return array if array.dtype == native else array.astype(native)


def host_copy(value: Any, name: str) -> np.ndarray:
    """``host_array`` in memory of its own: later changes to ``value`` do not reach it."""
    array = host_array(value, name)
    on_device = is_torch_tensor(value) and value.device.type != "cpu"  # .cpu() made a copy
    return array if on_device else array.copy()


def numpy_to_torch(array: np.ndarray) -> Any:
    """A torch tensor sharing ``array``'s memory (bf16/fp8 included)."""
    torch = require_torch()
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("="))
    for torch_dtype, (int_dtype, np_dtype) in _bit_views(torch).items():
        if array.dtype == np_dtype:
            int_np = {torch.int16: np.int16, torch.uint8: np.uint8}[int_dtype]
            return torch.from_numpy(array.view(int_np)).view(torch_dtype)
    return torch.from_numpy(array)
