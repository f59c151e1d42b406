"""ETags and If-None-Match matching (the pure part of the service's HTTP caching)."""

from __future__ import annotations

from deployments.http_cache import (
    CachePolicy,
    if_none_match,
    strong_etag,
    survey_release,
)

PROPS = {"creator_did": "ivo://CDS/P/DSS2/red", "hips_release_date": "2019-05-07T08:44Z", "hips_order": "9"}


def test_etag_is_strong_quoted_and_stable():
    tag = strong_etag({"ra": 1.0, "dec": 2}, "0.1.0")
    assert tag.startswith('"') and tag.endswith('"') and not tag.startswith("W/")
    assert tag == strong_etag({"dec": 2, "ra": 1}, "0.1.0")  # key order and 1 vs 1.0 do not matter


def test_etag_changes_with_request_version_and_release():
    release = survey_release("dss2", "http://x/dss2", PROPS)
    base = strong_etag({"fovDeg": 1.0}, release, "0.1.0")
    assert base != strong_etag({"fovDeg": 1.5}, release, "0.1.0")
    assert base != strong_etag({"fovDeg": 1.0}, release, "0.2.0")
    newer = survey_release("dss2", "http://x/dss2", {**PROPS, "hips_release_date": "2026-01-01T00:00Z"})
    assert base != strong_etag({"fovDeg": 1.0}, newer, "0.1.0")
    assert newer["hips_release_date"] == "2026-01-01T00:00Z"


def test_if_none_match():
    tag = strong_etag("x")
    assert if_none_match(tag, tag)
    assert if_none_match(f'"other", W/{tag}', tag)  # weak comparison, any member of the list
    assert if_none_match("*", tag)
    assert not if_none_match('"other"', tag) and not if_none_match(None, tag) and not if_none_match("", tag)


def test_cache_control():
    assert CachePolicy(60).cache_control() == "public, max-age=60"
