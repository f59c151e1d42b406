"""Render turns: how many admitted renders an ingress replica works on at once.

An ingress replica runs one event loop, and each admitted render costs it ~15 ms of CPU in
small pieces (the body, planning, the handle calls to the stages, the answer). A loop
iteration runs one piece of every render in progress before it reads the next request, so
when a burst let in 70 renders at once (96 requests at a burst's start, 2 cores), every
request behind them waited ~1 s to be read, and those refused waited as long for their 503.

With at most ``limit`` renders in progress, the iterations stay short and every newcomer is
read, and admitted or refused, within milliseconds. The others wait their turn in arrival
order at no cost to the loop. Admission already let them in: they would have waited as
long in compose's queue, and the stages stay busy as long as ``limit`` covers what they
work on at once.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["RenderTurns"]


class RenderTurns:
    """At most ``limit`` holders at once; the others wait in arrival order (FIFO).

    Parameters
    ----------
    limit : int
        Renders in progress at once; 0 means no limit (every `take` succeeds at once).
    """

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self.limit = limit
        self.in_progress = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Renders waiting for a turn now."""
        return sum(1 for w in self._waiters if not w.done())

    async def take(self, timeout_s: float) -> bool:
        """Wait for a turn, at most ``timeout_s`` seconds [s]; False if none came in time.

        A turn taken must be given back once (`give_back`), whatever happens to the render.
        """
        if self.limit == 0 or (self.in_progress < self.limit and not self.waiting):
            self.in_progress += 1
            return True
        if timeout_s <= 0:
            return False
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            async with asyncio.timeout(timeout_s):
                await turn
            return True
        except TimeoutError:
            self._forget(turn)
            return False
        except asyncio.CancelledError:
            self._forget(turn)
            raise

    def give_back(self) -> None:
        """End a turn: the longest waiter gets it, or the count goes down."""
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # handed over: in_progress stays the same
                return
        self.in_progress = max(self.in_progress - 1, 0)

    def _forget(self, turn: asyncio.Future[None]) -> None:
        """A waiter left (deadline or cancel): a turn handed to it at that moment goes on."""
        if turn.done() and not turn.cancelled():
            self.give_back()
            return
        turn.cancel()
        try:
            self._waiters.remove(turn)
        except ValueError:
            pass
