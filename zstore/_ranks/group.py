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

_GROUPS: dict[Any, Any] = {}  # process group (None: all ranks) -> its gloo group
_SAVES: dict[Any, int] = {}  # process group -> collective saves begun on it here


@dataclass(frozen=True)
class Ranks:
    """This process's rank among ``size`` ranks, and the gloo group their collectives use."""

    rank: int
    size: int
    group: Any
    url: str
    key: Any = None  # the process group it stands for (None: all ranks)
    work: str = "save"  # what the collectives are for: "save" or "load"

    @classmethod
    def current(cls, url: str, process_group: Any = None, work: str = "save"
                ) -> Ranks | None:
        """The ranks of ``process_group`` (default: the whole job), or None where
        ``torch.distributed`` is not initialized (a single-process save or load)."""
        dist = sys.modules.get("torch.distributed")  # never imported for a numpy save
        if dist is None or not (dist.is_available() and dist.is_initialized()):
            return None
        if process_group not in _GROUPS:  # its timeout: the setting when it is made
            members = dist.get_process_group_ranks(process_group or dist.group.WORLD)
            _GROUPS[process_group] = dist.new_group(
                ranks=members, backend="gloo",
                timeout=datetime.timedelta(seconds=current().collective_timeout),
                use_local_synchronization=process_group is not None)
        group = _GROUPS[process_group]
        return cls(dist.get_rank(group), dist.get_world_size(group), group, url,
                   process_group, work)

    def next_save(self) -> int:
        """This rank's count of collective saves on the group, this one included: each
        rank's n-th save must pair with every other rank's n-th."""
        _SAVES[self.key] = _SAVES.get(self.key, 0) + 1
        return _SAVES[self.key]

    def forget(self) -> None:
        """Drop the group after a failed save: its exchanges may be out of step, so the
        next save (which every rank makes after a failure) makes a new one."""
        _GROUPS.pop(self.key, None)

    def exchange(self, value: Any, step: str) -> list[Any]:
        """Every rank's ``value``, in rank order (an all-gather of Python objects)."""
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.size
        try:
            dist.all_gather_object(gathered, value, group=self.group)
        except Exception as e:  # gloo: a timeout, or a peer's connection closed
            alone = ("a save by one rank alone takes process_group=False" if self.work ==
                     "save" else "a load by one rank alone leaves broadcast off")
            raise RankFailedError(
                f"rank {self.rank}: the {self.work} of {self.url!r} stopped at {step}: "
                f"another rank did not take part within {current().collective_timeout:.0f} s "
                f"(Settings.collective_timeout), so it crashed or hangs ({_first_line(e)}); "
                f"{self._ending}. (Under torch.distributed every rank calls {self.work}; "
                f"{alone})", url=self.url) from e
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
                f"rank {self.rank}: the {self.work} of {self.url!r} stopped at {step} because "
                + "; ".join(f"rank {rank} failed: {what}" for rank, what in failed[:4])
                + (f" (and {len(failed) - 4} more)" if len(failed) > 4 else "")
                + f"; {self._ending}", url=self.url, ranks=[r for r, _ in failed])
        return [value for value, _ in said]

    @property
    def _ending(self) -> str:
        return "nothing was committed" if self.work == "save" else "the load did not finish"


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
