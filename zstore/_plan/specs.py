"""The arrays a ``.safetensors`` file holds, from its header alone, for planning a conversion.

A safetensors file starts with an 8-byte little-endian header length and a
JSON header of ``{name: {"dtype", "shape", "data_offsets"}}``; two reads of
any fsspec URL give every array's shape and dtype without touching the data.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import fsspec
import ml_dtypes
import numpy as np

from zstore.errors import CorruptCheckpointError, UnsupportedTypeError

_DTYPES = {
    "BOOL": np.dtype("bool"), "U8": np.dtype("uint8"), "I8": np.dtype("int8"),
    "U16": np.dtype("uint16"), "I16": np.dtype("int16"), "U32": np.dtype("uint32"),
    "I32": np.dtype("int32"), "U64": np.dtype("uint64"), "I64": np.dtype("int64"),
    "F16": np.dtype("float16"), "F32": np.dtype("float32"), "F64": np.dtype("float64"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
_MAX_HEADER = 100 << 20  # the safetensors format's own limit


def safetensors_specs(url: str, storage_options: dict[str, Any] | None = None
                      ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{name: (shape, dtype)} of every tensor in the file, in file order."""
    with fsspec.open(url, "rb", **(storage_options or {})) as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptCheckpointError(f"{url!r} is too short to be a safetensors file",
                                         url=url)
        (length,) = struct.unpack("<Q", head)
        if length > _MAX_HEADER:
            raise CorruptCheckpointError(
                f"{url!r} declares a {length}-byte header: not a safetensors file", url=url)
        try:
            header = json.loads(f.read(length))
        except ValueError as e:
            raise CorruptCheckpointError(f"{url!r} has no valid safetensors header: {e}",
                                         url=url) from None
    specs = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(entry.get("dtype"))
        if dtype is None:
            raise UnsupportedTypeError(
                f"tensor {name!r} in {url!r} has dtype {entry.get('dtype')!r}, which zstore "
                f"does not store; supported: {', '.join(_DTYPES)}")
        specs[name] = (tuple(int(n) for n in entry["shape"]), dtype)
    return specs
