"""A stacked array's data while it is saved: its members, seen as one array, never copied
into one.

The planner stacks tensors that repeat (``zstore._plan.stacking``); the save writes them
as one array whose index ``i`` along dim 0 is member ``i``. ``Stacked`` answers the box
reads the writer makes (a chunk is one member's region: a view of that member's memory;
an object's box, for its hash: those members' regions stacked), so a stack of many
tensors costs no copy of them all.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from zstore._format.lazy import Lazy
from zstore._format.tensors import host_array


class Stacked:
    """Members (arrays or tensors of one shape and dtype) as one array along a new dim 0."""

    def __init__(self, members: Sequence[Any], names: Sequence[str], dtype: np.dtype) -> None:
        self._members, self._names = list(members), list(names)
        self.dtype = dtype
        self.shape: tuple[int, ...] = (len(self._members), *tuple(self._members[0].shape))
        self._last: tuple[int, np.ndarray] | None = None  # a device tensor's host copy
        self._lock = threading.Lock()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def member(self, index: int) -> np.ndarray:
        """Member ``index`` in host memory (a view where it is already there; the last
        one copied from a device is kept, for the next chunk of it)."""
        with self._lock:
            if self._last is not None and self._last[0] == index:
                return self._last[1]
        array = host_array(self._members[index], self._names[index])
        with self._lock:
            self._last = (index, array)
        return array

    @property
    def lazy(self) -> bool:
        """Whether members are read on demand (a conversion's): then the save fetches."""
        return any(isinstance(m, Lazy) for m in self._members)

    async def fetch(self, box: tuple[slice, ...]) -> np.ndarray:
        """``self[box]`` of an object's box, lazy members fetched from the event loop."""
        parts = []
        for i in range(self.shape[0])[box[0]]:
            member = self._members[i]
            parts.append(await member.fetch(box[1:]) if isinstance(member, Lazy)
                         else host_array(member, self._names[i])[box[1:]])
        return np.stack(parts)

    def __getitem__(self, box: Any) -> np.ndarray:
        items = (box,) if not isinstance(box, tuple) else box
        if items == (Ellipsis,):
            items = ()
        lead, rest = (items[0], items[1:]) if items else (slice(None), ())
        if isinstance(lead, slice):
            indexes = range(self.shape[0])[lead]
            if len(indexes) == 1:  # one member: a view of its memory
                return self.member(indexes[0])[rest][np.newaxis]
            return np.stack([self.member(i)[rest] for i in indexes])
        return self.member(int(lead))[rest]
