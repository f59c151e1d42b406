"""The viewer's pixel -> sky (deployments/static/viewer/wcs.js, run by node) against astropy.

Every projection the viewer offers, at several centres (poles, RA 0/360, both
hemispheres) and with rotation, on the headers the service itself puts in X-WCS.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord

from skyrender.geometry import make_geometry

from .serve_harness import REPO_ROOT

WCS_JS = REPO_ROOT / "deployments" / "static" / "viewer" / "wcs.js"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

PROJECTIONS = ["TAN", "SIN", "ARC", "STG", "ZEA", "CAR", "MER", "AIT", "MOL"]
FIELDS = [  # ra, dec, fov [deg], width, height, rotation [deg]
    (83.8, -5.4, 2.0, 640, 480, 0.0),
    (0.3, 62.0, 30.0, 500, 700, 0.0),
    (359.9, -89.5, 10.0, 400, 400, 0.0),
    (266.4, -28.9, 120.0, 800, 400, 25.0),
    (180.0, 0.0, 360.0, 720, 360, 0.0),
    (10.0, 45.0, 0.01, 300, 200, -60.0),
]


def _run_js(script: str) -> object:
    out = subprocess.run(
        [NODE, "--input-type=module"], input=script, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_pixel_to_sky_equals_astropy():
    rng = np.random.default_rng(12)
    cases = []
    for proj in PROJECTIONS:
        for ra, dec, fov, w, h, rot in FIELDS:
            if proj in ("TAN", "SIN") and fov > 120:
                continue
            geom = make_geometry(ra, dec, fov, w, h, proj, rot)
            px = rng.uniform(-0.5, w - 0.5, 200)
            py = rng.uniform(-0.5, h - 0.5, 200)
            lon, lat = geom.wcs.wcs_pix2world(px, py, 0)
            cases.append(
                {"keys": geom.wcs_keywords(), "px": px.tolist(), "py": py.tolist(), "lon": lon, "lat": lat}
            )
    script = f"""
import {{ Wcs }} from {json.dumps(WCS_JS.as_uri())};
const cases = {json.dumps([{"keys": c["keys"], "px": c["px"], "py": c["py"]} for c in cases])};
console.log(JSON.stringify(cases.map((c) => {{
  const w = new Wcs(c.keys);
  return c.px.map((x, i) => w.pixToWorld(x, c.py[i]));
}})));
"""
    results = _run_js(script)
    checked = 0
    for case, got in zip(cases, results, strict=True):
        lon, lat = case["lon"], case["lat"]
        for i, g in enumerate(got):
            if not np.isfinite(lon[i]):  # astropy: off the projection; the viewer must agree
                assert g is None, (case["keys"]["CTYPE1"], case["px"][i], case["py"][i], g)
                continue
            assert g is not None, (case["keys"]["CTYPE1"], case["px"][i], case["py"][i])
            sep = SkyCoord(g[0] * u.deg, g[1] * u.deg).separation(SkyCoord(lon[i] * u.deg, lat[i] * u.deg))
            assert sep.arcsec < 1e-3, (case["keys"], case["px"][i], case["py"][i], g, lon[i], lat[i])
            checked += 1
    assert checked > 8000


def test_galactic_and_sexagesimal_equal_astropy():
    rng = np.random.default_rng(3)
    ra = rng.uniform(0, 360, 300)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, 300)))
    script = f"""
import {{ icrsToGal, galToIcrs, parseRaDec, formatRa, formatDec }} from {json.dumps(WCS_JS.as_uri())};
const ra = {json.dumps(ra.tolist())}, dec = {json.dumps(dec.tolist())};
const gal = ra.map((r, i) => icrsToGal(r, dec[i]));
const back = gal.map(([l, b]) => galToIcrs(l, b));
const parsed = ["05 35 17.3 -05 23 28", "05:35:17.3 -05:23:28", "5h35m17.3s -5d23m28s", "83.82 -5.39",
                "00 00 00 +00 00 00", "23:59:59.99 +89:59:59.9"].map(parseRaDec);
const bad = ["", "abc", "400 10", "10 95", "25 00 00 +10 00 00", "1 2 3"].map((s) => {{
  try {{ parseRaDec(s); return null; }} catch (e) {{ return e.message; }}
}});
console.log(JSON.stringify({{gal, back, parsed, bad, text: [formatRa(83.822083), formatDec(-5.391111)]}}));
"""
    out = _run_js(script)
    want = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs").galactic
    got = SkyCoord([g[0] for g in out["gal"]] * u.deg, [g[1] for g in out["gal"]] * u.deg, frame="galactic")
    assert want.separation(got).arcsec.max() < 0.1
    back = SkyCoord([g[0] for g in out["back"]] * u.deg, [g[1] for g in out["back"]] * u.deg)
    assert SkyCoord(ra * u.deg, dec * u.deg).separation(back).arcsec.max() < 1e-3
    orion = SkyCoord("05h35m17.3s -05d23m28s")
    for ra_dec in out["parsed"][:3]:
        assert SkyCoord(ra_dec[0] * u.deg, ra_dec[1] * u.deg).separation(orion).arcsec < 1e-6
    assert out["parsed"][3] == [83.82, -5.39]
    assert out["parsed"][4] == [0, 0]
    assert abs(out["parsed"][5][1] - (90 - 0.1 / 3600)) < 1e-9
    assert all(isinstance(m, str) and m for m in out["bad"]), out["bad"]
    assert out["text"] == ["05h35m17.30s", "-05°23'28.0\""]
