"""The arrays a ``.safetensors`` file holds, from its header alone, for planning a conversion.

Two reads of any fsspec URL (the header's length, then the header) give every array's
shape and dtype without touching the data (``zstore._format.safetensors``).
"""

from __future__ import annotations

from typing import Any

import fsspec
import numpy as np

from zstore._format.safetensors import header_length, parse_header


def safetensors_specs(url: str, storage_options: dict[str, Any] | None = None
                      ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{name: (shape, dtype)} of every tensor in the file, in file order."""
    with fsspec.open(url, "rb", **(storage_options or {})) as f:
        length = header_length(f.read(8), url)
        entries, _ = parse_header(f.read(length), url)
    return {name: (e.shape, e.dtype) for name, e in entries.items()}
