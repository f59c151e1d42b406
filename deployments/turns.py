"""Render turns: how many admitted renders an ingress replica works on at once.

An ingress replica runs one event loop, and each admitted render costs it ~12 ms of CPU in
small pieces (the body, planning, the handle calls to the stages, the answer). A loop
iteration runs one piece of every render in progress before it reads the next request, so
when a burst let in 70 renders at once (96 requests at a burst's start, 2 cores), every
request behind them waited ~1 s to be read, and those refused waited as long for their 503.

With at most ``limit`` renders in progress, the iterations stay short and every newcomer is
read, and admitted or refused, within milliseconds. The others wait their turn in arrival
order at no cost to the loop. Admission already let them in: they would have waited as
long in compose's queue, and the stages stay busy as long as ``limit`` covers what they
work on at once. Renders let in on arrival wait before their bodies are read
(`deployments.arrival`): until their turn they cost the loop nothing at all, and the
refusals arriving behind them in a burst are read sooner.

A render that holds its turn longer than ``stall_s`` is waiting on something other than
our stages' CPU (cold tiles from a slow upstream, another render's fetch of its tiles): it
no longer counts against the limit, so that renders of warm tiles do not queue behind it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from itertools import count

__all__ = ["RenderTurns"]


class RenderTurns:
    """At most ``limit`` holders moving at once; the others wait in arrival order (FIFO).

    Parameters
    ----------
    limit : int
        Renders in progress at once; 0 means no limit (every `take` succeeds at once).
    stall_s : float
        A holder older than this [s] no longer counts against ``limit``.
    """

    def __init__(self, limit: int, stall_s: float = 1.0) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        if stall_s <= 0:
            raise ValueError(f"stall_s must be > 0, got {stall_s}")
        self.limit = limit
        self.stall_s = stall_s
        self._holders: dict[int, float] = {}  # turn id -> when it was taken (insertion = age order)
        self._ids = count()
        self._waiters: deque[asyncio.Future[int]] = deque()
        self._wake: asyncio.TimerHandle | None = None

    @property
    def in_progress(self) -> int:
        """Turns held now, stalled ones included."""
        return len(self._holders)

    @property
    def waiting(self) -> int:
        """Renders waiting for a turn now."""
        return sum(1 for w in self._waiters if not w.done())

    def moving(self) -> int:
        """Turns held for less than ``stall_s``: those that count against the limit."""
        now = time.monotonic()
        return sum(1 for t in self._holders.values() if now - t < self.stall_s)

    async def take(self, timeout_s: float) -> Callable[[], None] | None:
        """Wait for a turn, at most ``timeout_s`` seconds [s].

        Returns the function that gives the turn back (call it once, whatever happens to the
        render), or None if no turn came in time.
        """
        if self._free() and not self.waiting:
            turn = self._new_turn()
            return lambda: self._give_back(turn)
        if timeout_s <= 0:
            return None
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._arm()
        try:
            async with asyncio.timeout(timeout_s):
                turn = await waiter
        except TimeoutError:
            self._forget(waiter)
            return None
        except asyncio.CancelledError:
            self._forget(waiter)
            raise
        return lambda: self._give_back(turn)

    def _free(self) -> bool:
        return self.limit == 0 or self.moving() < self.limit

    def _new_turn(self) -> int:
        turn = next(self._ids)
        self._holders[turn] = time.monotonic()
        return turn

    def _give_back(self, turn: int) -> None:
        if self._holders.pop(turn, None) is not None:
            self._hand_over()

    def _hand_over(self) -> None:
        """Give free turns to the longest waiters; if some still wait, look again when the
        oldest moving holder stalls."""
        while self._waiters and self._free():
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(self._new_turn())
        self._arm()

    def _arm(self) -> None:
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        if not self.waiting or self.limit == 0:
            return
        now = time.monotonic()
        moving = [t for t in self._holders.values() if now - t < self.stall_s]
        if moving:
            delay = min(moving) + self.stall_s - now
            self._wake = asyncio.get_running_loop().call_later(max(delay, 0.0), self._hand_over)

    def _forget(self, waiter: asyncio.Future[int]) -> None:
        """A waiter left (deadline or cancel): a turn handed to it at that moment goes back."""
        if waiter.done() and not waiter.cancelled():
            self._give_back(waiter.result())
            return
        waiter.cancel()
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass
