"""The survey catalogue: the configured surveys, their HiPS properties and MOCs.

Properties and MOCs are read through the fetch stage (``TileFetch.read_meta``), so they
obey the tile root policy, retries, timeouts and the disk tier. Every survey is read once
at start-up (`load_all`); until that first pass has finished a request for a survey waits
for it (at most ``upstream.catalogue_wait_s``) and is then answered 503 with
``Retry-After``, never 404. A survey whose upstream could not be read is a 503 and is read
again after ``upstream.probe_cache_s``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from skyrender.errors import SkyRenderError
from skyrender.properties import HipsSurvey, survey_from_properties

from .config import AppConfig, SurveyConfig
from .errors import ApiError, message_of, unwrap

__all__ = ["SurveyCatalogue"]

log = logging.getLogger("ray.serve")

#: Reads a survey file (an upstream URL or a local path): its bytes, or None when it does not exist.
Reader = Callable[[str], Awaitable[bytes | None]]


def _location(cfg: SurveyConfig, name: str) -> str:
    return os.path.join(cfg.url, name) if cfg.is_local else f"{cfg.url}/{name}"


class SurveyCatalogue:
    """The configured surveys and what has been read of them.

    Parameters
    ----------
    config : AppConfig
        The application's configuration (surveys, upstream timeouts).
    read : Reader
        How survey files are read (the fetch stage's ``read_meta``).
    exists : callable
        Whether a survey file exists (the fetch stage's ``exists``).
    """

    def __init__(self, config: AppConfig, read: Reader, exists: Callable[[str], Awaitable[bool]]):
        self.config = config
        self._read, self._exists = read, exists
        self._allsky: dict[str, bool] = {}
        self._surveys: dict[str, HipsSurvey] = {}
        self._errors: dict[str, tuple[float, str]] = {}
        self._mocs: dict[str, Any] = {}
        self._loaded = asyncio.Event()
        self.loaded_at: float | None = None  # time.time() when the first pass finished

    @property
    def loaded(self) -> bool:
        """True once every survey has been tried at least once (readiness)."""
        return self._loaded.is_set()

    async def load_all(self) -> None:
        """Read every survey's properties and MOC (concurrently); failures are kept for request time."""
        try:
            await asyncio.gather(*(self._try(cfg) for cfg in self.config.surveys))
        finally:
            self.loaded_at = time.time()
            self._loaded.set()

    async def _try(self, cfg: SurveyConfig) -> None:
        try:
            await self._load(cfg)
        except ApiError as exc:
            log.warning("survey %s not loaded at start-up: %s", cfg.name, exc.detail)

    async def _load(self, cfg: SurveyConfig) -> HipsSurvey:
        up = self.config.upstream
        try:
            text = await asyncio.wait_for(self._read(_location(cfg, "properties")), up.request_deadline_s)
            if text is None:
                raise SkyRenderError("no properties file")
            survey = survey_from_properties(text.decode("utf-8", errors="replace"), cfg.url)
        except Exception as exc:
            reason = message_of(unwrap(exc)) if not isinstance(exc, TimeoutError) else "timed out"
            self._errors[cfg.name] = (time.monotonic(), f"cannot read {cfg.url}/properties: {reason}")
            raise ApiError(503, "upstream unavailable", self._errors[cfg.name][1]) from None
        self._mocs[cfg.name] = await self._load_moc(cfg)  # before the survey: readers expect both
        self._surveys[cfg.name] = survey
        self._errors.pop(cfg.name, None)
        return survey

    async def _load_moc(self, cfg: SurveyConfig) -> Any:
        """The survey's MOC (`mocpy.MOC`), None when it has none or it is unreadable."""
        from skyrender.manifest import load_moc

        location = _location(cfg, "Moc.fits")
        try:
            data = await asyncio.wait_for(self._read(location), self.config.upstream.request_deadline_s)
            return None if data is None else await asyncio.to_thread(load_moc, data, source=location)
        except Exception as exc:  # a broken MOC only costs us the filtering
            log.warning("MOC of %s unusable: %s", cfg.name, message_of(unwrap(exc)))
            return None

    async def wait_loaded(self) -> None:
        """Wait for the start-up pass (at most ``upstream.catalogue_wait_s``); else 503 + Retry-After."""
        if self._loaded.is_set():
            return
        wait_s = self.config.upstream.catalogue_wait_s
        try:
            await asyncio.wait_for(self._loaded.wait(), timeout=wait_s)
        except TimeoutError:
            retry = str(max(1, math.ceil(wait_s)))
            raise ApiError(
                503,
                "not ready",
                "the survey catalogue is still loading; retry shortly",
                headers={"Retry-After": retry},
            ) from None

    def config_for(self, name: str | None, epoch: str | None) -> SurveyConfig:
        """The configured survey called ``name`` (default: the first) of ``epoch``; 404 if none."""
        cfg = self.config.survey(name, epoch)
        if cfg is None:
            known = [(s.name, s.epoch) for s in self.config.surveys]
            what = f"survey {name!r}" if name else "survey"
            when = f" with epoch {epoch!r}" if epoch is not None else ""
            raise ApiError(404, "unknown survey", f"no {what}{when}; configured (name, epoch): {known}")
        return cfg

    def allsky_location(self, cfg: SurveyConfig, survey: HipsSurvey) -> str:
        """Where the survey's order-3 ``Allsky`` mosaic would be."""
        from skyrender.budget import ALLSKY_ORDER
        from skyrender.tiles import allsky_path

        return _location(cfg, allsky_path(survey.data_format, ALLSKY_ORDER))

    async def has_allsky(self, cfg: SurveyConfig, survey: HipsSurvey) -> bool:
        """Does the survey serve ``Norder3/Allsky.<format>``? Asked once per survey."""
        if cfg.name not in self._allsky:
            location = self.allsky_location(cfg, survey)
            try:
                found = await asyncio.wait_for(
                    self._exists(location), self.config.upstream.request_deadline_s
                )
            except Exception as exc:  # unknown: do not use it, ask again next time
                log.warning("cannot tell whether %s exists: %s", location, message_of(unwrap(exc)))
                return False
            self._allsky[cfg.name] = bool(found)
        return self._allsky[cfg.name]

    def moc(self, name: str) -> Any:
        """The survey's MOC (`mocpy.MOC`), None when it has none."""
        return self._mocs.get(name)

    async def survey(self, cfg: SurveyConfig) -> HipsSurvey:
        """The survey's properties; an unreachable upstream is a 503, tried again later."""
        if cfg.name in self._surveys:
            return self._surveys[cfg.name]
        await self.wait_loaded()
        if cfg.name in self._surveys:
            return self._surveys[cfg.name]
        failed = self._errors.get(cfg.name)
        if failed and time.monotonic() - failed[0] < self.config.upstream.probe_cache_s:
            retry = str(max(1, math.ceil(self.config.upstream.probe_cache_s)))
            raise ApiError(503, "upstream unavailable", failed[1], headers={"Retry-After": retry})
        return await self._load(cfg)

    async def by_id(self, hips: str) -> SurveyConfig | None:
        """A configured survey by name, alias, or HiPS ID (``creator_did``, with or without ivo://)."""
        cfg = self.config.survey(hips)
        if cfg is not None:
            return cfg
        await self.wait_loaded()  # an ID is known only from the properties
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
