"""ByteBudget: concurrency bounded by bytes in flight, never deadlocked by a large item."""

from __future__ import annotations

import asyncio

from zstore._budget import ByteBudget


def _peak(sizes: list[int], limit: int) -> tuple[int, list[int]]:
    budget, held, peak, order = ByteBudget(limit), [0], [0], []

    async def one(i: int, size: int) -> None:
        async with budget.hold(size):
            held[0] += size
            peak[0] = max(peak[0], held[0])
            await asyncio.sleep(0.01)
            held[0] -= size
            order.append(i)

    async def main() -> None:
        await asyncio.gather(*(one(i, s) for i, s in enumerate(sizes)))

    asyncio.run(main())
    return peak[0], order


def test_holders_share_the_limit():
    peak, order = _peak([40] * 6, limit=100)
    assert peak == 80 and sorted(order) == list(range(6))


def test_one_holder_above_the_limit_runs_alone():
    peak, order = _peak([10, 500, 10], limit=100)
    assert peak == 500 and sorted(order) == [0, 1, 2]
