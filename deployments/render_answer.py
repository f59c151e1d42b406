"""What a finished render says: its log line's facts and its image answer.

Single renders (`deployments.render_chain`) and layered ones (`deployments.layer_chain`)
both end with an `EncodedImage`; the outcome fields of the request's log line, the image
headers (``X-WCS``, ``X-Compose-Backend``, ``X-Tiles-Used``) and ``Server-Timing`` are made
here so that both answer alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi.responses import Response

from skyrender.geometry import OutputGeometry

from .contracts import EncodedImage, TileOutcome

__all__ = ["image_response", "outcome_fields", "server_timing"]


def outcome_fields(result: EncodedImage) -> dict[str, Any]:
    """The log line's facts of a completed render: outcome, backend, tiles by outcome, stage times [ms]."""
    outcomes = result.tile_outcomes
    return {
        "outcome": "ok",
        "backend": result.backend,
        "tiles_used": result.tiles_used,
        "tiles_fetched": sum(n for k, n in outcomes.items() if k.downloaded),
        "tiles_from_cache": sum(n for k, n in outcomes.items() if k.from_cache),
        "tiles_missing": outcomes.get(TileOutcome.MISSING, 0),
        "tiles_broken": outcomes.get(TileOutcome.BROKEN, 0),
        "fetch_ms": round(result.fetch_seconds * 1e3, 2),
        "compose_ms": round(result.compose_seconds * 1e3, 2),
        "encode_ms": round(result.encode_seconds * 1e3, 2),
    }


def server_timing(
    result: EncodedImage, chain_s: float, extra: Iterable[tuple[str, float]] = ()
) -> str:
    """The ``Server-Timing`` value (W3C): fetch, compose, encode, the whole chain, then ``extra``.

    Parameters
    ----------
    result : EncodedImage
        The stages' answer (their times [s]).
    chain_s : float
        The ingress's wall time for the whole chain [s].
    extra : iterable of (str, float)
        Further named durations [s] (the hand-offs between stages).
    """
    entries = (
        ("fetch", result.fetch_seconds),
        ("compose", result.compose_seconds),
        ("encode", result.encode_seconds),
        ("chain", chain_s),
        *extra,
    )
    return ", ".join(f"{name};dur={seconds * 1e3:.1f}" for name, seconds in entries)


def image_response(
    state: dict[str, Any],
    geom: OutputGeometry,
    result: EncodedImage,
    chain_s: float,
    headers: Mapping[str, str],
    timing: Iterable[tuple[str, float]] = (),
) -> Response:
    """The answer of a completed render; its outcome is added to the log line's ``state``.

    Parameters
    ----------
    state : dict
        ``request.state.render``: the request's log-line facts (updated here).
    geom : OutputGeometry
        The output grid (its WCS goes in ``X-WCS``).
    result : EncodedImage
        The encoded image and the stages' facts.
    chain_s : float
        The ingress's wall time for the chain [s].
    headers : Mapping
        The caller's own headers (ETag, Cache-Control, X-HiPS-Order...).
    timing : iterable of (str, float)
        Extra ``Server-Timing`` entries [s].
    """
    state.update(outcome_fields(result))
    return Response(
        content=result.body,
        media_type=result.media_type,
        headers={
            "X-WCS": json.dumps(geom.wcs_keywords(), separators=(",", ":")),
            "X-Compose-Backend": result.backend,
            "X-Tiles-Used": str(result.tiles_used),
            **headers,
            # Where the time went (browsers' dev tools and the benchmark read it).
            "Server-Timing": server_timing(result, chain_s, timing),
        },
    )
