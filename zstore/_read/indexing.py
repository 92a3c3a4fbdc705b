"""Turning a numpy-style index into what zarr can read, plus what to do with the result.

zarr's orthogonal selection takes ints, slices with positive steps and integer
arrays. Users also write negative steps, negative indices, ``...``, boolean
masks, and unsorted or repeated integer arrays (an embedding lookup). Each is
mapped to a read zarr serves exactly (only the chunks holding the elements
asked for), then the result is flipped or reordered in memory.

>>> from zstore._read.indexing import normalize
>>> normalize((slice(None, None, -2), [3, 1, 3]), (10, 5), "w").shape
(5, 3)
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Selection:
    """A zarr orthogonal selection, the shape it yields, and the fix-ups after the read.

    ``flip`` lists output axes to reverse; ``take`` is (output axis, positions)
    to reorder or repeat along after reading sorted unique indices.
    """

    zarr: tuple[Any, ...]
    shape: tuple[int, ...]
    read_shape: tuple[int, ...]
    flip: tuple[int, ...] = ()
    take: tuple[int, np.ndarray] | None = None

    @property
    def direct(self) -> bool:
        """True when zarr's result is the answer as is (it can decode into ``out``)."""
        return not self.flip and self.take is None and bool(self.shape)


def _where(name: str, shape: tuple[int, ...]) -> str:
    return f"{name!r} with shape {shape}"


def _integer(item: Any) -> int | None:
    if isinstance(item, (bool, np.bool_)):
        return None
    try:
        return operator.index(item)
    except TypeError:
        return None


def _expand(index: Any, shape: tuple[int, ...], name: str) -> list[Any]:
    items = list(index) if isinstance(index, tuple) else [index]
    ellipses = sum(item is Ellipsis for item in items)
    if ellipses > 1:
        raise IndexError(f"only one '...' per index; got {index!r} for {_where(name, shape)}")
    used = len(items) - ellipses
    if used > len(shape):
        raise IndexError(f"too many indices ({used}) for {_where(name, shape)}")
    if ellipses:
        at = next(i for i, item in enumerate(items) if item is Ellipsis)
        items[at:at + 1] = [slice(None)] * (len(shape) - used)
    return items + [slice(None)] * (len(shape) - len(items))


def normalize(index: Any, shape: tuple[int, ...], name: str) -> Selection:
    """The read for ``array[index]``; ``IndexError`` naming the array and shape when it
    cannot be."""
    zarr: list[Any] = []
    out_shape: list[int] = []
    read_shape: list[int] = []
    flip: list[int] = []
    take: tuple[int, np.ndarray] | None = None
    arrays = 0
    for dim, (item, n) in enumerate(zip(_expand(index, shape, name), shape)):
        as_int = _integer(item)
        if as_int is not None:
            if not -n <= as_int < n:
                raise IndexError(f"index {as_int} is out of range for dim {dim} of "
                                 f"{_where(name, shape)}")
            zarr.append(as_int % n)
        elif isinstance(item, slice):
            start, stop, step = item.indices(n)
            count = len(range(start, stop, step))
            if step > 0 or count == 0:
                zarr.append(slice(start, stop, step) if count else slice(0, 0))
            else:  # read the same elements ascending, reverse after
                last = start + (count - 1) * step
                zarr.append(slice(last, start + 1, -step))
                flip.append(len(out_shape))
            out_shape.append(count)
            read_shape.append(count)
        elif item is None:
            raise IndexError("np.newaxis (None) is not supported in reads of "
                             f"{_where(name, shape)}; add the axis to the result instead")
        else:
            positions = _positions(item, n, dim, name, shape)
            arrays += 1
            if arrays > 1:
                raise IndexError(f"only one integer or boolean array per index is supported; "
                                 f"got {index!r} for {_where(name, shape)}")
            unique, inverse = np.unique(positions, return_inverse=True)
            zarr.append(unique)
            if len(unique) != len(positions) or np.any(unique != positions):
                take = (len(out_shape), inverse.reshape(-1))
            out_shape.append(len(positions))
            read_shape.append(len(unique))
    return Selection(tuple(zarr), tuple(out_shape), tuple(read_shape), tuple(flip), take)


def _positions(item: Any, n: int, dim: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(item)
    if array.dtype == bool:
        if array.shape != (n,):
            raise IndexError(f"boolean index of shape {array.shape} does not match dim {dim} "
                             f"of {_where(name, shape)}")
        return np.flatnonzero(array)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise IndexError(f"index {item!r} for dim {dim} of {_where(name, shape)} is not an int, "
                         "a slice, '...', or a 1-D array of ints or bools")
    if array.size and (array.min() < -n or array.max() >= n):
        bad = array[(array < -n) | (array >= n)][0]
        raise IndexError(f"index {int(bad)} is out of range for dim {dim} of {_where(name, shape)}")
    return np.where(array < 0, array + n, array).astype(np.int64)


def finish(result: np.ndarray, selection: Selection) -> np.ndarray:
    """Apply the flips and reordering a read needed after zarr returned it."""
    for axis in selection.flip:
        result = np.flip(result, axis)
    if selection.take is not None:
        axis, positions = selection.take
        result = np.take(result, positions, axis=axis)
    return np.ascontiguousarray(result).reshape(selection.shape)  # all-int index: a 0-d array
