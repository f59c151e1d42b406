"""HTTP ingress: the contract NestJS calls (FastAPI app served by a Ray Serve deployment).

The ingress validates, plans (geometry, order, tile list: cheap) and then chains the
worker stages by passing one stage's response straight into the next, so arrays go
fetch → compose → encode without passing through here; only the encoded bytes return.
"""

import asyncio
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

import skyrender
from skyrender.compose import field_of_tiles, parse_tile_list
from skyrender.errors import InvalidWCSError, SkyRenderError
from skyrender.geometry import OutputGeometry, make_geometry
from skyrender.properties import HipsSurvey, load_survey
from skyrender.render import plan_render
from skyrender.tiles import TileId, parse_tile_url, tile_path

from .config import AppConfig, SurveyConfig
from .disk_cache import disk_free_bytes
from .hips2fits import Hips2FitsError, parse_query
from .models import (
    ErrorBody,
    ManifestRequest,
    ManifestResponse,
    PreviewRequest,
    RenderTilesRequest,
    SnapshotRequest,
    WcsValidateRequest,
    WcsValidateResponse,
)
from .telemetry import log_request, observe_request

log = logging.getLogger("ray.serve")

IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}, "image/jpeg": {}}, "description": "the rendered image; WCS in X-WCS"},
    400: {"model": ErrorBody, "description": "invalid input"},
    403: {"model": ErrorBody, "description": "tile URL outside the configured survey roots"},
    404: {"model": ErrorBody, "description": "unknown survey"},
    502: {"model": ErrorBody, "description": "upstream returned errors or unusable tiles"},
    503: {"model": ErrorBody, "description": "upstream unavailable or service overloaded"},
    504: {"model": ErrorBody, "description": "upstream too slow"},
}

HIPS2FITS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/fits": {}, "image/png": {}, "image/jpeg": {}},
        "description": "the cutout",
    },
    400: {"description": "bad query: JSON {title, description}"},
    404: {"description": "unknown HiPS: JSON {title, description}"},
    502: {"description": "upstream errors: JSON {title, description}"},
    503: {"description": "upstream unavailable: JSON {title, description}"},
    504: {"description": "upstream too slow: JSON {title, description}"},
}

app = FastAPI(
    title="skyrender",
    version=skyrender.__version__,
    description="Rendering tier of the VLASS sky portal: HiPS tiles to PNG/JPEG previews and snapshots.",
)


class ApiError(Exception):
    """An error with its HTTP status, rendered as ``{error, detail}``."""

    def __init__(self, status: int, error: str, detail: Any = None):
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail


def _status_of(exc: BaseException) -> ApiError:
    """Map core and upstream exceptions (possibly wrapped by Ray) to an HTTP error."""
    from . import upstream

    mapping: list[tuple[type, int, str]] = [
        (upstream.URLNotAllowed, 403, "tile URL not allowed"),
        (upstream.NoUsableTiles, 502, "no usable tiles"),
        (upstream.UpstreamUnavailable, 503, "upstream unavailable"),
        (upstream.UpstreamTimeout, 504, "upstream timeout"),
        (upstream.UpstreamHTTPError, 502, "upstream error"),
        (upstream.TileTooLarge, 502, "upstream tile too large"),
        (InvalidWCSError, 400, "invalid WCS"),
        (SkyRenderError, 400, "invalid request"),
    ]
    for cls, status, error in mapping:
        if isinstance(exc, cls):
            return ApiError(status, error, _message(exc))
    if _is_replica_death(exc):
        return ApiError(503, "service unavailable", "a worker replica died; retry")
    raise exc


