"""Vectored file I/O: many buffers filled from, or written to, one file in few system calls.

``preadv`` and ``writev`` move a file's bytes straight between the page cache and the
arrays' own memory, one system call for up to ``IOV_MAX`` buffers, where ``read`` into a
``bytes`` and a copy would touch every byte twice. Both may move fewer bytes than asked;
these resume where they stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

IOV_MAX = 1024  # buffers one preadv/writev call takes (Linux's limit)


def read_into(fd: int, buffers: Sequence[Any], offset: int) -> None:
    """Fill every buffer, in order, from ``offset`` of the file; ``ValueError`` if the file
    ends first (a damaged object: the reader reports it as a failed checksum)."""
    def read(views: list[memoryview], at: int) -> int:
        done = os.preadv(fd, views, at)
        if done == 0:
            raise ValueError(f"checksum mismatch: the file ended after {at} bytes")
        return done

    _each_batch(buffers, offset, read)


def write_from(fd: int, buffers: Sequence[Any]) -> int:
    """Write every buffer, in order, at the file's position; the bytes written."""
    return _each_batch(buffers, 0, lambda views, _: os.writev(fd, views))


def _each_batch(buffers: Sequence[Any], offset: int,
                call: Callable[[list[memoryview], int], int]) -> int:
    views = [v for v in (memoryview(b).cast("B") for b in buffers) if len(v)]
    total, at = sum(len(v) for v in views), 0
    while at < len(views):
        done = call(views[at:at + IOV_MAX], offset)
        offset += done
        while done and at < len(views):
            if done >= len(views[at]):
                done -= len(views[at])
                at += 1
            else:
                views[at] = views[at][done:]
                done = 0
    return total
