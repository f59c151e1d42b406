"""The answer of a finished render, shared by single and layered renders (no Ray here)."""

from __future__ import annotations

import json

from deployments.contracts import EncodedImage, TileOutcome
from deployments.render_answer import image_response, outcome_fields, server_timing
from skyrender.geometry import make_geometry

RESULT = EncodedImage(
    body=b"\x89PNG...",
    media_type="image/png",
    encode_seconds=0.004,
    compose_seconds=0.0205,
    fetch_seconds=0.1,
    backend="numpy",
    tiles_used=7,
    tile_outcomes={
        TileOutcome.HIT: 2,
        TileOutcome.COALESCED: 1,
        TileOutcome.FETCHED: 3,
        TileOutcome.NOCACHE: 1,
        TileOutcome.MISSING: 4,
        TileOutcome.BROKEN: 5,
    },
)


def test_outcome_fields_count_every_kind_of_tile():
    assert outcome_fields(RESULT) == {
        "outcome": "ok",
        "backend": "numpy",
        "tiles_used": 7,
        "tiles_fetched": 4,
        "tiles_from_cache": 3,
        "tiles_missing": 4,
        "tiles_broken": 5,
        "fetch_ms": 100.0,
        "compose_ms": 20.5,
        "encode_ms": 4.0,
    }


def test_server_timing_names_the_stages_then_the_extras():
    value = server_timing(RESULT, 0.25, [("hop-fetch", 0.0012)])
    assert value == "fetch;dur=100.0, compose;dur=20.5, encode;dur=4.0, chain;dur=250.0, hop-fetch;dur=1.2"


def test_image_response_carries_the_wcs_the_callers_headers_and_fills_the_log_line():
    geom = make_geometry(10.0, 20.0, 1.0, 64, 32)
    state: dict = {"survey": "dss2"}
    r = image_response(state, geom, RESULT, 0.3, {"ETag": '"x"', "X-HiPS-Order": "5"})
    assert r.body == RESULT.body and r.media_type == "image/png"
    assert json.loads(r.headers["x-wcs"]) == json.loads(json.dumps(geom.wcs_keywords()))
    assert r.headers["x-compose-backend"] == "numpy" and r.headers["x-tiles-used"] == "7"
    assert r.headers["etag"] == '"x"' and r.headers["x-hips-order"] == "5"
    assert r.headers["server-timing"].endswith("chain;dur=300.0")
    assert state["survey"] == "dss2" and state["tiles_broken"] == 5 and state["outcome"] == "ok"
