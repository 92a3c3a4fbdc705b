"""Array dtypes zstore stores, and the Zarr v3 data types it adds for ML formats.

zarr-python knows no bfloat16 or float8. We register them as real Zarr v3 data
types under the names TensorStore writes (``bfloat16``, ``float8_e4m3fn``,
``float8_e5m2``), backed by ``ml_dtypes``, so that any Zarr v3 reader that knows
those names decodes the right values, and no bit-casting hack lives in the
metadata. The classes are also published as ``zarr.data_type`` entry points:
zarr-python >= 3.2 loads them without importing zstore (3.1.x never reads that
entry-point group, so there ``import zstore`` registers them).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import ml_dtypes
import numpy as np
from zarr.dtype import ZDType, data_type_registry

from zstore._compat import DataTypeValidationError, HasEndianness, HasItemSize
from zstore.errors import UnsupportedTypeError

_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


@dataclass(frozen=True, kw_only=True)
class _MLFloat(ZDType[Any, Any], HasItemSize):
    """A float type from ``ml_dtypes``; subclasses name the type and its Zarr name."""

    scalar_type: ClassVar[type]

    @classmethod
    def from_native_dtype(cls, dtype: Any) -> _MLFloat:
        if cls._check_native_dtype(dtype):
            return cls._from_numpy(dtype)
        raise DataTypeValidationError(f"{dtype} is not {cls._zarr_v3_name}")

    @classmethod
    def _from_numpy(cls, dtype: np.dtype) -> _MLFloat:
        return cls()

    def to_native_dtype(self) -> np.dtype:
        return np.dtype(self.scalar_type)

    @classmethod
    def _from_json_v2(cls, data: Any) -> _MLFloat:
        if isinstance(data, dict) and data.get("name") == cls._zarr_v3_name:
            return cls()
        raise DataTypeValidationError(f"{data!r} is not {cls._zarr_v3_name}")

    @classmethod
    def _from_json_v3(cls, data: Any) -> _MLFloat:
        if data == cls._zarr_v3_name:
            return cls()
        raise DataTypeValidationError(f"{data!r} is not {cls._zarr_v3_name}")

    def to_json(self, zarr_format: Literal[2, 3]) -> Any:
        if zarr_format == 2:
            return {"name": self._zarr_v3_name, "object_codec_id": None}
        return self._zarr_v3_name

    @property
    def item_size(self) -> int:
        return np.dtype(self.scalar_type).itemsize

    def _check_scalar(self, data: object) -> bool:
        if isinstance(data, str):
            return data in _SPECIAL_FLOATS
        return isinstance(data, (int, float, np.number, self.scalar_type))

    def cast_scalar(self, data: object) -> Any:
        if not self._check_scalar(data):
            raise TypeError(f"cannot use {data!r} as a {self._zarr_v3_name} value")
        if isinstance(data, str):
            data = _SPECIAL_FLOATS[data]
        return np.asarray(data).astype(self.to_native_dtype())[()]

    def default_scalar(self) -> Any:
        return self.cast_scalar(0)

    def from_json_scalar(self, data: Any, *, zarr_format: Literal[2, 3]) -> Any:
        if isinstance(data, str) and data.startswith("0x"):
            bits = np.array(int(data, 16), dtype=f"<u{self.item_size}")
            return bits.view(self.to_native_dtype())[()]
        return self.cast_scalar(data)

    def to_json_scalar(self, data: object, *, zarr_format: Literal[2, 3]) -> float | str:
        value = float(self.cast_scalar(data))
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value


@dataclass(frozen=True, kw_only=True)
class BFloat16(_MLFloat, HasEndianness):
    """Zarr v3 ``bfloat16``: two bytes, so it carries a byte order like float16."""

    scalar_type = ml_dtypes.bfloat16
    dtype_cls = type(np.dtype(ml_dtypes.bfloat16))
    _zarr_v3_name = "bfloat16"

    @classmethod
    def _from_numpy(cls, dtype: np.dtype) -> BFloat16:
        order = dtype.byteorder
        big = order == ">" or (order in "=|" and sys.byteorder == "big")
        return cls(endianness="big" if big else "little")

    def to_native_dtype(self) -> np.dtype:
        native: np.dtype = np.dtype(self.scalar_type)
        return native.newbyteorder("<" if self.endianness == "little" else ">")


@dataclass(frozen=True, kw_only=True)
class Float8E4M3FN(_MLFloat):
    """Zarr v3 ``float8_e4m3fn`` (OCP FP8, no infinities)."""

    scalar_type = ml_dtypes.float8_e4m3fn
    dtype_cls = type(np.dtype(ml_dtypes.float8_e4m3fn))
    _zarr_v3_name = "float8_e4m3fn"


@dataclass(frozen=True, kw_only=True)
class Float8E5M2(_MLFloat):
    """Zarr v3 ``float8_e5m2`` (OCP FP8 with infinities)."""

    scalar_type = ml_dtypes.float8_e5m2
    dtype_cls = type(np.dtype(ml_dtypes.float8_e5m2))
    _zarr_v3_name = "float8_e5m2"


for _cls in (BFloat16, Float8E4M3FN, Float8E5M2):
    data_type_registry.register(_cls._zarr_v3_name, _cls)

SUPPORTED_DTYPES: frozenset[np.dtype] = frozenset(
    np.dtype(name)
    for name in (
        "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64", "complex64", "complex128",
    )
) | frozenset(np.dtype(cls.scalar_type) for cls in (BFloat16, Float8E4M3FN, Float8E5M2))


def check_supported(dtype: np.dtype, name: str) -> np.dtype:
    """Return ``dtype`` in native byte order, or raise naming the array and the dtype.

    Big-endian input is accepted and stored little-endian: the values are what
    matter, and every reader handles little-endian fastest.
    """
    native = dtype.newbyteorder("=") if dtype.byteorder in "<>" else dtype
    if native not in SUPPORTED_DTYPES:
        supported = ", ".join(sorted(str(d) for d in SUPPORTED_DTYPES))
        raise UnsupportedTypeError(
            f"array {name!r} has dtype {dtype}, which zstore cannot store losslessly; "
            f"convert it to one of: {supported}"
        )
    return native


def dtype_from_name(name: str) -> np.dtype:
    """The numpy dtype for a Zarr v3 data type name, the ML float names included."""
    for cls in (BFloat16, Float8E4M3FN, Float8E5M2):
        if name == cls._zarr_v3_name:
            ml: np.dtype = np.dtype(cls.scalar_type)
            return ml
    return np.dtype(name)
