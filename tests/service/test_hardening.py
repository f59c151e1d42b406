"""Input hardening without Ray: the root policy (SSRF) and the disk cache tier."""

from __future__ import annotations

import os

import pytest

from deployments.disk_cache import DiskTileCache
from deployments.upstream import RootPolicy, URLNotAllowed

ROOT = "http://127.0.0.1:8080/hips/dss2"


@pytest.fixture()
def policy(tmp_path):
    (tmp_path / "survey").mkdir()
    return RootPolicy([ROOT, str(tmp_path / "survey")]), tmp_path


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hips/dss2/Norder3/Dir0/Npix1.fits",
        "http://127.0.0.1:8080/hips/dss2/./Norder3/Dir0/Npix1.fits",
        "http://127.0.0.1:8080/hips/dss2/Norder3/Dir0/Npix1.fits?x=1",
    ],
)
def test_urls_under_the_root_pass(policy, url):
    assert policy[0].check(url).startswith("http://127.0.0.1:8080/hips/dss2/")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.2:8080/hips/dss2/Norder3/Dir0/Npix1.fits",  # other host
        "http://127.0.0.1:8081/hips/dss2/Norder3/Dir0/Npix1.fits",  # other port
        "https://127.0.0.1:8080/hips/dss2/Norder3/Dir0/Npix1.fits",  # other scheme
        "http://127.0.0.1:8080/hips/dss2/../secret/Npix1.fits",  # .. escape
        "http://127.0.0.1:8080/hips/dss2/%2e%2e/secret/Npix1.fits",  # encoded ..
        "http://127.0.0.1:8080/hips/dss2%2f..%2fsecret/Npix1.fits",
        "http://127.0.0.1:8080/hips/dss2x/Norder3/Dir0/Npix1.fits",  # prefix trick
        "http://root@127.0.0.1:8080/hips/dss2/Norder3/Dir0/Npix1.fits",  # userinfo
        "http://127.0.0.1:8080@evil.example/hips/dss2/Norder3/Dir0/Npix1.fits",
        "http://evil.example#@127.0.0.1:8080/hips/dss2/Norder3/Dir0/Npix1.fits",
        "http://127.0.0.1:8080\\@evil.example/hips/dss2/x",
        "file:///etc/passwd",
        "ftp://127.0.0.1:8080/hips/dss2/Norder3/Dir0/Npix1.fits",
        "gopher://127.0.0.1:8080/hips/dss2/",
        "/etc/passwd",
        "relative/path",
    ],
)
def test_everything_else_is_refused(policy, url):
    with pytest.raises(URLNotAllowed):
        policy[0].check(url)


def test_local_roots_refuse_symlink_and_dotdot_escapes(policy):
    pol, tmp = policy
    (tmp / "secret.txt").write_text("no")
    (tmp / "survey" / "link").symlink_to(tmp / "secret.txt")
    (tmp / "survey" / "ok.fits").write_bytes(b"x")
    assert pol.check(str(tmp / "survey" / "ok.fits")).endswith("ok.fits")
    for bad in (str(tmp / "survey" / "link"), str(tmp / "survey" / ".." / "secret.txt")):
        with pytest.raises(URLNotAllowed):
            pol.check(bad)


def test_disk_cache_budget_lru_and_restart(tmp_path):
    cache = DiskTileCache(tmp_path / "c", max_bytes=3000)
    for i in range(3):
        cache.put(f"k{i}", bytes([i]) * 1000)
        os.utime(cache._path(f"k{i}"), (1000 + i, 1000 + i))  # make the LRU order explicit
    assert cache.get("k0") == b"\x00" * 1000  # k0 becomes the most recent
    cache.put("k3", b"3" * 1000)  # over budget: the least recent (k1) goes
    assert cache.get("k1") is None and cache.get("k0") is not None and cache.get("k3") is not None
    assert cache.bytes_held <= 3000 and cache.counters["evictions"] == 1
    reopened = DiskTileCache(tmp_path / "c", max_bytes=3000)  # a restart keeps the tiles
    assert reopened.bytes_held == cache.bytes_held and reopened.get("k3") == b"3" * 1000
    cache.put("huge", b"x" * 5000)  # larger than the whole budget: not stored, no error
    assert cache.get("huge") is None


def test_disk_cache_full_disk_evicts_and_goes_on(tmp_path, monkeypatch):
    cache = DiskTileCache(tmp_path / "c", max_bytes=10_000)
    for i in range(4):
        cache.put(f"k{i}", b"y" * 2000)
    real_write = type(tmp_path).write_bytes

    def full(self, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(tmp_path), "write_bytes", full)
    cache.put("k9", b"z" * 2000)  # no exception
    monkeypatch.setattr(type(tmp_path), "write_bytes", real_write)
    assert cache.counters["errors"] == 1 and cache.bytes_held <= 5000
    cache.put("k10", b"z" * 100)
    assert cache.get("k10") == b"z" * 100
