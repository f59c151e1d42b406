"""HTTP caching of what the service renders: strong ETags and conditional requests.

An image's bytes are fixed by the normalised request (every field after defaults), the
survey it is drawn from (its identity and release: the ``properties`` file, whose
``hips_release_date`` changes with every new release), the service version and the
rendering configuration (compression level, JPEG quality...). The ETag is a digest of
exactly those, so it is known *before* rendering: a matching ``If-None-Match`` on a GET or HEAD is
answered ``304`` without any work (a POST's answer is not a representation of its URL, so
POST renders carry the ETag but take no conditional request).

Pure functions, no Ray, no FastAPI.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CachePolicy:
    """How long a response may be reused.

    Attributes
    ----------
    max_age_s : int
        Freshness lifetime [s] given to browsers and shared caches.
    """

    max_age_s: int = 3600

    def cache_control(self) -> str:
        """The ``Cache-Control`` value of a rendered image or a survey file."""
        # `public`: the same request gives the same bytes to anyone (no per-user content).
        return f"public, max-age={self.max_age_s}"


def _canonical(value: Any) -> Any:
    """JSON-ready form with a single spelling for every value (floats by repr, sorted keys)."""
    if callable(getattr(value, "wcs_keywords", None)):  # an output geometry: its WCS and size
        return _canonical([value.wcs_keywords(), value.width, value.height, value.frame])
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _canonical({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float):
        # 1 and 1.0 render the same image: one spelling for both; NaN never reaches here.
        return int(value) if math.isfinite(value) and value.is_integer() else repr(value)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def strong_etag(*parts: Any) -> str:
    """A strong entity tag (quoted, RFC 9110 §8.8.3) for the given description of a response.

    Parameters
    ----------
    *parts
        JSON-like values (mappings, sequences, numbers, strings); their order matters.

    Returns
    -------
    str
        ``"<43 base64url characters of SHA-256>"``.
    """
    text = json.dumps(_canonical(list(parts)), separators=(",", ":"), ensure_ascii=True)
    digest = hashlib.sha256(text.encode()).digest()
    return '"' + base64.urlsafe_b64encode(digest).decode().rstrip("=") + '"'


def survey_release(name: str, url: str, properties: Mapping[str, str]) -> dict[str, Any]:
    """What identifies a survey and its release, for ETags.

    Parameters
    ----------
    name, url : str
        The configured survey name and root.
    properties : Mapping
        The survey's HiPS ``properties`` (``hips_release_date``, ``creator_did``...).

    Returns
    -------
    dict
        Name, root, ``creator_did``, ``hips_release_date`` and a digest of every property
        (a re-tiled survey whose date was not bumped still changes its ``properties``
        when its orders, cuts or formats change).
    """
    props = {str(k): str(v) for k, v in properties.items()}
    digest = hashlib.sha256(json.dumps(props, sort_keys=True).encode()).hexdigest()[:32]
    return {
        "name": name,
        "url": url,
        "creator_did": props.get("creator_did") or props.get("publisher_did"),
        "hips_release_date": props.get("hips_release_date"),
        "properties_sha256": digest,
    }


def _opaque(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def if_none_match(header: str | None, etag: str) -> bool:
    """True when an ``If-None-Match`` field value matches ``etag`` (weak comparison, RFC 9110 §13.1.2).

    ``*`` matches any current representation; a list matches when any member does.
    """
    if not header:
        return False
    if header.strip() == "*":
        return True
    wanted = _opaque(etag)
    return any(_opaque(tag) == wanted for tag in header.split(",") if tag.strip())
