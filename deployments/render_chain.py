"""One render through the stages: fetch → compose → encode, and the HTTP answer.

Each stage's response is passed straight into the next stage's call, so arrays go from
stage to stage as Ray objects without passing through the ingress; only the encoded
bytes come back here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.responses import Response
from ray.serve.handle import DeploymentHandle, DeploymentResponse

import skyrender
from skyrender.budget import ALLSKY_ORDER, BudgetedPlan, TileBudget, plan_within
from skyrender.errors import SkyRenderError
from skyrender.geometry import OutputGeometry
from skyrender.properties import HipsSurvey
from skyrender.tiles import TileId

from .admission import MIN_WORK, StageReport
from .catalogue import SurveyCatalogue
from .config import AppConfig, SurveyConfig
from .contracts import DisplaySpec, EncodedImage, FetchedTiles, RenderSpec, TileOutcome, TileRequest
from .deadline import Budget, Deadline, InvalidDeadline, Shed
from .errors import ApiError, api_error_of, is_replica_death, message_of, unwrap
from .http_cache import CachePolicy, if_none_match, strong_etag, survey_release
from .limits import check_tile_count
from .render_answer import image_response
from .shedding import AdmissionGate, Admitted, shed_from_backpressure
from .telemetry import observe_held, observe_queue_wait
from .tile_urls import tile_location
from .turns import RenderTurns

__all__ = ["RenderChain", "tile_requests", "tiles_via"]

log = logging.getLogger("ray.serve")


def tile_requests(
    config: AppConfig,
    cfg: SurveyConfig,
    survey: HipsSurvey,
    order: int,
    tiles: list[TileId],
    allsky: str | None = None,
) -> list[TileRequest]:
    """What the fetch stage is asked for: each of ``tiles`` (of ``survey`` at ``order``), or
    the one order-3 Allsky mosaic at ``allsky`` to cut them from.

    Raises
    ------
    ApiError
        400 for more tiles than ``limits.max_tiles`` (one mosaic is one fetch: never refused).
    """
    if allsky is not None:
        key = f"{cfg.name}/allsky{order}.{survey.data_format}"
        npix = tuple(t.npix for t in tiles)
        return [TileRequest(-1, key, allsky, survey.data_format, allsky_npix=npix)]
    check_tile_count(config.limits, len(tiles))
    return [
        TileRequest(t.npix, f"{cfg.name}/{t.order}/{t.npix}.{t.format}", tile_location(cfg, t), t.format)
        for t in tiles
    ]


class RenderChain:
    """Runs renders through the stage deployments and answers them as images."""

    def __init__(
        self, config: AppConfig, fetch: DeploymentHandle, compose: DeploymentHandle, encode: DeploymentHandle
    ):
        self.config = config
        self.fetch, self.compose, self.encode = fetch, compose, encode
        # A render whose tiles the shared cache holds takes them from there without the fetch
        # stage's hop (its Serve call cost more than the lookup it made for us).
        self.cache = None
        if config.cache.enabled and config.cache.ingress_lookup:
            from .tile_cache import CacheReader

            self.cache = CacheReader(
                config.cache.name,
                recent_s=config.cache.ingress_recent_s,
                recent_entries=config.cache.ingress_recent_tiles,
            )
        # Every rendered image (single or layered) is reusable this long: the configured max-age.
        self.cache_policy = CachePolicy(config.render.cache_max_age_s)
        self.gate = AdmissionGate(config.overload)
        self.turns = RenderTurns(config.overload.max_in_progress, config.overload.turn_stall_s)
        # What every ETag repeats, computed once: the rendering configuration, and each
        # survey's release (kept with the properties it digests; a reloaded survey is new).
        self._render_settings = config.render.model_dump(exclude={"num_threads"})
        self._releases: dict[tuple[str, str], tuple[object, dict]] = {}

    def etag(
        self,
        cfg: SurveyConfig,
        survey: HipsSurvey,
        geom: OutputGeometry,
        order: int,
        tiles: list[TileId],
        display: DisplaySpec,
    ) -> str:
        """Strong ETag of the image a render gives: what fixes its bytes, nothing else.

        The normalised request (output WCS and size, order, tiles, display without the
        FITS header it derives from the WCS), the survey's identity and release, the
        service version and the rendering configuration.
        """
        return strong_etag(
            "image",
            geom.wcs_keywords(),
            [geom.width, geom.height, geom.frame, order],
            [(t.order, t.npix, t.format) for t in tiles],
            {k: v for k, v in dataclasses.asdict(display).items() if k != "header"},
            self._release(cfg, survey),
            skyrender.__version__,
            self._render_settings,
        )

    def _release(self, cfg: SurveyConfig, survey: HipsSurvey) -> dict:
        """`survey_release` of ``survey``, digested once per properties object."""
        key = (cfg.name, cfg.url)
        held = self._releases.get(key)
        if held is None or held[0] is not survey.properties:
            held = (survey.properties, survey_release(cfg.name, cfg.url, survey.properties))
            self._releases[key] = held
        return held[1]

    def deadline(self, request: Request) -> Deadline:
        """The request's deadline from its headers or the configuration (400 if unreadable)."""
        try:
            scripts = request.url.path.startswith("/hips2fits")
            default = self.config.overload.hips2fits_deadline_s if scripts else None
            return self.gate.deadline(request.headers, getattr(request.state, "arrived_at", None), default)
        except InvalidDeadline as exc:
            raise ApiError(400, "invalid deadline", str(exc)) from None

    def admit(self, request: Request, width: int, height: int) -> Admitted:
        """Admit the request's render of ``width`` x ``height`` pixels, or refuse it with a 503.

        Routes call it through `start` as soon as the request is known to be valid, before any
        planning, so that a refusal costs next to nothing; `run` admits by itself otherwise. The place is
        freed when the render leaves, or by the request context when the request ends earlier.
        """
        admitted = getattr(request.state, "admitted", None)
        if isinstance(admitted, Admitted):
            return admitted
        deadline = self.deadline(request)
        try:
            arrived_at = getattr(request.state, "arrived_at", None)
            # From arrival to here, less the wait for a turn (work ahead, which the estimate counts).
            turn_waited = getattr(request.state, "turn_waited_s", 0.0)
            waited = time.time() - arrived_at - turn_waited if arrived_at is not None else None
            hold = getattr(request.state, "arrival_hold", None)
            turn_taken = getattr(request.state, "turn_taken", False)
            admitted = self.gate.admit(
                request.state.request_id, deadline, width, height, waited, hold, turn_taken
            )
        except Shed as shed:
            raise self._shed(request, shed, deadline) from None
        request.state.admitted = admitted
        request.state.release_admission = lambda: self.gate.finish(admitted)
        return admitted

    async def start(self, request: Request, width: int, height: int) -> Admitted:
        """`admit` the render, then wait for its turn among the renders in progress (`RenderTurns`).

        Routes call this where they would `admit`; `run` does by itself otherwise. A render
        let in on arrival has already waited for its turn there, before its body was read
        (`deployments.arrival`); the others wait here. A render whose deadline comes while it
        waits is dropped (503 + Retry-After). The request context gives the turn back when the
        request ends, whatever happened.
        """
        admitted = self.admit(request, width, height)
        if getattr(request.state, "turn_taken", False):
            return admitted
        deadline = admitted.budget.deadline
        waited_from = time.perf_counter()
        give_back = await self.turns.take(deadline.remaining())
        if give_back is None:
            shed = Shed("ingress", "deadline_passed", 1, admitted.decision.estimate_s, deadline.remaining())
            raise self._shed(request, shed, deadline)
        observe_queue_wait("ingress", time.perf_counter() - waited_from)
        request.state.turn_taken = True
        request.state.release_turn = give_back
        return admitted

    def _shed(self, request: Request, shed: Shed, deadline: Deadline | None) -> ApiError:
        """Count and log a dropped request; the 503 that tells the caller when to come back."""
        route = request.scope.get("route")
        endpoint = getattr(route, "path", None) or request.url.path
        record = self.gate.record_shed(request.state.request_id, endpoint, shed, deadline)
        request.state.render.update(outcome="shed", shed=record)
        error = "deadline exceeded" if shed.reason == "deadline_passed" else "overloaded"
        headers = {"Retry-After": str(shed.retry_after_s)}
        arrived_at = getattr(request.state, "arrived_at", None)
        if arrived_at is not None:  # how long the decision took after the request reached this replica
            headers["Server-Timing"] = f"decided;dur={(time.time() - arrived_at) * 1e3:.1f}"
        return ApiError(503, error, shed.as_dict(), headers=headers)

    async def plan(
        self, catalogue: SurveyCatalogue, cfg: SurveyConfig, survey: HipsSurvey, geom: OutputGeometry
    ) -> BudgetedPlan:
        """The deepest order (or the Allsky mosaic) whose tiles fit the limits; 400 if none does."""
        limits = self.config.limits
        budget = TileBudget(max_tiles=limits.max_tiles, max_bytes=limits.max_render_bytes)
        moc = catalogue.moc(cfg.name)
        planned: BudgetedPlan | None = None
        try:
            planned = await asyncio.to_thread(plan_within, geom, survey, budget, moc=moc)
            if not (planned.degraded and planned.plan.order <= ALLSKY_ORDER):
                return planned
        except SkyRenderError as exc:
            error = exc
        # Shallow enough for the Allsky mosaic, or nothing else fits: use it if the survey has one.
        if await catalogue.has_allsky(cfg, survey):
            try:
                return await asyncio.to_thread(plan_within, geom, survey, budget, moc=moc, has_allsky=True)
            except SkyRenderError as exc:
                error = exc
        if planned is not None:
            return planned
        raise ApiError(400, "field too large", str(error)) from None

    async def render_plan(
        self,
        request: Request,
        catalogue: SurveyCatalogue,
        cfg: SurveyConfig,
        survey: HipsSurvey,
        planned: BudgetedPlan,
        display: DisplaySpec,
    ) -> Response:
        """Render a `plan` (tiles, or cut from the Allsky mosaic)."""
        plan = planned.plan
        tiles = [TileId(t.order, t.npix, survey.data_format) for t in plan.tiles]
        allsky = catalogue.allsky_location(cfg, survey) if planned.allsky else None
        return await self.render(
            request, cfg, survey, plan.geometry, plan.order, tiles, display, allsky=allsky
        )

    async def render(
        self,
        request: Request,
        cfg: SurveyConfig,
        survey: HipsSurvey,
        geom: OutputGeometry,
        order: int,
        tiles: list[TileId],
        display: DisplaySpec,
        *,
        allsky: str | None = None,
    ) -> Response:
        """Render ``tiles`` (of ``survey`` at ``order``) onto ``geom`` and encode it per ``display``.

        ``allsky``: the location of the order-3 Allsky mosaic to cut ``tiles`` from.
        """
        # The ETag is known before any work: a caller holding the image gets its 304 at once.
        etag = self.etag(cfg, survey, geom, order, tiles, display)
        cache_headers = {"ETag": etag, "Cache-Control": self.cache_policy.cache_control()}
        # GET/HEAD only: a POST render is not a representation of its URL (RFC 9110 §13.1.2).
        conditional = request.method in ("GET", "HEAD")
        if conditional and if_none_match(request.headers.get("if-none-match"), etag):
            request.state.render.update(survey=cfg.name, outcome="not modified")
            return Response(status_code=304, headers=cache_headers)
        requests = tile_requests(self.config, cfg, survey, order, tiles, allsky)
        spec = RenderSpec(
            geometry=geom,
            survey_frame=survey.frame,
            order=order,
            tile_width=None if allsky is not None else survey.tile_width,
        )
        if display.format == "fits":
            header = geom.header()
            header["HIPS_ORD"] = (order, "HiPS order the image was rendered from")
            display = dataclasses.replace(display, header=header)
        if survey.pixel_cut and display.min_cut is None and display.max_cut is None:
            display = dataclasses.replace(display, survey_cut=survey.pixel_cut)
        state = request.state.render
        state.update(
            survey=cfg.name,
            order=order,
            allsky=allsky is not None,
            tiles_requested=len(tiles),
            width=geom.width,
            height=geom.height,
        )
        chain_start, dispatched_at = time.perf_counter(), time.time()
        result = await self.run(
            request,
            geom.width,
            geom.height,
            lambda budget, lost: self._chain(requests, spec, display, lost, budget, state),
        )
        returned_at = time.time()
        return image_response(
            state,
            geom,
            result,
            time.perf_counter() - chain_start,
            {**cache_headers, "X-HiPS-Order": str(order)},
            _handoffs(dispatched_at, result.stamps, returned_at),
        )

    async def run(
        self,
        request: Request,
        width: int,
        height: int,
        chain: Callable[[Budget, list[str]], Awaitable[EncodedImage]],
    ) -> EncodedImage:
        """Run ``chain`` for the request admitted for ``width`` x ``height`` pixels, within its deadline.

        ``chain(budget, lost)`` sends the render through the stages with ``budget`` (the
        deadline and size every stage checks) and notes in ``lost`` the replicas it lost on
        the way. The admission's place is freed whatever happens; a render dropped for its
        deadline or a full queue is a 503 with Retry-After, any other failure its `ApiError`.
        """
        state = request.state.render
        admitted = await self.start(request, width, height)
        deadline = admitted.budget.deadline
        estimate = admitted.decision.estimate_s
        state.update(deadline_s=round(deadline.budget_s, 3), estimate_s=round(estimate, 3))
        lost: list[str] = []  # replica deaths / lost tiles met by this render
        # Admitted to finish by the deadline, it may still finish a little later when the deadline
        # is ours (the caller's own timeout comes later): the stages and this wait use that.
        work_deadline = deadline.extended(self.config.overload.answer_grace_s)
        # The first queue starts now.
        budget = dataclasses.replace(admitted.budget, deadline=work_deadline, sent_at=time.time())
        try:
            result = await asyncio.wait_for(chain(budget, lost), timeout=max(work_deadline.remaining(), 0.0))
        except TimeoutError:
            self.gate.finish(admitted, overran=True)
            state["outcome"] = "timeout"
            if lost:  # the retry after a lost worker ran out of time: the service is switching over
                raise ApiError(
                    503,
                    "service unavailable",
                    f"a worker was lost during the render; retry ({lost[0]})",
                    headers={"Retry-After": "1"},
                ) from None
            # Every stage checks the deadline before it starts and the fetch stage bounds its
            # upstream waits by it: what is still running now is our own compute, overrun.
            shed = Shed("chain", "deadline_passed", 1, admitted.decision.estimate_s, deadline.remaining())
            raise self._shed(request, shed, deadline) from None
        except Exception as exc:
            inner = unwrap(exc)
            self.gate.finish(admitted, overran=isinstance(inner, Shed))
            if isinstance(inner, Shed):
                raise self._shed(request, inner, deadline) from None
            refused = shed_from_backpressure(inner, admitted.decision.estimate_s, deadline.remaining())
            if refused is not None:
                raise self._shed(request, refused, deadline) from None
            error = api_error_of(exc)
            state.update(outcome=error.error, cause=str(error.detail))
            log.warning("render %s failed: %s: %s", request.state.request_id, error.error, error.detail)
            raise error from None
        except BaseException:  # cancelled (the client went away): free its place
            self.gate.finish(admitted)
            raise
        self.gate.finish(admitted, list(result.reports), completed=True)
        return result

    async def _chain(
        self,
        requests: list[TileRequest],
        spec: RenderSpec,
        display: DisplaySpec,
        lost: list[str],
        budget: Budget,
        state: dict[str, object],
    ) -> EncodedImage:
        """fetch → compose → encode, passing each response on; once more if a replica died
        (or tiles were lost with a node), noting it in ``lost``.

        The budget (deadline and size) goes with the request to every stage, which drops it
        rather than compute it too late. `tiles` may answer for the fetch stage.
        """
        for attempt in (1, 2):
            fetched = await self.tiles(requests, budget, retry=attempt > 1)
            state["tiles_via"] = tiles_via(fetched)
            composed = self.compose.render.remote(spec, fetched, budget)
            try:
                return await self.encode.encode.remote(display, composed, budget)
            except Exception as exc:
                if attempt == 2 or not is_replica_death(exc):
                    raise
                lost.append(message_of(unwrap(exc)))
                log.warning("a replica died during a render; retrying once: %s", message_of(unwrap(exc)))
        raise AssertionError("unreachable")

    async def tiles(
        self, requests: list[TileRequest], budget: Budget, *, retry: bool = False
    ) -> FetchedTiles | DeploymentResponse:
        """A render's tiles for compose: read here when the shared cache holds every one, else
        the fetch stage's response (it fetches what is missing, once for every render wanting it).

        A ``retry`` (after a lost replica or lost tiles) always goes through the fetch stage, and
        the references the ingress kept are dropped (they may be the lost ones).
        """
        if retry and self.cache is not None:
            self.cache.forget()
        held = None if retry else await self._held(requests, budget)
        return held if held is not None else self.fetch.get_tiles.remote(requests, budget)

    async def _held(self, requests: list[TileRequest], budget: Budget) -> FetchedTiles | None:
        """`FetchedTiles` of the cache's references when it holds all of ``requests``, else None.

        Its report gives the admission model this render's time for its tiles: otherwise only
        renders that missed the cache (upstream fetches, far slower) would report the fetch
        stage's time, and the model would expect every render to take that long.
        """
        if self.cache is None or not requests or any(r.allsky_npix for r in requests):
            return None  # an Allsky mosaic is cut into tiles by the fetch stage
        start, started_at = time.perf_counter(), time.time()
        keys = [r.key for r in requests]
        refs, via = self.cache.kept(keys), "kept"
        if refs is None:
            refs, via = await self.cache.held(keys), "cache"
        if refs is None:
            return None
        seconds = time.perf_counter() - start
        observe_held(requests, seconds)
        finished_at = time.time()
        # No service time: the lookup is the cache actor's, not a fetch replica's capacity.
        report = StageReport("fetch", "ingress", 0.0, seconds / max(budget.work, MIN_WORK), 0.0, seconds)
        return FetchedTiles(
            tiles={r.npix: ref for r, ref in zip(requests, refs, strict=True)},
            outcomes={TileOutcome.HIT: len(refs)},
            seconds=seconds,
            stamps=(started_at, finished_at),
            finished_at=finished_at,
            reports=(report,),
            via=via,
        )


def tiles_via(fetched: FetchedTiles | DeploymentResponse) -> str:
    """Who read a render's tiles (`RenderChain.tiles`), for the log line: "kept", "cache" or "fetch"."""
    return fetched.via if isinstance(fetched, FetchedTiles) else "fetch"


def _handoffs(dispatched_at: float, stamps: tuple[float, ...], returned_at: float) -> list[tuple[str, float]]:
    """Each hand-off's time [s]: ingress → fetch, fetch → compose, compose → encode, encode → ingress.

    ``stamps`` are the stages' wall-clock (start, end) pairs; a hand-off is the gap between
    one's end and the next one's start (Serve's routing, the task hop, the arguments'
    transfer and deserialisation).
    """
    if len(stamps) != 6:
        return []
    points = (dispatched_at, *stamps, returned_at)
    names = ("hop-fetch", "hop-compose", "hop-encode", "hop-back")
    return [(name, max(0.0, points[2 * i + 1] - points[2 * i])) for i, name in enumerate(names)]
