"""Streaming a checkpoint into an existing torch module or state dict, tensor by tensor.

Every tensor is checked first (missing, unexpected, shape), so a mismatch
fails before any parameter changes. Then each tensor is read into the memory
it will live in: a CPU tensor of the stored dtype is decoded straight into its
own storage (no extra copy at all); others (another dtype, an accelerator)
go through a ``DeviceStager`` (pinned buffers, copies overlapping decode for
CUDA), so the extra memory at any moment is bounded by ``budget`` bytes of
buffers in flight (at least the largest tensor).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zstore._budget import ByteBudget
from zstore._format.tensors import is_dtensor, numpy_to_torch, require_torch, torch_to_numpy
from zstore._format.tree import tensor_leaves
from zstore._options import concurrency, current
from zstore._progress import bar
from zstore._ranks import Ranks, assign, local_part
from zstore._read.staging import DeviceStager
from zstore._storage.location import run
from zstore._tasks import gather_all
from zstore.errors import PartialLoadError, StateMismatchError


@dataclass
class LoadReport:
    """What ``load(into=...)`` matched, like torch's ``load_state_dict`` result.

    Its repr is one line of counts (``<All keys matched successfully: 40 loaded>``);
    the lists are attributes.
    """

    loaded: list[str] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        if not self.missing_keys and not self.unexpected_keys:
            return f"<All keys matched successfully: {len(self.loaded)} loaded>"
        return (f"<LoadReport: {len(self.loaded)} loaded, "
                f"{_counted(self.missing_keys, 'missing')}, "
                f"{_counted(self.unexpected_keys, 'unexpected')}>")


def _counted(keys: list[str], what: str, shown: int = 3) -> str:
    if not keys:
        return f"0 {what}"
    more = ", ..." if len(keys) > shown else ""
    return f"{len(keys)} {what} ({', '.join(map(repr, keys[:shown]))}{more})"


def _targets(into: Any) -> Mapping[str, Any]:
    torch = require_torch()
    if isinstance(into, torch.nn.Module):
        live: Mapping[str, Any] = into.state_dict(keep_vars=True)  # parameters and buffers
        return live
    if isinstance(into, Mapping):
        if any(isinstance(v, (Mapping, list, tuple)) for v in into.values()):
            return tensor_leaves(into)  # a tree: {"model": sd, "optim": osd}
        return into
    raise TypeError(f"into= takes a torch.nn.Module or a state dict, got {type(into).__name__}")


def load_into(ckpt: Any, into: Any, *, strict: bool = True, prefix: str = "",
              progress: bool | None = None, budget: int | None = None,
              max_concurrency: int | None = None, broadcast: bool = False,
              process_group: Any = None) -> LoadReport:
    """Copy the checkpoint's arrays named ``prefix + key`` into ``into``'s tensors, in place,
    at most ``max_concurrency`` at once (None: ``Settings.load_concurrency``), staged ones
    within ``budget`` bytes (None: ``Settings.staging_budget``). With ``broadcast`` under
    ``torch.distributed``, each plain (replicated) tensor is read by one rank of
    ``process_group`` and broadcast to the others (``_Broadcast``)."""
    max_concurrency = concurrency(max_concurrency, saving=False)
    budget = current().staging_budget if budget is None else budget
    targets = _targets(into)
    stored = {n[len(prefix):]: n for n in ckpt if n.startswith(prefix)}
    report = LoadReport(
        missing_keys=[k for k in targets if k not in stored],
        unexpected_keys=[k for k in stored if k not in targets],
    )
    shapes = [f"{k}: checkpoint {ckpt[stored[k]].shape}, target {tuple(t.shape)}"
              for k, t in targets.items()
              if k in stored and tuple(t.shape) != ckpt[stored[k]].shape]
    problems = shapes + ([f"missing: {report.missing_keys}"] if strict and report.missing_keys
                         else []) + ([f"unexpected: {report.unexpected_keys}"]
                                     if strict and report.unexpected_keys else [])
    if problems:
        raise StateMismatchError(
            f"cannot load {ckpt.url!r} into {type(into).__name__} (nothing was changed): "
            + "; ".join(problems) + ("" if strict or not shapes else
                                     "; shape mismatches fail even with strict=False"))
    keys = [k for k in targets if k in stored]
    shared = _Broadcast.among(ckpt.url, targets, keys, process_group) if broadcast else None
    reads = keys if shared is None else [k for k in keys if k not in shared.received]
    shown = bar(sum(ckpt[stored[k]].nbytes for k in reads), f"loading {ckpt.url}", progress)
    written: dict[str, bool] = {}  # key -> whether its copy finished; absent: not begun
    try:
        failure: Exception | None = None
        try:
            run(ckpt.url, _copy_all(ckpt, targets, stored, reads, budget, max_concurrency,
                                    shown, written))
        except Exception as e:
            failure = e
        if shared is not None:  # every rank takes part, or they would wait for this one
            shared.send(targets, failure, written)
        elif failure is not None:
            raise failure
    except Exception as e:
        if not written:
            raise  # nothing was written: the target is as it was
        raise _partial(ckpt.url, into, keys, written, e) from e
    finally:
        shown.close()
    report.loaded = keys
    return report


@dataclass
class _Broadcast:
    """Replicated tensors read once: each plain tensor (on every rank the same, unlike a
    DTensor's part) is read by one rank, the bytes spread evenly (``assign``), and
    broadcast to the others over the checkpoint's gloo group. The store serves each byte
    once instead of once per rank: for N ranks on S3, 1/N of the requests and bytes."""

    ranks: Ranks
    owners: dict[str, int]  # key -> the rank that reads it, in broadcast order
    received: set[str]  # keys this rank gets from another

    @classmethod
    def among(cls, url: str, targets: Mapping[str, Any], keys: list[str],
              process_group: Any) -> _Broadcast | None:
        ranks = Ranks.current(url, process_group, work="load")
        if ranks is None or ranks.size == 1:
            return None
        plain = [(k, tuple(targets[k].shape)) for k in keys if not is_dtensor(targets[k])]
        everyone = ranks.share(plain, None, "matching the targets")
        for rank, theirs in enumerate(everyone):
            if theirs != plain:
                only = sorted(set(map(tuple, theirs)) ^ set(plain))[:3]
                raise ValueError(
                    f"broadcast=True loads the same replicated tensors on every rank, but "
                    f"rank {rank}'s differ from rank {ranks.rank}'s (e.g. {only}); load "
                    "without broadcast, or pass the same targets everywhere")
        owners = assign([(k, targets[k].nbytes, range(ranks.size)) for k, _ in plain],
                        ranks.size)
        order = {k: owners[k] for k, _ in plain}
        return cls(ranks, order, {k for k, r in order.items() if r != ranks.rank})

    def send(self, targets: Mapping[str, Any], failure: Exception | None,
             written: dict[str, bool]) -> None:
        """Once every rank read its share (or every rank raises), broadcast each tensor
        from its reader, in the same order everywhere."""
        import torch.distributed as dist

        self.ranks.share(None, failure, "reading")
        for key, owner in self.owners.items():
            tensor = targets[key].detach()
            buffer = tensor if tensor.is_contiguous() else tensor.contiguous()
            if owner != self.ranks.rank:
                written[key] = False
            dist.broadcast(buffer, group=self.ranks.group, group_src=owner)
            if buffer is not tensor:
                tensor.copy_(buffer)
            written[key] = True


def _partial(url: str, into: Any, keys: list[str], written: dict[str, bool],
             cause: Exception) -> PartialLoadError:
    loaded = [k for k in keys if written.get(k)]
    partial = [k for k in keys if written.get(k) is False]
    untouched = [k for k in keys if k not in written]
    return PartialLoadError(
        f"loading {url!r} into {type(into).__name__} failed midway ({cause}): "
        f"{len(loaded)} of {len(keys)} tensors were filled, {len(partial)} were being filled "
        f"(contents undefined: {partial[:5]}{' ...' if len(partial) > 5 else ''}) and "
        f"{len(untouched)} are unchanged. The lists are this error's .loaded, .partial and "
        ".untouched; load again once the cause is fixed",
        loaded=loaded, partial=partial, untouched=untouched)


async def _copy_all(ckpt: Any, targets: Mapping[str, Any], stored: dict[str, str],
                    keys: list[str], budget: int, max_concurrency: int, shown: Any,
                    written: dict[str, bool]) -> None:
    """Fill every target, recording in ``written`` when each one's memory is first touched
    and when it is complete. The first failure cancels the rest and waits for them, so
    ``written`` is final once this returns or raises (no task is left running)."""
    shared, reads = ByteBudget(budget), ByteBudget(current().read_budget)
    stagers: dict[Any, DeviceStager] = {}
    limit = asyncio.Semaphore(max_concurrency)
    stacks = _whole_stacks(ckpt, targets, stored, keys)
    in_stacks = {key for members in stacks.values() for key, _ in members.values()}

    async def block(whole: Any, members: dict[int, tuple[str, np.ndarray]], start: int,
                    stop: int) -> None:
        """Members [start, stop) of a stack: one shard's worth, read whole (one GET), then
        copied into their tensors."""
        nbytes = (stop - start) * whole.nbytes // whole.shape[0]
        async with limit, shared.hold(nbytes):
            data = await whole._read((slice(start, stop),), None, reads)
            for i in range(start, stop):
                key, view = members[i]
                written[key] = False
                np.copyto(view, data[i - start])
                written[key] = True
                shown.update(view.nbytes)

    async def part(key: str) -> None:
        """A DTensor: its local part, read from the global array (N ranks saved, M load)."""
        tensor, source = targets[key], ckpt[stored[key]]
        _, box, local = local_part(tensor, key)
        if box is not None:
            index = tuple(slice(lo, hi) for lo, hi in box)
            direct = _host_view(local, source.dtype, key)
            async with limit:
                written[key] = False
                if direct is not None:
                    await source._read(index, direct, reads)
                else:  # another dtype or device: through host memory, then copied
                    data = await source._read(index, None, reads)
                    local.detach().copy_(numpy_to_torch(data))  # a parameter's own view
        written[key] = True
        shown.update(source.nbytes)

    async def one(key: str) -> None:
        if is_dtensor(targets[key]):
            return await part(key)
        tensor, source = targets[key], ckpt[stored[key]]
        direct = _host_view(tensor, source.dtype, key)
        async with limit:
            if direct is not None:  # decode into the parameter's own memory
                written[key] = False
                await source._read(..., direct, reads)
            else:
                if tensor.device not in stagers:
                    stagers[tensor.device] = DeviceStager(tensor.device, shared)
                await stagers[tensor.device].copy_into(
                    source, tensor, before_write=lambda: written.setdefault(key, False))
        written[key] = True
        shown.update(source.nbytes)

    jobs = [one(k) for k in keys if k not in in_stacks]
    for whole, members in stacks.items():
        per = (whole.shard_shape or whole.shape)[0]
        jobs += [block(whole, members, start, min(start + per, whole.shape[0]))
                 for start in range(0, whole.shape[0], per)]
    await gather_all(jobs)
    for stager in stagers.values():
        stager.finish()


def _whole_stacks(ckpt: Any, targets: Mapping[str, Any], stored: dict[str, str],
                  keys: list[str]) -> dict[Any, dict[int, tuple[str, np.ndarray]]]:
    """The stacked arrays every member of which goes straight into a CPU tensor: read shard
    by shard (one GET each), not member by member. {whole array: {index: (key, view)}}."""
    views: dict[str, np.ndarray] = {}
    for key in keys:
        source = ckpt[stored[key]]
        plain = source.stacked and not is_dtensor(targets[key])
        view = _host_view(targets[key], source.dtype, key) if plain else None
        if view is not None:
            views[key] = view
    direct = {key: ckpt[stored[key]] for key in views}
    return {stack: {index: (key, views[key]) for index, key in members.items()}
            for stack, members in ckpt.whole_stacks(direct).items()}


def _host_view(tensor: Any, dtype: np.dtype, name: str) -> np.ndarray | None:
    """A numpy view of a CPU tensor's own memory, when the stored bytes can land there."""
    if tensor.device.type != "cpu" or not tensor.is_contiguous():
        return None
    view = torch_to_numpy(tensor.detach(), name)
    return view if view.dtype == dtype else None
