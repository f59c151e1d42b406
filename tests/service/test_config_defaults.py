"""One home for each default: serve_config.yaml. The pydantic models' defaults equal it and it
names every knob, so `serve run graph:build_app` (no YAML) and `serve run serve_config.yaml`
configure the same service."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from deployments.config import AppConfig
from graph import deployment_options

from .serve_harness import load_config


def _yaml_args() -> dict[str, Any]:
    return load_config()["applications"][0]["args"]


def _missing(model: type[BaseModel], values: dict[str, Any], where: str) -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        if name not in values:
            out.append(f"{where}{name}")
            continue
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel) and isinstance(values[name], dict):
            out += _missing(sub, values[name], f"{where}{name}.")
    return out


def test_the_pydantic_defaults_equal_serve_config_yaml():
    from_yaml = AppConfig.model_validate(_yaml_args()).model_dump(exclude={"surveys"})
    defaults = AppConfig().model_dump(exclude={"surveys"})
    differing = {
        f"{section}.{key}": (defaults[section][key], value)
        for section, values in from_yaml.items()
        if isinstance(values, dict)
        for key, value in values.items()
        if defaults[section].get(key) != value
    }
    differing.update(
        {k: (defaults[k], v) for k, v in from_yaml.items() if not isinstance(v, dict) and defaults[k] != v}
    )
    assert not differing, f"(default, serve_config.yaml) differ: {differing}"


def test_serve_config_yaml_names_every_knob():
    assert not _missing(AppConfig, {"surveys": [], **_yaml_args()}, ""), "add them to serve_config.yaml"


def test_graph_takes_the_deployment_settings_from_serve_config_yaml():
    options = deployment_options()
    assert set(options) == {"Ingress", "TileFetch", "Compose", "Encode"}
    for name, settings in options.items():
        assert settings["ray_actor_options"]["num_cpus"] < 1, name  # fractional: fits 2 cores
