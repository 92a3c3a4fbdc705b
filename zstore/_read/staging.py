"""Loading onto an accelerator through reused pinned host buffers, decode overlapping copy.

A tensor bound for CUDA is decoded into a page-locked host buffer, then copied
with ``non_blocking=True`` on a side stream; while that copy runs, the event
loop is already decoding the next tensor into another buffer. A buffer returns
to the pool once its copy's event has fired, so host memory in flight stays
within ``budget`` bytes (default ``zstore.Settings.staging_budget``; one larger
tensor runs alone), and pinned memory, slow to allocate, is allocated once per
load rather than once per tensor.

Any other device (``"cpu"``, ``"mps"``...) takes the same path with ordinary
buffers and synchronous copies: one code path, tested on every machine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

from zstore._budget import ByteBudget
from zstore._format.tensors import require_torch, torch_dtype_of, torch_to_numpy
from zstore._options import current
from zstore._read.indexing import normalize
from zstore.errors import DeviceUnavailableError


class DeviceStager:
    """Moves decoded arrays onto one torch device; one per load (it owns a buffer pool)."""

    def __init__(self, device: Any, budget: ByteBudget | None = None) -> None:
        self.torch = torch = require_torch()
        self.device = usable_device(torch, device)
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        # may be shared by several stagers
        self._budget = budget or ByteBudget(current().staging_budget)
        self._free: list[Any] = []  # uint8 host buffers whose copies have finished

    def _buffer(self, nbytes: int) -> Any:
        """The smallest free buffer that fits, else a new one. Found by position: tensors
        compare elementwise, so ``list.remove`` would broadcast them against each other."""
        fitting = [i for i, b in enumerate(self._free) if b.numel() >= nbytes]
        if fitting:
            return self._free.pop(min(fitting, key=lambda i: self._free[i].numel()))
        return self.torch.empty(nbytes, dtype=self.torch.uint8, pin_memory=self.cuda)

    async def copy_into(self, source: Any, target: Any, index: Any = Ellipsis, *,
                        before_write: Callable[[], object] | None = None) -> None:
        """Decode ``source[index]`` and copy it into ``target`` (any device, any dtype: a
        different dtype is cast, as ``Tensor.copy_`` and ``load_state_dict`` cast).

        ``target`` is untouched until the whole selection is decoded; ``before_write``
        is called just before the copy into it begins.
        """
        shape, dtype = _selection(source, index)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        async with self._budget.hold(nbytes):
            raw = self._buffer(nbytes)
            try:
                staged = raw[:nbytes].view(torch_dtype_of(dtype)).view(shape)
                await source.read_async(index, out=torch_to_numpy(staged, source.name))
                if before_write is not None:
                    before_write()
                done = self._copy(staged, target)
                if done is not None:  # the buffer is free once the device has read it
                    await asyncio.to_thread(done.synchronize)
            finally:
                self._free.append(raw)

    def _copy(self, host: Any, target: Any) -> Any:
        with self.torch.no_grad():
            if not self.cuda or target.device.type != "cuda":
                target.copy_(host)
                return None
            with self.torch.cuda.stream(self.stream):
                target.copy_(host, non_blocking=True)
                done = self.torch.cuda.Event()
                done.record(self.stream)
            return done

    async def to_device(self, source: Any, index: Any = Ellipsis) -> Any:
        """``source[index]`` as a new tensor on this device, dtype as stored."""
        shape, dtype = _selection(source, index)
        target = self.torch.empty(shape, dtype=torch_dtype_of(dtype), device=self.device)
        await self.copy_into(source, target, index)
        return target

    def finish(self) -> None:
        """Make this load's copies visible to work queued on the device's current stream."""
        if self.cuda:
            self.torch.cuda.current_stream(self.device).wait_stream(self.stream)


def _selection(source: Any, index: Any) -> tuple[tuple[int, ...], np.dtype]:
    if index is Ellipsis:
        return tuple(source.shape), source.dtype
    return tuple(normalize(index, source.shape, source.name).shape), source.dtype



def usable_device(torch: Any, device: Any) -> Any:
    """``device`` as a ``torch.device`` that exists on this machine, checked before any
    data moves: without the check a CPU-only torch fails deep inside stream creation
    (``invalid argument to exchangeDevice``)."""
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceUnavailableError(f"{device!r} is not a torch device: {e}",
                                     device=str(device)) from None
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is a CPU-only build" if torch.version.cuda is None else (
                "no GPU is visible (CUDA_VISIBLE_DEVICES, driver)")
            raise DeviceUnavailableError(
                f"device {str(device)!r}: CUDA is not available here ({why}); load onto the "
                "CPU (leave device unset) and move tensors later, or run where a GPU is",
                device=str(device))
        count = torch.cuda.device_count()
        if chosen.index is not None and chosen.index >= count:
            raise DeviceUnavailableError(
                f"device {str(device)!r}: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}", device=str(device))
        return chosen
    try:
        torch.empty(0, device=chosen)
    except (RuntimeError, AssertionError) as e:  # torch asserts for backends not built in
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeviceUnavailableError(
            f"device {str(device)!r} is not available here: {first_line}",
            device=str(device)) from None
    return chosen
