"""The ranks of a multi-rank save and the few collectives it makes, each bounded in time.

A save's collectives run on a gloo group of their own (one per process group, made once
and reused), never on the training's group: they carry a few small Python objects
(shapes, boxes, outcomes), and a checkpoint's exchange must never queue behind, or
block, training collectives on NCCL. The group's timeout is
``Settings.collective_timeout``: a rank that crashed or hangs makes every other rank's
next collective fail after at most that long, and the save raises ``RankFailedError``.
"""

from __future__ import annotations

import datetime
import sys
from dataclasses import dataclass
from typing import Any

from zstore._options import current
from zstore.errors import RankFailedError

_GROUPS: dict[tuple[Any, float], Any] = {}  # (process group, timeout) -> gloo group


@dataclass(frozen=True)
class Ranks:
    """This process's rank among ``size`` ranks, and the gloo group their collectives use."""

    rank: int
    size: int
    group: Any
    url: str

    @classmethod
    def current(cls, url: str, process_group: Any = None) -> Ranks | None:
        """The ranks of ``process_group`` (default: the whole job), or None where
        ``torch.distributed`` is not initialized (a single-process save)."""
        dist = sys.modules.get("torch.distributed")  # never imported for a numpy save
        if dist is None or not (dist.is_available() and dist.is_initialized()):
            return None
        timeout = current().collective_timeout
        key = (process_group, timeout)
        if key not in _GROUPS:
            members = dist.get_process_group_ranks(process_group or dist.group.WORLD)
            _GROUPS[key] = dist.new_group(
                ranks=members, backend="gloo", timeout=datetime.timedelta(seconds=timeout),
                use_local_synchronization=process_group is not None)
        group = _GROUPS[key]
        return cls(dist.get_rank(group), dist.get_world_size(group), group, url)

    def exchange(self, value: Any, step: str) -> list[Any]:
        """Every rank's ``value``, in rank order (an all-gather of Python objects)."""
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.size
        try:
            dist.all_gather_object(gathered, value, group=self.group)
        except Exception as e:  # gloo: a timeout, or a peer's connection closed
            raise RankFailedError(
                f"rank {self.rank}: the save to {self.url!r} stopped at {step}: another rank "
                f"did not take part within {current().collective_timeout:.0f} s "
                f"(Settings.collective_timeout), so it crashed or hangs ({_first_line(e)}); "
                "nothing was committed", url=self.url) from e
        return gathered

    def share(self, value: Any, failure: BaseException | None, step: str) -> list[Any]:
        """Every rank's ``value`` after ``step``, once every rank says it went well; if any
        failed, every rank raises (a failed rank its own error, the others
        ``RankFailedError`` naming the failed ranks and their errors)."""
        said = self.exchange((value, None) if failure is None else (None, _describe(failure)),
                             step)
        failed = [(rank, what) for rank, (_, what) in enumerate(said) if what is not None]
        if failure is not None:
            raise failure
        if failed:
            raise RankFailedError(
                f"rank {self.rank}: the save to {self.url!r} stopped at {step} because "
                + "; ".join(f"rank {rank} failed: {what}" for rank, what in failed[:4])
                + (f" (and {len(failed) - 4} more)" if len(failed) > 4 else "")
                + "; nothing was committed", url=self.url, ranks=[r for r, _ in failed])
        return [value for value, _ in said]


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
