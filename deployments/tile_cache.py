"""The shared tile cache: decoded tiles in Ray's object store, indexed by one actor.

The actor ``ray.put``s each tile itself, so the object outlives the replica that fetched
it (an object dies with its owner), and any replica on any node reads it zero-copy from
the object store. LRU by bytes; identical tiles requested while one is being fetched are
coalesced into that one fetch. A dead actor degrades callers to fetching directly.

The actor lives as long as the application: it is owned by the fetch replica that
created it (not detached), so ``serve shutdown`` or deleting the application leaves
none behind, and each replica that connects sets its ``max_bytes``, so a redeploy with a
new size takes effect.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import ray

from .deadline import Deadline

__all__ = [
    "CacheClient",
    "CacheReader",
    "CacheUnavailable",
    "TileCache",
]

log = logging.getLogger("ray.serve")

#: The share of a request's time left that one call to the cache actor may take: the rest is
#: for fetching the tiles directly when the actor does not answer (its node lost, restarting).
_CACHE_SHARE = 0.5
#: A cache actor that has not answered a call in this long [s] is taken for gone (its node
#: lost, restarting): callers fetch directly for ``retry_after_s``. It answers in milliseconds.
_DOWN_AFTER_S = 1.0


# No task events: like Serve's own actors, the cache answers several calls per render and the
# GCS need not record each one.
@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=1000, enable_task_events=False)
class TileCache:
    """LRU (by bytes) index of tiles held in the object store."""

    def __init__(self, max_bytes: int, lease_timeout_s: float = 30.0):
        self.max_bytes = int(max_bytes)
        self.lease_timeout_s = lease_timeout_s
        self._entries: OrderedDict[str, tuple[list[ray.ObjectRef], int]] = OrderedDict()
        self._pending: dict[str, tuple[float, asyncio.Event]] = {}
        self._failures: dict[str, str] = {}
        self.bytes_held = 0
        # failed: leases released without a tile (a failed fetch, or one handed back unused)
        self.counters = {"hits": 0, "misses": 0, "evictions": 0, "coalesced": 0, "puts": 0, "failed": 0}

    async def lease(self, key: str) -> tuple[str, list[ray.ObjectRef] | None]:
        """("hit", [ref]) | ("fetch", None): you fetch it | ("wait", None): someone else is."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.counters["hits"] += 1
            return "hit", entry[0]
        pending = self._pending.get(key)
        if pending is not None and time.monotonic() - pending[0] < self.lease_timeout_s:
            self.counters["coalesced"] += 1
            return "wait", None
        self._pending[key] = (time.monotonic(), asyncio.Event())
        self.counters["misses"] += 1
        return "fetch", None

    async def lease_many(self, keys: list[str]) -> list[tuple[str, list[ray.ObjectRef] | None]]:
        """`lease` of each key, in one call: a render asks for all its tiles at once."""
        return [await self.lease(key) for key in keys]

    async def held_many(self, keys: list[str]) -> list[list[ray.ObjectRef]] | None:
        """Every key's [ref] when the cache holds them all (counted as hits), else None (nothing
        counted, no lease taken: the caller asks the fetch stage, which leases them)."""
        entries = [self._entries.get(key) for key in keys]
        if any(entry is None for entry in entries):
            return None
        for key in keys:
            self._entries.move_to_end(key)
        self.counters["hits"] += len(keys)
        return [entry[0] for entry in entries]  # type: ignore[index]

    async def put(self, key: str, array: np.ndarray) -> list[ray.ObjectRef]:
        """Store a decoded tile (the actor owns the object) and wake the waiters."""
        ref = ray.put(array)
        nbytes = int(array.nbytes)
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes_held -= old[1]
        if nbytes <= self.max_bytes:
            self._entries[key] = ([ref], nbytes)
            self.bytes_held += nbytes
            self.counters["puts"] += 1
            self._evict()
        self._failures.pop(key, None)
        self._release(key)
        return [ref]

    async def fail(self, key: str, reason: str) -> None:
        """The fetch failed: waiters get the reason; nothing is cached."""
        self.counters["failed"] += 1
        self._failures[key] = reason
        self._release(key)

    def _release(self, key: str) -> None:
        pending = self._pending.pop(key, None)
        if pending is not None:
            pending[1].set()

    async def wait(self, key: str, timeout_s: float) -> tuple[str, Any]:
        """("hit", [ref]) once the leaseholder puts it, ("failed", reason), or ("timeout", None)."""
        pending = self._pending.get(key)
        if pending is not None:
            try:
                await asyncio.wait_for(pending[1].wait(), timeout=timeout_s)
            except TimeoutError:
                return "timeout", None
        entry = self._entries.get(key)
        if entry is not None:
            return "hit", entry[0]
        if key in self._failures:
            return "failed", self._failures[key]
        return "timeout", None

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "entries": len(self._entries),
            "bytes_held": self.bytes_held,
            "max_bytes": self.max_bytes,
            "in_flight": len(self._pending),
            "node_id": ray.get_runtime_context().get_node_id(),
        }

    def clear(self) -> None:
        self._entries.clear()
        self.bytes_held = 0

    def resize(self, max_bytes: int) -> None:
        """Set the byte budget (the deployed configuration's), evicting down to it."""
        self.max_bytes = int(max_bytes)
        self._evict()

    def _evict(self) -> None:
        """Drop least recently used tiles until the bytes held fit the budget."""
        while self.bytes_held > self.max_bytes and self._entries:
            _, (_, size) = self._entries.popitem(last=False)
            self.bytes_held -= size
            self.counters["evictions"] += 1


