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
        try:
            code, shape_list, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
            shape = tuple(_count(n) for n in shape_list)
            begin, end = (_count(x) for x in offsets)
            dtype = DTYPES.get(code) if isinstance(code, str) else None
        except (TypeError, KeyError, ValueError):
            raise CorruptCheckpointError(f"tensor {name!r} in {url!r} has a malformed header "
                                         f"entry {entry!r}", url=url) from None
        if dtype is None:
            raise UnsupportedTypeError(
                f"tensor {name!r} in {url!r} has dtype {code!r}, which zstore "
                f"does not store; supported: {', '.join(DTYPES)}")
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise CorruptCheckpointError(
                f"tensor {name!r} in {url!r}: {end - begin} bytes at {begin} cannot hold "
                f"{dtype} {shape}", url=url)
        entries[name] = Entry(shape, dtype, base + begin, base + end)
    spans = sorted((e.start, e.stop, n) for n, e in entries.items() if e.stop > e.start)
    for (_, stop, first), (start, _, second) in zip(spans, spans[1:]):
        if start < stop:
            raise CorruptCheckpointError(f"tensors {first!r} and {second!r} in {url!r} share "
                                         "bytes: the header is damaged", url=url)
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise CorruptCheckpointError(f"{url!r}: __metadata__ is not an object", url=url)
    return entries, {str(k): str(v) for k, v in metadata.items()}


def _count(value: Any) -> int:
    """A non-negative int of a header (``ValueError`` for anything else)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(value)
    return value


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