def _is_replica_death(exc: BaseException) -> bool:
    """A stage's replica died under the request (killed, OOM, node lost): worth one retry."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    # Serve re-raises a dead upstream stage's error as a RayServeException whose
    # ``__cause__`` holds the ActorDiedError: look down the whole chain.
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (ActorDiedError, ActorUnavailableError, RayActorError)):
            return True
        seen.add(id(current))
        inner = getattr(current, "cause", None)
        current = inner if isinstance(inner, BaseException) else current.__cause__
    return False


def _message(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    text = str(cause if isinstance(cause, BaseException) else exc)
    # Ray's wrapped errors carry a traceback; the last line is the message.
    return text.strip().splitlines()[-1] if text.strip() else type(exc).__name__


#: Request-body and header-count limits, set from the configuration when the ingress starts.
_MAX_BODY_BYTES = [1024 * 1024]
_MAX_REQUEST_HEADERS = [100]


class _BodyLimit:
    """Refuse a request body over the limit while it streams in (413).

    The Content-Length check in `_request_context` answers early; this one also holds
    for chunked bodies, which carry no length. The error is an HTTPException raised
    from ``receive``, so FastAPI's body reader passes it on to the exception handlers.
    """

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, received = _MAX_BODY_BYTES[0], 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise StarletteHTTPException(413, f"limit {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


app.add_middleware(_BodyLimit)


@app.middleware("http")
async def _request_context(request: Request, call_next):
    """Request id (from NestJS's X-Request-ID or new), body limit, one JSON log line, metrics."""
    # Serve's proxy already takes X-Request-ID (or makes one) and echoes it in the response.
    rid = (request.headers.get("x-request-id") or _serve_request_id() or uuid.uuid4().hex)[:128]
    request.state.request_id = rid
    request.state.render = {}
    start = time.perf_counter()
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > _MAX_BODY_BYTES[0]):
        response: Response = _error_response(request.url.path, 413, f"limit {_MAX_BODY_BYTES[0]} bytes")
    elif len(request.headers) > _MAX_REQUEST_HEADERS[0]:
        count, limit = len(request.headers), _MAX_REQUEST_HEADERS[0]
        response = _error_response(request.url.path, 431, f"{count} header fields; limit {limit}")
    else:
        try:
            response = await call_next(request)
        except Exception as exc:  # a bug: log it with the request id, answer 500 as JSON
            log.exception("request %s failed", rid)
            response = JSONResponse(
                status_code=500, content={"error": "internal error", "detail": type(exc).__name__}
            )
    seconds = time.perf_counter() - start
    # The time spent in this replica, beside the stages' own entries (all in ms).
    timing = response.headers.get("server-timing")
    app_timing = f"app;dur={seconds * 1e3:.1f}"
    response.headers["Server-Timing"] = f"{timing}, {app_timing}" if timing else app_timing
    route = request.scope.get("route")
    endpoint = getattr(route, "path", None) or "unmatched"
    observe_request(endpoint, response.status_code, seconds)
    log_request(
        {
            "request_id": rid,
            "method": request.method,
            "endpoint": endpoint,
            "status": response.status_code,
            "duration_ms": round(seconds * 1e3, 2),
            **request.state.render,
        }
    )
    return response


def _serve_request_id() -> str | None:
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or None
    except Exception:
        return None


@app.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(status_code=exc.status, content={"error": exc.error, "detail": exc.detail})


#: Names for the errors Starlette raises itself; others take the HTTP reason phrase.
_HTTP_ERRORS = {413: "request body too large", 431: "too many header fields"}


