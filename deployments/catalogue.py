"""The survey catalogue: the configured surveys, their HiPS properties and MOCs.

Properties and MOCs are read once per survey (in the background at start-up, or on
first use); an upstream that cannot be read is answered 503 and tried again after
``upstream.probe_cache_s``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

from skyrender.errors import SkyRenderError
from skyrender.properties import HipsSurvey, load_survey

from .config import AppConfig, SurveyConfig
from .errors import ApiError

__all__ = ["SurveyCatalogue"]

log = logging.getLogger("ray.serve")


def _load_moc(survey: HipsSurvey, timeout_s: float):
    """The survey's ``Moc.fits`` (a `mocpy.MOC`) or None when it has none."""
    from skyrender.manifest import load_moc

    try:
        if survey.root.startswith(("http://", "https://")):
            import httpx

            r = httpx.get(f"{survey.root}/Moc.fits", timeout=timeout_s)
            if r.status_code != 200:
                return None
            return load_moc(r.content)
        p = Path(survey.root, "Moc.fits")
        return load_moc(p.read_bytes()) if p.is_file() else None
    except Exception as exc:  # a broken MOC only costs us the filtering
        log.warning("MOC of %s unusable: %s", survey.root, exc)
        return None


class SurveyCatalogue:
    """The configured surveys and what has been read of them.

    Parameters
    ----------
    config : AppConfig
        The application's configuration (surveys, upstream timeouts).
    """

    def __init__(self, config: AppConfig):
        self.config = config
        self._surveys: dict[str, HipsSurvey] = {}
        self._errors: dict[str, tuple[float, str]] = {}
        self._mocs: dict[str, Any] = {}

    def start_preload(self) -> None:
        """Read every survey's properties and MOC in the background (~0.1 s each)."""
        threading.Thread(target=self._preload, name="survey-preload", daemon=True).start()

    def _preload(self) -> None:
        """Load what `survey` would; an upstream that is down is left to request time."""
        up = self.config.upstream
        for cfg in self.config.surveys:
            try:
                survey = load_survey(cfg.url, up.connect_timeout_s)
                moc = _load_moc(survey, up.connect_timeout_s + up.read_timeout_s)
            except Exception as exc:
                log.info("survey %s not preloaded: %s", cfg.name, exc)
                continue
            self._mocs.setdefault(cfg.name, moc)  # before the survey: readers expect both
            self._surveys.setdefault(cfg.name, survey)

    def config_for(self, name: str | None, epoch: str | None) -> SurveyConfig:
        """The configured survey called ``name`` (default: the first) of ``epoch``; 404 if none."""
        cfg = self.config.survey(name, epoch)
        if cfg is None:
            known = [(s.name, s.epoch) for s in self.config.surveys]
            what = f"survey {name!r}" if name else "survey"
            when = f" with epoch {epoch!r}" if epoch is not None else ""
            raise ApiError(404, "unknown survey", f"no {what}{when}; configured (name, epoch): {known}")
        return cfg

    def moc(self, name: str) -> Any:
        """The survey's MOC (`mocpy.MOC`), None when it has none or it is not loaded yet."""
        return self._mocs.get(name)

    async def survey(self, cfg: SurveyConfig) -> HipsSurvey:
        """The survey's properties, loaded once; an unreachable upstream is a 503, retried later."""
        if cfg.name in self._surveys:
            return self._surveys[cfg.name]
        up = self.config.upstream
        failed = self._errors.get(cfg.name)
        if failed and time.monotonic() - failed[0] < up.probe_cache_s:
            raise ApiError(503, "upstream unavailable", failed[1])
        try:
            survey = await asyncio.wait_for(
                asyncio.to_thread(load_survey, cfg.url, up.connect_timeout_s), timeout=up.request_deadline_s
            )
        except (SkyRenderError, TimeoutError) as exc:
            self._errors[cfg.name] = (time.monotonic(), f"{cfg.url}: {exc}")
            raise ApiError(503, "upstream unavailable", f"cannot read {cfg.url}/properties: {exc}") from None
        moc = await asyncio.to_thread(_load_moc, survey, up.connect_timeout_s + up.read_timeout_s)
        self._mocs[cfg.name] = moc  # before the survey: a reader that finds the survey finds its MOC
        self._surveys[cfg.name] = survey
        return survey

    async def by_id(self, hips: str) -> SurveyConfig | None:
        """A configured survey by name, alias, or HiPS ID (``creator_did``, with or without ivo://)."""
        cfg = self.config.survey(hips)
        if cfg is not None:
            return cfg
        wanted = hips.removeprefix("ivo://").lower()
        for cfg in self.config.surveys:
            try:
                survey = await self.survey(cfg)
            except ApiError:
                continue
            did = (survey.creator_did or "").removeprefix("ivo://").lower()
            if did and did == wanted:
                return cfg
        return None
