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

from zstore._format.tensors import host_array, host_copy, is_torch_tensor

Buffers = dict[str, np.ndarray]


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
            if is_torch_tensor(value) and value.device.type != "cpu":
                copies[path] = host_copy(value, path)  # the device-to-host copy is its own
                continue
            source = host_array(value, path)
            target = reused.get(path)
            if target is None or target.shape != source.shape or target.dtype != source.dtype:
                target = np.empty(source.shape, source.dtype)
            np.copyto(target, source)
            copies[path] = target
        return copies

    def give_back(self, buffers: Buffers) -> None:
        """Buffers a save has finished with, for the next snapshot."""
        with self._lock:
            self._free.append(buffers)

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