class CacheUnavailable(Exception):
    """The cache actor cannot be reached right now."""


async def _submit(method: Any, args: tuple) -> Any:
    return await method.remote(*args)


def _unowned(call: Awaitable[Any]) -> Awaitable[Any]:
    """Run an actor call as its own task, outside the current request's Ray task, and shield it.

    Serve cancels a request whose caller gave up (a viewer aborts stale pans) with Ray's
    recursive cancel, which also cancels every actor call the request's task made: a tile's
    ``put`` or ``fail`` cancelled in the cache actor left its lease pending, so each request
    for that tile waited out the lease (30 s, a 504), and the cancelled call's
    ``TaskCancelledError`` made this client take the actor for unreachable and drop it (the
    cache with it). Ray finds the parent of a call from the async task's context variable:
    cleared here, the call belongs to no request and runs to its end.
    """
    context = contextvars.copy_context()
    task_id = getattr(getattr(ray, "_raylet", None), "async_task_id", None)
    if task_id is not None:
        context.run(task_id.set, None)
    task = asyncio.get_running_loop().create_task(call, context=context)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved if we stop waiting
    return asyncio.shield(task)


class CacheReader:
    """Used by the ingress: a render's tiles when the cache holds them all, in one actor call.

    Never starts the cache actor (a fetch replica owns it) and never leases: a render with a
    tile not held goes to the fetch stage, which fetches it once for every render wanting it.
    Any trouble with the actor (not there yet, dead, slow) is a None: the fetch stage copes.

    The references the actor gave are kept for ``recent_s`` seconds (at most ``recent_entries``
    tiles): a render whose tiles were all looked up that recently (panning, repeated
    snapshots) takes them from `kept` without the actor call (~2-3 ms and ~1.5 ms of the
    actor's CPU). While kept, a tile the cache evicts stays in the object store a little
    longer, as for a render holding it: until the first lookup after ``recent_s``, which lets
    go of the expired ones; `forget` drops them all (a render found tiles lost).
    """

    def __init__(
        self,
        name: str,
        *,
        namespace: str = "skyrender",
        call_timeout_s: float = 0.5,  # the lookup takes ~1-3 ms; past this the fetch stage is quicker
        retry_after_s: float = 2.0,
        recent_s: float = 0.0,
        recent_entries: int = 64,
    ):
        self.name, self.namespace = name, namespace
        self.call_timeout_s, self.retry_after_s = call_timeout_s, retry_after_s
        self.recent_s, self.recent_entries = recent_s, recent_entries
        self._actor = None
        self._down_until = 0.0
        self._recent: OrderedDict[str, tuple[ray.ObjectRef, float]] = OrderedDict()  # key → (ref, kept until)
        self.reused = 0  # tiles taken from kept references

    async def held(self, keys: list[str]) -> list[ray.ObjectRef] | None:
        """The ObjectRef of each of ``keys`` when the cache actor holds them all, else None;
        kept for `kept` (``recent_s``)."""
        if self._actor is None:
            if time.monotonic() < self._down_until:
                return None
            try:  # a GCS lookup: off the event loop
                self._actor = await asyncio.to_thread(ray.get_actor, self.name, namespace=self.namespace)
            except Exception:  # not started yet (no fetch replica has connected), or GCS away
                self._down_until = time.monotonic() + self.retry_after_s
                return None
        try:
            call = asyncio.wait_for(_submit(self._actor.held_many, (keys,)), timeout=self.call_timeout_s)
            held = await _unowned(call)
        except Exception as exc:  # RayActorError, timeouts: look the actor up again later
            log.info("tile cache lookup failed (%s): renders use the fetch stage", type(exc).__name__)
            self._actor = None
            self._down_until = time.monotonic() + self.retry_after_s
            self.forget()
            return None
        if held is None:
            return None
        refs = [r[0] for r in held]
        self._keep(keys, refs)
        return refs

    def forget(self) -> None:
        """Drop every kept reference: the next render asks the actor again."""
        self._recent.clear()

    def kept(self, keys: list[str]) -> list[ray.ObjectRef] | None:
        """The kept references of all ``keys`` when every one was looked up within ``recent_s``, else None."""
        self._drop_expired()
        if not self._recent:
            return None
        refs = []
        for key in keys:
            kept = self._recent.get(key)
            if kept is None:
                return None
            refs.append(kept[0])
        self.reused += len(refs)
        return refs

    def _keep(self, keys: list[str], refs: list[ray.ObjectRef]) -> None:
        if self.recent_s <= 0:
            return
        until = time.monotonic() + self.recent_s
        for key, ref in zip(keys, refs, strict=True):
            self._recent.pop(key, None)
            self._recent[key] = (ref, until)
        while len(self._recent) > self.recent_entries:
            self._recent.popitem(last=False)

    def _drop_expired(self) -> None:
        """Let go of the references kept longer than ``recent_s``: oldest first, as `_keep`
        appends each with the latest time."""
        now = time.monotonic()
        while self._recent and next(iter(self._recent.values()))[1] < now:
            self._recent.popitem(last=False)


