"""Several layers through the stages: each fetched and composed in parallel, combined in encode.

Every layer goes through the same fetch and compose deployments (and the same tile
cache) as a single render; the compose responses are handed straight to the encode
stage's ``combine``, so the float renders travel between stages as Ray objects and only
the answer's bytes come back to the ingress.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response

import skyrender
from skyrender.geometry import OutputGeometry
from skyrender.layers import Spec
from skyrender.properties import HipsSurvey
from skyrender.tiles import TileId

from .admission import work_units
from .config import AppConfig, SurveyConfig
from .contracts import EncodedImage, RenderSpec, TileRequest
from .deadline import Budget
from .errors import ApiError, is_replica_death, message_of, unwrap
from .http_cache import strong_etag, survey_release
from .render_answer import image_response
from .render_chain import tile_requests, tiles_via
from .services import Services

__all__ = ["PlannedLayer", "admit_layers", "check_layer_count", "plan_layer", "run_layers", "survey_epochs"]

log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class PlannedLayer:
    """One layer ready for the stages: its survey, its tiles and what compose needs."""

    label: str
    cfg: SurveyConfig
    survey: HipsSurvey
    requests: tuple[TileRequest, ...]
    spec: RenderSpec


def layer_label(name: str, epoch: str | None) -> str:
    """How errors and logs name a layer: ``survey`` or ``survey@epoch``."""
    return name if epoch is None else f"{name}@{epoch}"


def check_layer_count(config: AppConfig, count: int) -> None:
    """400 past ``limits.max_layers``."""
    limit = config.limits.max_layers
    if count > limit:
        raise ApiError(400, "too many layers", f"{count} layers; the limit is {limit}", field="layers")


def _natural_key(epoch: str) -> list:
    # VLASS epochs sort as versions: "1.2" < "2.1" < "10.1".
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", epoch) if p]


def survey_epochs(config: AppConfig, name: str) -> list[str]:
    """The epochs configured for the survey called ``name`` (or its alias), earliest first.

    Raises
    ------
    ApiError
        404 for an unknown survey or a survey without epochs.
    """
    matches = [s for s in config.surveys if name == s.name or name in s.aliases]
    if not matches:
        known = sorted({s.name for s in config.surveys} | {a for s in config.surveys for a in s.aliases})
        raise ApiError(404, "unknown survey", f"no survey {name!r}; configured: {known}")
    epochs = sorted({s.epoch for s in matches if s.epoch is not None}, key=_natural_key)
    if not epochs:
        # Not found: this survey has no epochs to compare (a well-formed request all the same).
        raise ApiError(404, "no epochs", f"survey {name!r} has no epochs configured", field="survey")
    return epochs


async def plan_layer(svc: Services, geom: OutputGeometry, name: str, epoch: str | None) -> PlannedLayer:
    """Plan one layer on ``geom`` as a single render would (`RenderChain.plan`: the deepest order
    that fits the limits, or the order-3 Allsky mosaic for a wide field).

    Raises
    ------
    ApiError
        404 for an unknown survey or epoch, or a field outside its coverage; 400 for a colour
        survey or a field no order fits.
    """
    cfg = svc.catalogue.config_for(name, epoch)
    survey = await svc.catalogue.survey(cfg)
    label = layer_label(name, epoch)
    if survey.is_colour:  # said before any render (the combine stage would say it after)
        raise ApiError(
            400,
            "colour survey",
            f"layer {label} is a colour survey: layers must be single-band",
            field="layers",
        )
    planned = await svc.chain.plan(svc.catalogue, cfg, survey, geom)
    plan = planned.plan
    if not plan.tiles:
        # The survey has no data there: nothing to find (404), not a malformed request.
        raise ApiError(404, "outside coverage", f"layer {label}: the field is outside the survey's coverage")
    tiles = [TileId(t.order, t.npix, survey.data_format) for t in plan.tiles]
    allsky = svc.catalogue.allsky_location(cfg, survey) if planned.allsky else None
    requests = tuple(tile_requests(svc.config, cfg, survey, plan.order, tiles, allsky))
    spec = RenderSpec(
        geometry=geom,
        survey_frame=survey.frame,
        order=plan.order,
        tile_width=None if allsky is not None else survey.tile_width,  # the mosaic's are narrower
    )
    return PlannedLayer(label=label, cfg=cfg, survey=survey, requests=requests, spec=spec)


async def admit_layers(svc: Services, request: Request, geom: OutputGeometry, count: int) -> None:
    """Admit a render of ``count`` layers on ``geom`` and wait for its turn, or refuse it with a
    503 (see `RenderChain.start`).

    Routes call it once the request is known to be valid, before planning. Its work is every
    layer's pixels: each layer is fetched and composed in full.
    """
    await svc.chain.start(request, geom.width, geom.height * count)


async def _chain(
    svc: Services,
    geom: OutputGeometry,
    layers: list[PlannedLayer],
    spec: Spec,
    budget: Budget,
    lost: list[str],
    state: dict[str, object],
) -> EncodedImage:
    """Every layer's fetch → compose, then one combine; once more if a replica died (noted in ``lost``).

    The budget goes with every call, so that each stage drops the render rather than compute
    it too late; a layer's fetch and compose are one layer's work, the combine all of it.
    """
    layer_budget = dataclasses.replace(budget, work=work_units(geom.width, geom.height))
    for attempt in (1, 2):
        fetched = await asyncio.gather(
            *(svc.chain.tiles(list(layer.requests), layer_budget, retry=attempt > 1) for layer in layers)
        )
        state["tiles_via"] = ",".join(tiles_via(f) for f in fetched)
        composed = [
            svc.compose.render.remote(layer.spec, tiles, layer_budget)
            for layer, tiles in zip(layers, fetched, strict=True)
        ]
        try:
            # Responses passed as arguments are resolved by Serve, so the renders go
            # compose → encode directly.
            return await svc.encode.combine.remote(spec, *composed, budget=budget)
        except Exception as exc:
            if attempt == 2 or not is_replica_death(exc):
                raise
            lost.append(message_of(unwrap(exc)))
            log.warning("a replica died during a layered render; retrying once: %s", message_of(unwrap(exc)))
    raise AssertionError("unreachable")


def layers_etag(svc: Services, geom: OutputGeometry, layers: list[PlannedLayer], spec: Spec) -> str:
    """Strong ETag of a layered picture: the grid, each layer's survey release and tiles, how
    they combine, the service version and the rendering configuration."""
    return strong_etag(
        "layers",
        geom,
        [
            (layer.label, survey_release(layer.cfg.name, layer.cfg.url, layer.survey.properties),
             layer.spec.order, [r.key for r in layer.requests])
            for layer in layers
        ],
        type(spec).__name__,
        spec,
        skyrender.__version__,
        svc.config.render.model_dump(exclude={"num_threads"}),
    )  # fmt: skip


async def run_layers(
    svc: Services, request: Request, geom: OutputGeometry, layers: list[PlannedLayer], spec: Spec
) -> Response:
    """Render ``layers`` on ``geom`` and combine them per ``spec``; the HTTP answer."""
    state = request.state.render
    state.update(
        survey=",".join(layer.label for layer in layers),
        layers=len(layers),
        order=",".join(str(layer.spec.order) for layer in layers),
        allsky=any(r.allsky_npix for layer in layers for r in layer.requests),
        tiles_requested=sum(len(layer.requests) for layer in layers),
        width=geom.width,
        height=geom.height,
    )
    start = time.perf_counter()
    result = await svc.chain.run(
        request,
        geom.width,
        geom.height * len(layers),  # as `admit_layers` admitted it
        lambda budget, lost: _chain(svc, geom, layers, spec, budget, lost, state),
    )
    headers = {
        "X-Layers": ",".join(layer.label for layer in layers),
        # Each layer's order, as X-Layers lists them (3 and a wide field: the Allsky mosaic's).
        "X-HiPS-Order": ",".join(str(layer.spec.order) for layer in layers),
        "ETag": layers_etag(svc, geom, layers, spec),
        "Cache-Control": svc.chain.cache_policy.cache_control(),
    }
    # fetch and compose in Server-Timing: the slowest layer's (layers run side by side).
    return image_response(state, geom, result, time.perf_counter() - start, headers)
