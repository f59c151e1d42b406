"""Ray Serve application builder: ``serve run graph:build_app`` or ``serve run serve_config.yaml``.

Wires ingress → tile fetch → compose → encode with DeploymentHandles. ``args`` is the
`deployments.config.AppConfig` (surveys, limits, upstream, cache, render); the
per-deployment knobs (replicas, autoscaling, resources) come from ``serve_config.yaml``,
their one home: applied here for ``serve run graph:build_app``, and by Serve itself
when the YAML is deployed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray.serve import Application

from deployments.compose_stage import Compose
from deployments.config import AppConfig, default_sample_dir
from deployments.encode_stage import Encode
from deployments.fetch_stage import TileFetch
from deployments.health_endpoint import HealthEndpoint
from deployments.ingress import Ingress

log = logging.getLogger("ray.serve")


def _ensure_sample_survey(config: AppConfig) -> None:
    """Build the bundled HI4PI sample HiPS into any empty local survey folder that asks for it."""
    if not config.build_sample_survey:
        return
    from skyrender.samples import build_sample_hips

    for survey in config.surveys:
        if survey.is_local and not Path(survey.url, "properties").is_file():
            log.info("building the sample survey into %s", survey.url)
            build_sample_hips(survey.url)


CONFIG_FILE = Path(__file__).resolve().parent / "serve_config.yaml"


def deployment_options(path: Path = CONFIG_FILE) -> dict[str, dict[str, Any]]:
    """Each deployment's settings in ``serve_config.yaml`` (by deployment name)."""
    import yaml

    config = yaml.safe_load(path.read_text())
    deployments = config["applications"][0].get("deployments", [])
    return {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in deployments}


def build_app(args: dict[str, Any] | None = None) -> Application:
    """The application: ``args`` as in ``serve_config.yaml``'s ``applications[].args``."""
    args = dict(args or {})
    if not args.get("surveys"):
        args["surveys"] = [{"name": "hi4pi", "url": default_sample_dir()}]
    config = AppConfig.model_validate(args)
    _ensure_sample_survey(config)
    plain = config.model_dump()
    options = deployment_options()

    def deployment(cls):
        return cls.options(**options.get(cls.name, {}))

    fetch = deployment(TileFetch).bind(plain)
    compose = deployment(Compose).bind(plain)
    encode = deployment(Encode).bind(plain)
    return deployment(Ingress).bind(fetch, compose, encode, plain)


def build_health_app(args: dict[str, Any] | None = None) -> Application:
    """A probe route answered outside the ingress (`deployments.health_endpoint`).

    ``args``: ``path`` (``/healthz`` or ``/readyz``, the application's ``route_prefix``),
    ``app`` (the rendering application's name), and optionally ``period_s``, ``max_age_s``.
    """
    args = dict(args or {})
    path = args.pop("path", None)
    if path not in ("/healthz", "/readyz"):
        raise ValueError(f"health application: args.path must be /healthz or /readyz, not {path!r}")
    return HealthEndpoint.bind(path, **args)