class CacheClient:
    """Used by the fetch replicas: get a tile from the cache, or fetch it exactly once."""

    def __init__(
        self,
        name: str,
        *,
        max_bytes: int,
        namespace: str = "skyrender",
        call_timeout_s: float = 2.0,  # the actor answers in ms; past this, its node is likely gone
        wait_timeout_s: float = 30.0,
        retry_after_s: float = 2.0,
        resources: dict[str, float] | None = None,
    ):
        self.name, self.namespace, self.max_bytes = name, namespace, max_bytes
        # Custom resources pin the actor (and so the objects it owns) to one worker group; a
        # restart after its node is lost asks for the same ones.
        self.resources = dict(resources or {})
        self.call_timeout_s, self.wait_timeout_s, self.retry_after_s = (
            call_timeout_s,
            wait_timeout_s,
            retry_after_s,
        )
        self._actor = None
        self._down_until = 0.0
        self._giving_back: set[asyncio.Task] = set()  # the loop holds its tasks only weakly

    def _handle(self):
        if self._actor is None:
            if time.monotonic() < self._down_until:
                raise CacheUnavailable("cache actor recently unreachable")
            try:
                # Not detached: owned by this replica, so it goes with the application.
                self._actor = TileCache.options(
                    name=self.name,
                    namespace=self.namespace,
                    get_if_exists=True,
                    resources=self.resources,
                ).remote(self.max_bytes)
                # An existing actor may come from the previous deployment: give it our size.
                self._actor.resize.remote(self.max_bytes)
            except Exception as exc:
                self._down_until = time.monotonic() + self.retry_after_s
                raise CacheUnavailable(str(exc)) from exc
        return self._actor

    def bound(self, deadline: Deadline | None) -> float:
        """How long one actor call may take [s]: ``call_timeout_s``, or half the time left before
        ``deadline`` when that is less, so that a render whose cache actor does not answer (its
        node lost, the actor restarting) still has time to fetch its tiles directly."""
        if deadline is None:
            return self.call_timeout_s
        return max(0.0, min(self.call_timeout_s, deadline.remaining() * _CACHE_SHARE))

    async def _call(
        self,
        method: str,
        *args,
        timeout_s: float | None = None,
        on_late: Callable[[asyncio.Future], None] | None = None,
        actor: Any = None,
    ):
        """The actor's answer to ``method(*args)``, or `CacheUnavailable`.

        Waited for at most ``timeout_s`` (default ``call_timeout_s``) [s]. The call goes on in
        the actor whatever we do (a lease is granted all the same): ``on_late`` gets its answer
        when we stopped waiting (timed out or cancelled). An actor that did not answer within
        `_DOWN_AFTER_S`, or failed, is left alone for ``retry_after_s``; a shorter wait (a
        request near its deadline) says nothing about the actor. ``actor``: this handle rather
        than the client's current one.
        """
        timeout_s = self.call_timeout_s if timeout_s is None else timeout_s
        try:
            actor = actor if actor is not None else self._handle()
            call = asyncio.ensure_future(_unowned(_submit(getattr(actor, method), args)))
            call.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved
        except CacheUnavailable:
            raise
        except Exception as exc:
            self._drop()
            raise CacheUnavailable(f"{type(exc).__name__}: {exc}") from exc
        try:
            done, _ = await asyncio.wait({call}, timeout=timeout_s)
        except asyncio.CancelledError:
            if on_late is not None:
                call.add_done_callback(on_late)
            raise
        if not done:
            if on_late is not None:
                call.add_done_callback(on_late)
            if timeout_s >= _DOWN_AFTER_S:
                self._drop()
            raise CacheUnavailable(f"no answer from the cache actor in {timeout_s:.2f} s")
        exc = call.exception()
        if exc is not None:  # RayActorError: look the actor up again later
            self._drop()
            raise CacheUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return call.result()

    def _drop(self) -> None:
        self._actor = None
        self._down_until = time.monotonic() + self.retry_after_s

    async def lease_many(
        self, keys: list[str], deadline: Deadline | None = None
    ) -> list[tuple[str, Any]] | None:
        """The lease of every key in one actor call (see `get_or_fetch`); None when the actor
        cannot be reached within `bound` (each tile is then fetched directly)."""
        try:
            return await self._leases(list(keys), self.bound(deadline))
        except CacheUnavailable as exc:
            log.warning("tile cache unavailable (%s): fetching %d tiles directly", exc, len(keys))
            return None

    async def _leases(self, keys: list[str], timeout_s: float | None = None) -> list[tuple[str, Any]]:
        """The actor's leases of ``keys``; those it grants after we stopped waiting are handed back."""

        # Neither our cancel (a viewer aborts stale pans) nor our timeout cancels the actor's
        # call: it grants the leases all the same, and nobody would fetch those tiles, so every
        # other request for them would wait out the lease (30 s). Its "fetch" leases go back.
        # Handed back to the actor that granted them, even when this client has dropped it.
        actor = self._handle()

        def late(done: asyncio.Future) -> None:
            if not done.cancelled() and done.exception() is None:
                reason = "the request leasing it stopped waiting"
                self.give_back_later(keys, done.result(), reason, actor)

        return await self._call("lease_many", keys, timeout_s=timeout_s, on_late=late, actor=actor)

    def give_back_later(self, keys: list[str], leases: list[Any], reason: str, actor: Any = None) -> None:
        """`give_back`, in the background, each "fetch" lease in ``leases`` (those of ``keys``);
        never raises."""
        for key, lease in zip(keys, leases, strict=True):
            if lease is not None and lease[0] == "fetch":
                task = asyncio.ensure_future(self.give_back(key, reason, actor))
                self._giving_back.add(task)
                task.add_done_callback(self._giving_back.discard)

    async def give_back(self, key: str, reason: str, actor: Any = None) -> None:
        """Hand back a lease whose fetch never began (its request was cancelled): the waiters
        fetch for themselves at once instead of waiting out the lease. ``actor``: the one that
        granted it, when not the client's current one."""
        try:
            await self._call("fail", key, reason, actor=actor)
        except CacheUnavailable:
            pass

    async def get_or_fetch(
        self,
        key: str,
        fetch: Callable[[], Awaitable[np.ndarray]],
        lease: tuple[str, Any] | None = None,
        deadline: Deadline | None = None,
    ) -> tuple[ray.ObjectRef | np.ndarray, str]:
        """(tile, how): how is "hit", "fetched", "coalesced" or "nocache" (actor down).

        The tile is an ObjectRef into the object store whenever the cache has it: the
        caller passes it on unresolved, and the consumer (compose, on any node) reads it
        from the object store. Only "nocache" returns the array itself. ``lease``: the
        key's lease from `lease_many`, when the caller asked for several at once (one
        actor call per render rather than one per tile). ``deadline``: the request's; each
        actor call takes at most `bound` of it.
        """
        if lease is None:
            try:
                (lease,) = await self._leases([key], self.bound(deadline))
            except CacheUnavailable as exc:
                log.warning("tile cache unavailable (%s): fetching %s directly", exc, key)
                return await fetch(), "nocache"
        state, refs = lease
        if state == "hit":
            return refs[0], "hit"
        if state == "wait":
            try:
                result, value = await asyncio.wait_for(
                    self._call_wait(key), timeout=self.wait_timeout_s + self.call_timeout_s
                )
            except (CacheUnavailable, TimeoutError):
                return await fetch(), "nocache"
            if result == "hit":
                return value[0], "coalesced"
            # The leaseholder failed (or vanished): fetch ourselves, so the error we raise,
            # if any, is the real one (a 404 stays "uncovered", a refusal stays a 503).
            return await fetch(), "nocache"
        # We hold the lease: fetch, then publish (or report the failure to waiters).
        try:
            array = await fetch()
        except BaseException as exc:
            try:
                await self._call("fail", key, f"{type(exc).__name__}: {exc}", timeout_s=self.bound(deadline))
            except CacheUnavailable:
                pass
            raise
        try:
            refs = await self._call("put", key, array, timeout_s=self.bound(deadline))
        except CacheUnavailable:
            return array, "nocache"
        return refs[0], "fetched"

    async def _call_wait(self, key: str):
        actor = self._handle()
        try:
            return await _unowned(_submit(actor.wait, (key, self.wait_timeout_s)))
        except Exception as exc:
            self._actor = None
            raise CacheUnavailable(str(exc)) from exc

    async def stats(self) -> dict[str, Any]:
        try:
            return await self._call("stats")
        except CacheUnavailable as exc:
            return {"available": False, "detail": str(exc)}