def _error_response(
    path: str, status: int, detail: Any, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """``{error, detail}``, or hips2fits' own ``{title, description}`` under ``/hips2fits``."""
    try:
        error = _HTTP_ERRORS.get(status) or HTTPStatus(status).phrase.lower()
    except ValueError:
        error = "error"
    if path.startswith("/hips2fits"):
        text = detail if isinstance(detail, str) else json.dumps(detail)
        content = {"title": error[:1].upper() + error[1:], "description": text}
    else:
        content = {"error": error, "detail": detail}
    return JSONResponse(status_code=status, content=content, headers=headers)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Routing errors (unknown path 404, wrong method 405) and 413 in the ``{error, detail}`` shape."""
    return _error_response(request.url.path, exc.status_code, exc.detail, exc.headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    detail = [
        {"loc": list(e.get("loc", [])), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return JSONResponse(status_code=422, content={"error": "invalid request body", "detail": detail})


def _dedupe(tiles: list[TileId]) -> list[TileId]:
    seen: dict[int, TileId] = {}
    for t in tiles:
        seen.setdefault(t.npix, t)
    return list(seen.values())


def _unwrap(exc: BaseException) -> BaseException:
    """The original exception inside Ray's wrappers (RayTaskError keeps it as ``cause``)."""
    seen = 0
    while seen < 5:
        inner = getattr(exc, "cause", None)
        if not isinstance(inner, BaseException) or inner is exc:
            break
        exc = inner
        seen += 1
    return exc


def _load_moc(survey: HipsSurvey):
    """The survey's ``Moc.fits`` (a `mocpy.MOC`) or None when it has none."""
    from skyrender.manifest import load_moc

    try:
        if survey.root.startswith(("http://", "https://")):
            import httpx

            r = httpx.get(f"{survey.root}/Moc.fits", timeout=5.0)
            if r.status_code != 200:
                return None
            return load_moc(r.content)
        p = Path(survey.root, "Moc.fits")
        return load_moc(p.read_bytes()) if p.is_file() else None
    except Exception as exc:  # a broken MOC only costs us the filtering
        log.warning("MOC of %s unusable: %s", survey.root, exc)
        return None


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
@serve.ingress(app)
class Ingress:
    """FastAPI ingress; plans renders and chains fetch → compose → encode."""

    def __init__(
        self,
        fetch: DeploymentHandle,
        compose: DeploymentHandle,
        encode: DeploymentHandle,
        config: dict[str, Any],
    ):
        self.fetch, self.compose, self.encode = fetch, compose, encode
        self.config = AppConfig.model_validate(config)
        _MAX_BODY_BYTES[0] = self.config.limits.max_body_bytes
        _MAX_REQUEST_HEADERS[0] = self.config.limits.max_request_headers
        self.started = time.time()
        self._surveys: dict[str, HipsSurvey] = {}
        self._survey_errors: dict[str, tuple[float, str]] = {}
        self._mocs: dict[str, Any] = {}
        # Read every survey's properties and MOC now, so the first request need not (~0.1 s each).
        threading.Thread(target=self._preload_surveys, name="survey-preload", daemon=True).start()

    def _preload_surveys(self) -> None:
        """Load what `_survey` would; an upstream that is down is left to request time."""
        for cfg in self.config.surveys:
            try:
                survey = load_survey(cfg.url, self.config.upstream.connect_timeout_s)
                moc = _load_moc(survey)
            except Exception as exc:
                log.info("survey %s not preloaded: %s", cfg.name, exc)
                continue
            self._mocs.setdefault(cfg.name, moc)  # before the survey: `_survey` readers expect both
            self._surveys.setdefault(cfg.name, survey)

    # -- surveys ---------------------------------------------------------------------------

    def _survey_config(self, name: str | None, epoch: str | None) -> SurveyConfig:
        cfg = self.config.survey(name, epoch)
        if cfg is None:
            known = [(s.name, s.epoch) for s in self.config.surveys]
            what = f"survey {name!r}" if name else "survey"
            when = f" with epoch {epoch!r}" if epoch is not None else ""
            raise ApiError(404, "unknown survey", f"no {what}{when}; configured (name, epoch): {known}")
        return cfg

    async def _survey(self, cfg: SurveyConfig) -> HipsSurvey:
        """The survey's properties, loaded once; an unreachable upstream is a 503, retried later."""
        if cfg.name in self._surveys:
            return self._surveys[cfg.name]
        failed = self._survey_errors.get(cfg.name)
        if failed and time.monotonic() - failed[0] < self.config.upstream.probe_cache_s:
            raise ApiError(503, "upstream unavailable", failed[1])
        try:
            survey = await asyncio.wait_for(
                asyncio.to_thread(load_survey, cfg.url, self.config.upstream.connect_timeout_s),
                timeout=self.config.upstream.request_deadline_s,
            )
        except (SkyRenderError, TimeoutError) as exc:
            self._survey_errors[cfg.name] = (time.monotonic(), f"{cfg.url}: {exc}")
            raise ApiError(503, "upstream unavailable", f"cannot read {cfg.url}/properties: {exc}") from None
        moc = await asyncio.to_thread(_load_moc, survey)
        self._mocs[cfg.name] = moc  # before the survey: a reader that finds the survey finds its MOC
        self._surveys[cfg.name] = survey
        return survey

    def _tile_location(self, cfg: SurveyConfig, tile: TileId) -> str:
        """Where the fetch stage reads a tile: the upstream URL, or the file of a local survey."""
        if cfg.is_local:
            return os.path.join(cfg.url, tile_path(tile.order, tile.npix, tile.format))
        return f"{cfg.url}/{tile_path(tile.order, tile.npix, tile.format)}"

    def _public_url(self, request: Request, cfg: SurveyConfig, tile: TileId) -> str:
        """The tile URL a caller can fetch: upstream's, or this service's ``/hips/<name>/`` mirror."""
        if cfg.is_local:
            base = str(request.base_url).rstrip("/")
            return f"{base}/hips/{cfg.name}/{tile_path(tile.order, tile.npix, tile.format)}"
        return f"{cfg.url}/{tile_path(tile.order, tile.npix, tile.format)}"

    def _survey_of_url(self, url: str) -> SurveyConfig:
        """The configured survey a caller's tile URL belongs to (403 when none)."""
        for cfg in self.config.surveys:
            if cfg.is_local:
                marker = f"/hips/{cfg.name}/"
                if url.startswith(("http://", "https://")) and marker in url:
                    return cfg
            elif url.startswith(cfg.url + "/"):
                return cfg
        raise ApiError(403, "tile URL not allowed", f"{url} is not under a configured survey root")

    # -- the chain -------------------------------------------------------------------------

    async def _render(
        self,
        request: Request,
        cfg: SurveyConfig,
        survey: HipsSurvey,
        geom: OutputGeometry,
        order: int,
        tiles: list[TileId],
        display: dict[str, Any],
    ) -> Response:
        limits = self.config.limits
        if len(tiles) > limits.max_tiles:
            raise ApiError(400, "too many tiles", f"{len(tiles)} tiles; the limit is {limits.max_tiles}")
        requests = []
        for t in tiles:
            loc = self._tile_location(cfg, t)
            requests.append((t.npix, f"{cfg.name}/{t.order}/{t.npix}.{t.format}", loc, t.format))
        spec = {
            "geometry": geom,
            "survey_frame": survey.frame,
            "order": order,
            "tile_width": survey.tile_width,
        }
        display = {**display, "header": geom.header() if display["format"] == "fits" else None}
        if survey.pixel_cut and display.get("min_cut") is None and display.get("max_cut") is None:
            display["survey_cut"] = survey.pixel_cut
        state = request.state.render
        state.update(
            survey=cfg.name, order=order, tiles_requested=len(tiles), width=geom.width, height=geom.height
        )
        deadline = self.config.upstream.request_deadline_s + 1.0
        chain_start = time.perf_counter()
        try:
            result = await asyncio.wait_for(self._chain(requests, spec, display), timeout=deadline)
        except TimeoutError:
            state["outcome"] = "timeout"
            log.warning("render %s timed out after %.1f s", request.state.request_id, deadline)
            raise ApiError(
                504, "upstream timeout", f"render did not finish within {deadline:.1f} s"
            ) from None
        except ApiError:
            raise
        except Exception as exc:
            error = _status_of(_unwrap(exc))
            state.update(outcome=error.error, cause=str(error.detail))
            log.warning("render %s failed: %s: %s", request.state.request_id, error.error, error.detail)
            raise error from None
        outcomes = result["tile_outcomes"]
        state.update(
            outcome="ok",
            backend=result["backend"],
            tiles_used=result["tiles_used"],
            tiles_fetched=outcomes.get("fetched", 0) + outcomes.get("nocache", 0),
            tiles_from_cache=outcomes.get("hit", 0) + outcomes.get("coalesced", 0),
            tiles_missing=outcomes.get("missing", 0),
            tiles_broken=outcomes.get("broken", 0),
            fetch_ms=round(result["fetch_s"] * 1e3, 2),
            compose_ms=round(result["compose_s"] * 1e3, 2),
            encode_ms=round(result["encode_s"] * 1e3, 2),
        )
        headers = {
            "X-WCS": json.dumps(geom.wcs_keywords(), separators=(",", ":")),
            "X-Compose-Backend": result["backend"],
            "X-Tiles-Used": str(result["tiles_used"]),
            "Cache-Control": "public, max-age=3600",
            # Where the time went (W3C Server-Timing: browsers' dev tools and the benchmark read it).
            "Server-Timing": ", ".join(
                f"{name};dur={seconds * 1e3:.1f}"
                for name, seconds in (
                    ("fetch", result["fetch_s"]),
                    ("compose", result["compose_s"]),
                    ("encode", result["encode_s"]),
                    ("chain", time.perf_counter() - chain_start),
                )
            ),
        }
        return Response(content=result["body"], media_type=result["media_type"], headers=headers)

    async def _chain(self, requests: list, spec: dict[str, Any], display: dict[str, Any]) -> dict[str, Any]:
        """fetch → compose → encode, passing each response on; once more if a replica died."""
        for attempt in (1, 2):
            fetched = self.fetch.get_tiles.remote(requests)
            composed = self.compose.render.remote(spec, fetched)
            try:
                return await self.encode.encode.remote(display, composed)
            except Exception as exc:
                if attempt == 2 or not _is_replica_death(exc):
                    raise
                log.warning("a replica died during a render; retrying once: %s", _message(_unwrap(exc)))
        raise AssertionError("unreachable")

    def _check_size(self, width: int, height: int) -> None:
        lim = self.config.limits
        if width > lim.max_width or height > lim.max_height or width * height > lim.max_pixels:
            raise ApiError(
                400,
                "image too large",
                f"{width}x{height} exceeds the limits (max {lim.max_width}x{lim.max_height}, "
                f"{lim.max_pixels} pixels)",
            )

    def _geometry(
        self, ra, dec, fov, width, height, projection="TAN", rotation=0.0, frame="icrs"
    ) -> OutputGeometry:
        self._check_size(width, height)
        if fov > self.config.limits.max_fov_deg:
            raise ApiError(400, "field too wide", f"fovDeg {fov} exceeds {self.config.limits.max_fov_deg}")
        lim = self.config.limits
        try:
            return make_geometry(
                ra, dec, fov, width, height, projection, rotation, frame,
                max_side=max(lim.max_width, lim.max_height), max_pixels=lim.max_pixels,
            )  # fmt: skip
        except SkyRenderError as exc:
            raise ApiError(400, "invalid geometry", str(exc)) from None

    async def _tiles_render(self, request: Request, body: RenderTilesRequest) -> Response:
        self._check_size(body.width, body.height)
        if len(body.tiles) > self.config.limits.max_tiles:
            raise ApiError(
                400, "too many tiles", f"{len(body.tiles)} tiles; limit {self.config.limits.max_tiles}"
            )
        cfgs = {self._survey_of_url(u).name: self._survey_of_url(u) for u in body.tiles}
        if len(cfgs) > 1:
            raise ApiError(400, "invalid request", f"tiles come from several surveys: {sorted(cfgs)}")
        cfg = next(iter(cfgs.values()))
        try:
            tiles = parse_tile_list(body.tiles)
        except SkyRenderError as exc:
            raise ApiError(400, "invalid tile URL", str(exc)) from None
        survey = await self._survey(cfg)
        try:
            geom = field_of_tiles(tiles, body.width, body.height, survey.frame)
        except SkyRenderError as exc:
            raise ApiError(400, "invalid geometry", str(exc)) from None
        display = {
            "format": "png",
            "cmap": body.colormap,
            "stretch": body.scale,
            "min_cut": body.minCut,
            "max_cut": body.maxCut,
        }
        return await self._render(request, cfg, survey, geom, tiles[0].order, _dedupe(tiles), display)

    # -- endpoints -------------------------------------------------------------------------

    @app.post("/render/preview", response_class=Response, responses=IMAGE_RESPONSES)
    async def render_preview(self, request: Request, body: RenderTilesRequest) -> Response:
        """Render the given tiles (all of one survey and order) into a PNG."""
        return await self._tiles_render(request, body)

    @app.post("/render/snapshot", response_class=Response, responses=IMAGE_RESPONSES)
    async def render_snapshot(self, request: Request, body: SnapshotRequest) -> Response:
        """Render the given tiles into a PNG snapshot (default 512x512) for the job runner."""
        return await self._tiles_render(request, body)

    @app.post(
        "/v1/tile-manifest",
        response_model=ManifestResponse,
        responses={k: v for k, v in IMAGE_RESPONSES.items() if k != 200},
    )
    async def tile_manifest(self, request: Request, body: ManifestRequest) -> ManifestResponse:
        """The tiles of a survey that cover a field, at the order a render would use."""
        cfg = self._survey_config(body.survey, body.epoch)
        survey = await self._survey(cfg)
        geom = self._geometry(body.ra, body.dec, body.fovDeg, body.width, body.height, body.projection)
        plan = await asyncio.to_thread(plan_render, geom, survey, moc=self._mocs.get(cfg.name))
        tiles = []
        for t in plan.tiles:
            tid = TileId(t.order, t.npix, survey.data_format)
            tiles.append(
                {
                    "id": t.id,
                    "url": self._public_url(request, cfg, tid),
                    "healpixNside": t.nside,
                    "order": t.order,
                    "npix": t.npix,
                }
            )
        return ManifestResponse(
            survey=cfg.name,
            epoch=cfg.epoch,
            order=plan.order,
            tileWidth=survey.tile_width,
            frame=survey.frame,
            tiles=tiles,
        )

    @app.post("/v1/preview", response_class=Response, responses=IMAGE_RESPONSES)
    async def preview(self, request: Request, body: PreviewRequest) -> Response:
        """Render a field of a configured survey as PNG or JPEG, with its WCS in ``X-WCS``."""
        cfg = self._survey_config(body.survey, body.epoch)
        survey = await self._survey(cfg)
        geom = self._geometry(
            body.ra, body.dec, body.fovDeg, body.width, body.height, body.projection, body.rotation
        )
        plan = await asyncio.to_thread(plan_render, geom, survey, moc=self._mocs.get(cfg.name))
        fmt = survey.data_format
        tiles = [TileId(t.order, t.npix, fmt) for t in plan.tiles]
        display = {
            "format": body.format,
            "cmap": body.colormap,
            "stretch": body.scale,
            "min_cut": body.minCut,
            "max_cut": body.maxCut,
        }
        return await self._render(request, cfg, survey, geom, plan.order, tiles, display)

    @app.post("/v1/wcs-validate", response_model=WcsValidateResponse, responses={400: {"model": ErrorBody}})
    async def wcs_validate(self, body: WcsValidateRequest) -> WcsValidateResponse:
        """Check a FITS header's WCS; describe what it maps to (400 with wcslib's reason if invalid)."""
        from skyrender.wcsinfo import describe_header

        if len(body.fitsHeader) > self.config.limits.max_header_keys:
            raise ApiError(
                400,
                "invalid WCS",
                f"{len(body.fitsHeader)} keywords; the limit is {self.config.limits.max_header_keys}",
            )
        try:
            desc = describe_header(body.fitsHeader)
        except SkyRenderError as exc:
            raise ApiError(400, "invalid WCS", str(exc)) from None
        return WcsValidateResponse(valid=True, reprojected=desc.to_dict())

    @app.get("/healthz", responses={503: {"description": "an upstream survey is unreachable"}})
    async def healthz(self) -> JSONResponse:
        """200 when every configured survey answers; 503 with the reason otherwise."""
        checks = await asyncio.gather(*(self._probe(cfg) for cfg in self.config.surveys))
        surveys = {
            cfg.name: {"url": cfg.url, "ok": ok, "detail": detail}
            for cfg, (ok, detail) in zip(self.config.surveys, checks, strict=True)
        }
        try:
            compose = await asyncio.wait_for(self.compose.info.remote(), timeout=5.0)
        except Exception as exc:  # compose still starting: report, do not fail health for it
            compose = {"backend": "unknown", "detail": str(exc)}
        try:
            cache = await asyncio.wait_for(self.fetch.cache_stats.remote(), timeout=5.0)
        except Exception as exc:
            cache = {"error": str(exc)}
        cache_cfg = self.config.cache
        disk: dict[str, Any] = {"directory": cache_cfg.disk_dir}
        try:
            disk["free_bytes"] = await asyncio.to_thread(disk_free_bytes, cache_cfg.disk_dir)
            disk["ok"] = disk["free_bytes"] >= cache_cfg.min_free_disk_bytes
        except OSError as exc:
            disk.update(free_bytes=None, ok=False, detail=str(exc))
        ok = all(s["ok"] for s in surveys.values()) and disk["ok"]
        body = {
            "status": "ok" if ok else "degraded",
            "version": skyrender.__version__,
            "uptime_s": round(time.time() - self.started, 3),
            "compose": compose,
            "cache": cache,
            "surveys": surveys,
            "disk": disk,
        }
        if not ok:
            bad = [f"{n}: {s['detail']}" for n, s in surveys.items() if not s["ok"]]
            body["error"] = "upstream unavailable" if bad else "disk space low"
            if not disk["ok"]:
                free, minimum = disk["free_bytes"], cache_cfg.min_free_disk_bytes
                bad.append(f"{free} bytes free in {cache_cfg.disk_dir}, minimum {minimum}")
            body["detail"] = "; ".join(bad)
        return JSONResponse(status_code=200 if ok else 503, content=body)

    async def _probe(self, cfg: SurveyConfig) -> tuple[bool, str]:
        if cfg.is_local:
            ok = Path(cfg.url, "properties").is_file()
            return ok, "local directory" if ok else f"{cfg.url}/properties missing"
        try:
            return await asyncio.wait_for(self.fetch.probe.remote(cfg.url), timeout=5.0)
        except Exception as exc:
            return False, f"probe failed: {_message(_unwrap(exc))}"

    @app.get("/v1/stats")
    async def stats(self) -> dict[str, Any]:
        """Tile cache counters (hits, misses, evictions, bytes held)."""
        return {"cache": await self.fetch.cache_stats.remote()}

    async def _survey_by_id(self, hips: str) -> SurveyConfig:
        """A configured survey by name, alias, or HiPS ID (``creator_did``, with or without ivo://)."""
        cfg = self.config.survey(hips)
        if cfg is not None:
            return cfg
        wanted = hips.removeprefix("ivo://").lower()
        for cfg in self.config.surveys:
            try:
                survey = await self._survey(cfg)
            except ApiError:
                continue
            did = (survey.creator_did or "").removeprefix("ivo://").lower()
            if did and did == wanted:
                return cfg
        raise Hips2FitsError("Unknown HiPS", f"no configured survey is called or identified by {hips!r}", 404)

    async def _hips2fits(self, request: Request, params: Mapping[str, str]) -> Response:
        lim = self.config.limits
        try:
            query = parse_query(
                params, max_side=max(lim.max_width, lim.max_height), max_pixels=lim.max_pixels
            )
            cfg = await self._survey_by_id(query.hips)
            survey = await self._survey(cfg)
            geom = query.geometry
            plan = await asyncio.to_thread(plan_render, geom, survey, moc=self._mocs.get(cfg.name))
            tiles = [TileId(t.order, t.npix, survey.data_format) for t in plan.tiles]
            display = {
                "format": query.format,
                "cmap": query.cmap,
                "stretch": query.stretch,
                "min_cut": query.min_cut,
                "max_cut": query.max_cut,
                "rgb": True,
            }
            return await self._render(request, cfg, survey, geom, plan.order, tiles, display)
        except Hips2FitsError as exc:
            return JSONResponse(
                status_code=exc.status, content={"title": exc.title, "description": exc.description}
            )
        except ApiError as exc:
            detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
            return JSONResponse(status_code=exc.status, content={"title": exc.error, "description": detail})

    @app.get("/hips2fits", response_class=Response, responses=HIPS2FITS_RESPONSES)
    async def hips2fits_get(
        self,
        request: Request,
        hips: str | None = Query(None, description="survey name or HiPS ID (required)"),
        width: str | None = Query(None, description="output width [pixels]"),
        height: str | None = Query(None, description="output height [pixels]"),
        projection: str | None = Query(None, description="wcslib projection code"),
        fov: str | None = Query(None, description="field of view, larger side [deg]"),
        ra: str | None = Query(None, description="centre right ascension, ICRS [deg]"),
        dec: str | None = Query(None, description="centre declination, ICRS [deg]"),
        coordsys: str | None = Query(None, description="icrs | galactic: frame of the projection"),
        rotation_angle: str | None = Query(None, description="rotation [deg]"),
        wcs: str | None = Query(
            None, description="JSON FITS header with NAXIS1/NAXIS2, instead of the field"
        ),
        format: str | None = Query(None, description="fits | jpg | png"),
        min_cut: str | None = Query(None, description="lower cut: value, or percent like '0.5%'"),
        max_cut: str | None = Query(None, description="upper cut: value, or percent like '99.5%'"),
        stretch: str | None = Query(None, description="power | linear | sqrt | log | asinh"),
        cmap: str | None = Query(None, description="matplotlib colormap name"),
    ) -> Response:
        """CDS hips2fits-compatible cutout (astroquery's ``hips2fits`` client works unchanged)."""
        return await self._hips2fits(request, dict(request.query_params))

    @app.post("/hips2fits", response_class=Response, responses=HIPS2FITS_RESPONSES)
    async def hips2fits_post(self, request: Request) -> Response:
        """The same as ``GET /hips2fits`` with the parameters as form fields."""
        try:
            form = await request.form()
        except StarletteHTTPException:  # the body limit: its handler answers
            raise
        except Exception as exc:
            return JSONResponse(status_code=400, content={"title": "Invalid form", "description": str(exc)})
        params = {k: v for k, v in form.items() if isinstance(v, str)}
        return await self._hips2fits(request, {**dict(request.query_params), **params})

    @app.get("/hips/{name}/{path:path}", include_in_schema=False)
    async def hips_file(self, name: str, path: str) -> Response:
        """Serve a local survey's files (tiles, properties, MOC) so manifest URLs resolve."""
        cfg = next((s for s in self.config.surveys if s.name == name and s.is_local), None)
        if cfg is None:
            raise ApiError(404, "unknown survey", f"no local survey {name!r}")
        if path not in ("properties", "Moc.fits") and not path.endswith(
            ("Allsky.fits", "Allsky.jpg", "Allsky.png")
        ):
            try:
                t = parse_tile_url(path)
            except SkyRenderError as exc:
                raise ApiError(404, "not found", str(exc)) from None
            path = tile_path(t.order, t.npix, t.format)
        full = Path(cfg.url, path)
        if not full.is_file():
            raise ApiError(404, "not found", path)
        return FileResponse(full)
