"""``GET /v1/surveys``: the configured survey catalogue, for pickers (the viewer, the portal)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from .config import SurveyConfig
from .errors import ApiError
from .models import SurveyInfo, SurveyList
from .services import Services, ServicesDep

__all__ = ["router"]

router = APIRouter()


async def _describe(svc: Services, cfg: SurveyConfig, default: bool) -> SurveyInfo:
    known = {"name": cfg.name, "epoch": cfg.epoch, "aliases": list(cfg.aliases), "default": default}
    try:
        survey = await svc.catalogue.survey(cfg)
    except ApiError as exc:  # one unreachable upstream must not hide the others
        return SurveyInfo(**known, available=False, detail=f"{exc.error}: {exc.detail}")
    return SurveyInfo(
        **known,
        available=True,
        title=survey.title,
        frame=survey.frame,
        orderMin=survey.order_min,
        orderMax=survey.order,
        tileWidth=survey.tile_width,
        colour=survey.is_colour,
        tileFormat=survey.data_format,
        initialRa=survey.initial_ra,
        initialDec=survey.initial_dec,
        initialFovDeg=survey.initial_fov,
    )


@router.get("/v1/surveys", response_model=SurveyList)
async def surveys(svc: ServicesDep) -> SurveyList:
    """The configured surveys (the first is the default) with what their HiPS properties say."""
    cfgs = svc.config.surveys
    infos = await asyncio.gather(*(_describe(svc, cfg, i == 0) for i, cfg in enumerate(cfgs)))
    return SurveyList(surveys=list(infos))
