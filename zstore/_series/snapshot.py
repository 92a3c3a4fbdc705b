"""Snapshots for background saves, in host buffers reused from one save to the next.

A background save must copy the state before ``save(blocking=False)`` returns (training
goes on changing it). Copying into fresh memory pays a page fault per 4 KiB the first
time each page is touched, which makes the copy about 1.4x slower than one into memory
already mapped; so a manager keeps each finished save's buffers and the next save copies
into them. With ``max_pending`` saves in flight, at most ``max_pending + 1`` sets of buffers
exist (the one being filled, and those being written): the memory of a background save.
Tensors on an accelerator are copied to the host as before (their own copy).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from zstore._format.tensors import host_array, host_copy, is_dtensor, is_torch_tensor
from zstore._ranks import Part, local_part

Buffers = dict[str, Any]  # path -> host array, or a DTensor's Part


class SnapshotPool:
    """Sets of host buffers, one per array path, handed out and given back whole."""

    def __init__(self) -> None:
        self._free: list[Buffers] = []
        self._lock = threading.Lock()

    def snapshot(self, arrays: dict[str, Any]) -> Buffers:
        """A copy of every array, in a free set's buffers where their shape and dtype fit
        (each array in memory of its own: later changes to ``arrays`` do not reach it)."""
        with self._lock:
            reused = self._free.pop() if self._free else {}
        copies: Buffers = {}
        for path, value in arrays.items():
            part = None
            if is_dtensor(value):  # its local part, and where that lies in the global tensor
                shape, box, value = local_part(value, path)
                part = (shape, box)
            if is_torch_tensor(value) and value.device.type != "cpu":
                target = host_copy(value, path)  # the device-to-host copy is its own
            else:
                source = host_array(value, path)
                spare = _data(reused.get(path))
                fits = (spare is not None and spare.shape == source.shape
                        and spare.dtype == source.dtype)
                target = spare if fits and spare is not None else np.empty(source.shape,
                                                                           source.dtype)
                np.copyto(target, source)
            copies[path] = target if part is None else Part(target, part[1], part[0])
        return copies

    def give_back(self, buffers: Buffers) -> None:
        """Buffers a save has finished with, for the next snapshot."""
        with self._lock:
            self._free.append(buffers)

    def clear(self) -> None:
        with self._lock:
            self._free.clear()


def _data(buffer: Any) -> np.ndarray | None:
    """The host memory of a buffer given back (a DTensor's snapshot is a ``Part``)."""
    return buffer.data if isinstance(buffer, Part) else buffer
