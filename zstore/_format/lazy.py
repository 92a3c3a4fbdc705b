"""Arrays read on demand, box by box: what a conversion streams from its source.

A save fetches each object's box of a lazy array (``fetch``) and encodes its chunks from
that block, so a leaf that answers a box with a numpy array, and knows its shape and
dtype, is saved without ever being whole in memory: a safetensors file's tensor is read
by byte range, one object's rows at a time. Subclasses say how a box is read (``read``);
the tree treats one ``Lazy`` object under two names as a tied tensor, stored once.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np

Box = tuple[slice, ...]


class Lazy:
    """An array of ``shape`` and ``dtype`` whose boxes are read when asked for; ``kind``
    is what loading it gives back (``"torch"`` or ``"numpy"``)."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, kind: str = "numpy") -> None:
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.kind = kind

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.read(full_box(index, self.shape))

    def read(self, box: Box) -> np.ndarray:
        """The box (unit-step slices with explicit bounds, one per dim), as an array."""
        raise NotImplementedError

    async def fetch(self, box: Box) -> np.ndarray:
        """``read`` from an event loop: the save fetches each object's box this way, once,
        then encodes its chunks from memory. Blocking reads run in a worker thread; a
        source that reads through an event loop itself overrides this, so that it never
        waits on a loop from one of that loop's own worker threads."""
        return await asyncio.to_thread(self.read, box)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.dtype} {self.shape}>"


def is_lazy(array: Any) -> bool:
    """Whether the save must ``fetch`` ``array``'s boxes: a ``Lazy`` leaf, or a stacked
    array of them."""
    return isinstance(array, Lazy) or bool(getattr(array, "lazy", False))


def full_box(index: Any, shape: tuple[int, ...]) -> Box:
    """``index`` (``...``, slices, a tuple of them) as one bounded unit-step slice per dim;
    ``IndexError`` for anything else (a lazy source reads boxes only)."""
    items = index if isinstance(index, tuple) else (index,)
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items = items[:at] + (slice(None),) * (len(shape) - len(items) + 1) + items[at + 1:]
    items = items + (slice(None),) * (len(shape) - len(items))
    if len(items) != len(shape) or not all(isinstance(s, slice) for s in items):
        raise IndexError(f"a lazy array reads boxes of slices, not {index!r}")
    box = []
    for s, n in zip(items, shape):
        start, stop, step = s.indices(n)
        if step != 1:
            raise IndexError(f"a lazy array reads unit-step slices, not {s}")
        box.append(slice(start, max(start, stop)))
    return tuple(box)


def rows_of(box: Box, shape: tuple[int, ...]) -> tuple[int, int, Box]:
    """(first row, end row, the rest of the box): how a C-order source reads ``box`` as
    one contiguous run of whole rows, then cuts the rest in memory."""
    if not shape:
        return 0, 1, ()
    return box[0].start, box[0].stop, (slice(None), *box[1:])
