"""The safetensors format: an 8-byte little-endian header length, a JSON header of
``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {str: str}}``, then every
tensor's bytes, little-endian and C-ordered, at those offsets from the header's end.

Pure: headers parsed from and encoded to bytes; the reading and writing is the
conversion's (``zstore._convert``).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from zstore.errors import CorruptCheckpointError, UnsupportedTypeError

DTYPES = {
    "BOOL": np.dtype("bool"), "U8": np.dtype("uint8"), "I8": np.dtype("int8"),
    "U16": np.dtype("uint16"), "I16": np.dtype("int16"), "U32": np.dtype("uint32"),
    "I32": np.dtype("int32"), "U64": np.dtype("uint64"), "I64": np.dtype("int64"),
    "F16": np.dtype("float16"), "F32": np.dtype("float32"), "F64": np.dtype("float64"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
CODES = {dtype: code for code, dtype in DTYPES.items()}
MAX_HEADER = 100 << 20  # the safetensors format's own limit
ALIGN = 8  # the header is padded with spaces so that the data starts 8-byte aligned


@dataclass(frozen=True)
class Entry:
    """One tensor of a file: where its bytes lie, counted from the start of the file."""

    shape: tuple[int, ...]
    dtype: np.dtype
    start: int
    stop: int


def header_length(head: bytes, url: str) -> int:
    """The header's length from the file's first 8 bytes."""
    if len(head) < 8:
        raise CorruptCheckpointError(f"{url!r} is too short to be a safetensors file", url=url)
    (length,) = struct.unpack("<Q", head[:8])
    if length > MAX_HEADER:
        raise CorruptCheckpointError(
            f"{url!r} declares a {length}-byte header: not a safetensors file", url=url)
    return int(length)


def parse_header(raw: bytes, url: str) -> tuple[dict[str, Entry], dict[str, str]]:
    """({name: Entry} in file order, the ``__metadata__``) of a header of ``len(raw)``
    bytes; ``CorruptCheckpointError`` for a header that does not describe its tensors,
    ``UnsupportedTypeError`` for a dtype zstore does not store."""
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except ValueError as e:
        raise CorruptCheckpointError(f"{url!r} has no valid safetensors header: {e}",
                                     url=url) from None
    base = 8 + len(raw)
    entries: dict[str, Entry] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = DTYPES.get(entry.get("dtype"))
        if dtype is None:
            raise UnsupportedTypeError(
                f"tensor {name!r} in {url!r} has dtype {entry.get('dtype')!r}, which zstore "
                f"does not store; supported: {', '.join(DTYPES)}")
        shape = tuple(int(n) for n in entry["shape"])
        begin, end = (int(x) for x in entry["data_offsets"])
        if end - begin != math.prod(shape) * dtype.itemsize or begin < 0:
            raise CorruptCheckpointError(
                f"tensor {name!r} in {url!r}: {end - begin} bytes at {begin} cannot hold "
                f"{dtype} {shape}", url=url)
        entries[name] = Entry(shape, dtype, base + begin, base + end)
    metadata = header.get("__metadata__") or {}
    return entries, {str(k): str(v) for k, v in metadata.items()}


def encode_header(tensors: list[tuple[str, tuple[int, ...], np.dtype]],
                  metadata: dict[str, str]) -> bytes:
    """The length and header of a file holding ``tensors`` back to back in this order, the
    header padded with spaces so the data starts aligned (as safetensors writes it)."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, shape, dtype in tensors:
        code = CODES.get(np.dtype(dtype))
        if code is None:
            raise UnsupportedTypeError(
                f"tensor {name!r} is {dtype}, which safetensors cannot hold; supported: "
                f"{', '.join(str(d) for d in CODES)}")
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        header[name] = {"dtype": code, "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % ALIGN)
    return struct.pack("<Q", len(raw)) + raw
