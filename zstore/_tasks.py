"""Running many coroutines as one: the first failure stops the others, and none outlives it.

``asyncio.gather`` raises at the first failure but leaves its other tasks running:
they go on reading (or writing into a model's memory) after the caller has seen the
error, and the loop later logs "Task was destroyed but it is pending". A
``TaskGroup`` cancels them and waits until they have stopped; ``gather_all`` adds
what callers want from it: results in order, and the first error itself rather than
an ``ExceptionGroup`` (so ``except StorageFailedError`` keeps working).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


async def gather_all(coroutines: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Await every coroutine concurrently; results in order. On the first failure the
    rest are cancelled and awaited, then that failure is raised."""
    error: BaseException | None = None
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coroutines]
    except BaseExceptionGroup as failures:
        error = _first(failures)
    if error is not None:  # raised here, outside the handler: its own cause and context stay
        raise error
    return [task.result() for task in tasks]


def _first(failures: BaseExceptionGroup) -> BaseException:
    """The first real failure of a group (nested groups flattened). Its traceback,
    ``__cause__`` and ``__context__`` are kept; only the group wrapper is dropped (``raise
    ... from None`` would clear the cause, which says, say, which S3 error code it was)."""
    first = failures.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first
