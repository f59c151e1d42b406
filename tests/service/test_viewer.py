"""The sky viewer page in a real headless Chromium against the real Serve application.

What a person does: open ``/``, drag, zoom, read the position under the pointer, change
the colormap, go to a position, share a link. The requests the page sends are read from
the browser's network log, the picture from the browser's own screenshots, and the sky
positions are checked with astropy on the ``X-WCS`` of the very request the page made.
"""

from __future__ import annotations

import io
import json
import re

import httpx
import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
from PIL import Image

from . import browser
from .serve_harness import SLOW_MACHINE_DEADLINES, ServeApp

SURVEYS = [
    {"name": "dss2-red", "url": "cds-dss2-red", "epoch": "1.1", "aliases": ["dss"]},
    {"name": "gaia-rv", "url": "cds-gaia-dr2-rv"},
    {"name": "dss2-color", "url": "cds-dss2-color"},
    # A second epoch with other pixels (the shared data has one epoch per survey).
    {"name": "dss2-red-e2", "url": "cds-spitzer-irac4", "epoch": "2.1", "aliases": ["dss"]},
    {"name": "irac4", "url": "cds-spitzer-irac4"},
]
# The Galactic centre in DSS2 red (FITS tiles: the colormap applies).
GC_HASH = "ra=266.4&dec=-28.9&fov=6&proj=TAN&survey=dss2-red&cmap=gray&stretch=linear"


@pytest.fixture(scope="module")
def hi4pi(tmp_path_factory):
    """The bundled HI4PI sample survey (the whole sky; it suggests a 180-degree first field)."""
    from skyrender.samples import build_sample_hips

    return build_sample_hips(tmp_path_factory.mktemp("hi4pi"))


@pytest.fixture(scope="module")
def app(upstream, hi4pi):
    surveys = [{**s, "url": f"{upstream.url}/{s['url']}"} for s in SURVEYS]
    surveys.append({"name": "hi4pi", "url": str(hi4pi)})
    # The first renders of a fresh application on a busy shared machine can take seconds.
    args = {
        "surveys": surveys,
        "build_sample_survey": False,
        "upstream": {"request_deadline_s": 30.0},
        "overload": SLOW_MACHINE_DEADLINES,
    }
    served = ServeApp(args)
    yield served
    served.close()


@pytest.fixture(scope="module")
def driver(app):
    why = browser.available()
    if why:
        pytest.fail(why)
    d = browser.start_chromium(1000, 700)
    yield d
    d.quit()


def open_view(driver, app, hash_: str) -> dict:
    """Load the page on a view, wait for its picture; the body of the last request it sent."""
    driver.get(f"{app.url}/viewer#{hash_}")
    driver.refresh()  # a hash-only change does not reload a page already open
    browser.wait_idle(driver)
    sent = browser.preview_requests(driver)
    assert sent, "the page sent no preview request"
    return sent[-1]


def wcs_of(app, body: dict) -> WCS:
    """The WCS of the picture the page asked for, from the service's X-WCS header."""
    r = app.client.post("/v1/preview", json=body)
    assert r.status_code == 200, r.text
    keys = json.loads(r.headers["x-wcs"])
    return WCS(fits.Header(keys)), keys


def canvas_pixels(driver) -> np.ndarray:
    """What the browser shows in the canvas (RGB), from its own screenshot."""
    canvas = driver.find_element("id", "sky")
    return np.asarray(Image.open(io.BytesIO(canvas.screenshot_as_png)).convert("RGB")).astype(int)


def actions(driver):
    from selenium.webdriver import ActionChains

    return ActionChains(driver, duration=0)  # one pointer move per step, no interpolation


def test_page_loads_without_console_errors(app, driver):
    driver.get(app.url + "/")
    browser.wait_idle(driver)
    assert re.search(r"/viewer#ra=[-0-9.]+&dec=[-0-9.]+&fov=", driver.current_url), driver.current_url
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    from selenium.webdriver.support.ui import Select

    surveys = [o.text for o in Select(driver.find_element("id", "survey")).options]
    assert surveys == ["dss", "gaia-rv", "dss2-color", "irac4", "hi4pi"]  # the two dss epochs are one survey
    epochs = [o.text for o in Select(driver.find_element("id", "epoch")).options]
    assert epochs == ["1.1", "2.1"]
    assert driver.find_element("id", "epoch-row").is_displayed()
    # The page and its files come from the package; anything else is a JSON 404.
    for name in ("viewer.js", "wcs.js", "viewer.css"):
        r = app.client.get(f"/viewer/{name}")
        assert r.status_code == 200 and r.headers["cache-control"] == "no-cache"
    assert app.client.get("/viewer/viewer.js").headers["content-type"].startswith("text/javascript")
    missing = app.client.get("/viewer/..%2Fviewer.py")
    assert missing.status_code == 404 and missing.json()["error"]


def test_surveys_endpoint_lists_the_catalogue(app):
    body = app.client.get("/v1/surveys").json()
    got = [(s["name"], s["epoch"], s["aliases"], s["default"]) for s in body["surveys"]]
    assert got == [
        ("dss2-red", "1.1", ["dss"], True),
        ("gaia-rv", None, [], False),
        ("dss2-color", None, [], False),
        ("dss2-red-e2", "2.1", ["dss"], False),
        ("irac4", None, [], False),
        ("hi4pi", None, [], False),
    ]
    by_name = {s["name"]: s for s in body["surveys"]}
    assert by_name["dss2-red"]["frame"] == "icrs" and by_name["dss2-red"]["orderMax"] == 3
    assert by_name["dss2-red"]["tileWidth"] == 512 and by_name["dss2-red"]["colour"] is False
    assert by_name["dss2-color"]["colour"] is True and by_name["dss2-color"]["orderMax"] == 7
    assert by_name["dss2-red"]["tileFormat"] == "fits" and by_name["dss2-color"]["tileFormat"] == "jpeg"
    assert by_name["gaia-rv"]["title"] and by_name["gaia-rv"]["available"] is True


def test_a_wide_first_view_fills_the_window_with_sky(app, driver):
    """HI4PI suggests a 180-degree first field: the page starts in AIT (TAN stops at 150 and
    stretches its edges), no wider than the window holds, so every pixel is sky."""
    sent = open_view(driver, app, "survey=hi4pi")
    width, height = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    assert (sent["width"], sent["height"]) == (width, height)
    assert sent["projection"] == "AIT" and "proj=AIT" in driver.current_url
    assert sent["ra"] == 0 and sent["dec"] == 0  # the survey's hips_initial_ra, _dec
    assert 150 < sent["fovDeg"] <= 180, sent
    # The picture the page asked for has sky in every pixel (none transparent)...
    r = app.client.post("/v1/preview", json=sent)
    assert r.status_code == 200, r.text
    alpha = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))[..., 3]
    assert alpha.shape == (height, width) and alpha.min() == 255
    # ... and the page shows it over the whole window: no empty (black) row or column.
    shown = canvas_pixels(driver)
    assert shown.shape[:2] == (height, width)
    lit = shown.sum(axis=2) > 0
    assert lit.any(axis=1).all() and lit.any(axis=0).all()
    # A view the URL gives whole is kept as it is.
    sent = open_view(driver, app, "ra=0&dec=0&fov=150&proj=TAN&survey=hi4pi")
    assert (sent["projection"], sent["fovDeg"]) == ("TAN", 150)


def test_drag_moves_the_next_request_by_the_dragged_amount(app, driver):
    before = open_view(driver, app, GC_HASH)
    wcs, keys = wcs_of(app, before)
    width, height = keys["NAXIS1"], keys["NAXIS2"]
    canvas = driver.find_element("id", "sky")
    dx, dy = 130, -70
    # From the centre of the canvas (Selenium's element origin), drag by (dx, dy).
    actions(driver).move_to_element(canvas).click_and_hold().move_by_offset(dx, dy).release().perform()
    browser.wait_idle(driver)
    after = browser.preview_requests(driver)
    assert after, "no request after the drag"
    # The sky that was under (centre - drag) is now the centre: astropy on the old picture's WCS.
    ra, dec = wcs.wcs_pix2world([width / 2 - dx - 0.5], [height - 0.5 - (height / 2 - dy)], 0)
    want = SkyCoord(ra[0] * u.deg, dec[0] * u.deg)
    got = SkyCoord(after[0]["ra"] * u.deg, after[0]["dec"] * u.deg)
    assert got.separation(want).arcsec < 0.01, (after[0], ra, dec)
    assert after[0]["fovDeg"] == before["fovDeg"] and after[-1] == after[0]
    # Moved by ~ the drag in pixels times the pixel scale.
    scale = before["fovDeg"] / max(width, height)
    moved = got.separation(SkyCoord(before["ra"] * u.deg, before["dec"] * u.deg)).deg
    assert moved == pytest.approx(np.hypot(dx, dy) * scale, rel=1e-3)
    assert f"ra={after[0]['ra']:.6f}" in driver.current_url  # the URL follows the view


def test_readout_at_a_pixel_equals_the_wcs(app, driver):
    body = open_view(driver, app, GC_HASH)
    wcs, keys = wcs_of(app, body)
    height = keys["NAXIS2"]
    canvas = driver.find_element("id", "sky")
    rect = canvas.rect
    for x, y in ((137, 411), (720, 95), (500, 300)):
        # Selenium offsets are from the element's centre.
        actions(driver).move_to_element_with_offset(
            canvas, x - rect["width"] // 2, y - rect["height"] // 2
        ).perform()
        text = browser.wait_for(
            lambda: (t := driver.find_element("id", "radec-deg").text) != "–" and t, what="readout"
        )
        ra_txt, dec_txt = (float(v.rstrip("°")) for v in text.split())
        # Canvas position (x, y) from the top left = 0-based FITS pixel (x - 0.5, height - 0.5 - y).
        ra, dec = wcs.wcs_pix2world([x - 0.5], [height - 0.5 - y], 0)
        want = SkyCoord(ra[0] * u.deg, dec[0] * u.deg)
        assert SkyCoord(ra_txt * u.deg, dec_txt * u.deg).separation(want).arcsec <= 1.0
        sexa = driver.find_element("id", "radec-sexa").text
        assert (
            SkyCoord(sexa.replace("°", "d").replace("'", "m").replace('"', "s")).separation(want).arcsec
            <= 1.0
        )
        l_txt, b_txt = (float(v.rstrip("°")) for v in driver.find_element("id", "lb-deg").text.split())
        gal = want.galactic
        assert SkyCoord(l_txt * u.deg, b_txt * u.deg, frame="galactic").separation(gal).arcsec <= 1.0
    bar = driver.find_element("css selector", "#scalebar .bar").size["width"]
    label = driver.find_element("css selector", "#scalebar .label").text
    length = {"°": 1.0, "′": 1 / 60, "″": 1 / 3600}[label[-1]] * float(label[:-1])
    assert bar * keys["CDELT2"] == pytest.approx(length, rel=0.01)


def test_colormap_changes_the_picture_to_the_apis(app, driver):
    open_view(driver, app, GC_HASH)
    gray = canvas_pixels(driver)
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", "colormap")).select_by_value("viridis")
    browser.wait_idle(driver)
    sent = browser.preview_requests(driver)
    assert sent[-1]["colormap"] == "viridis"
    shown = canvas_pixels(driver)
    region = (slice(150, 450), slice(300, 700))  # away from the panels over the canvas
    assert np.abs(shown[region] - gray[region]).mean() > 20  # grey became colour
    assert (np.ptp(gray[region], axis=2) <= 1).all()  # grey was grey
    # The canvas shows the API's picture (over black) pixel for pixel.
    r = app.client.post("/v1/preview", json=sent[-1])
    rgba = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA")).astype(float)
    want = (rgba[..., :3] * rgba[..., 3:] / 255).round()
    assert np.abs(shown[region] - want[region]).max() <= 2


def test_keys_and_wheel_zoom_about_the_pointer(app, driver):
    body = open_view(driver, app, GC_HASH)
    from selenium.webdriver.common.keys import Keys

    driver.find_element("id", "sky").send_keys("+")
    browser.wait_idle(driver)
    zoomed = browser.preview_requests(driver)[-1]
    assert zoomed["fovDeg"] == pytest.approx(body["fovDeg"] / 1.25)
    assert (zoomed["ra"], zoomed["dec"]) == pytest.approx((body["ra"], body["dec"]), abs=1e-7)
    driver.find_element("id", "sky").send_keys(Keys.ARROW_LEFT)
    browser.wait_idle(driver)
    moved = browser.preview_requests(driver)[-1]
    assert moved["ra"] > zoomed["ra"]  # looking east: RA grows to the left
    # The wheel zooms about the pointer: the sky under it stays under it.
    wcs, keys = wcs_of(app, moved)
    height = keys["NAXIS2"]
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    canvas = driver.find_element("id", "sky")
    x, y = 600, 150  # not under the controls
    origin = ScrollOrigin.from_element(canvas, x - canvas.rect["width"] // 2, y - canvas.rect["height"] // 2)
    actions(driver).scroll_from_origin(origin, 0, -240).perform()
    browser.wait_idle(driver)
    wheel = browser.preview_requests(driver)[-1]
    assert wheel["fovDeg"] < moved["fovDeg"]
    new_wcs, _ = wcs_of(app, wheel)
    px, py = x - 0.5, height - 0.5 - y
    a = SkyCoord(*wcs.wcs_pix2world([px], [py], 0), unit="deg")
    b = SkyCoord(*new_wcs.wcs_pix2world([px], [py], 0), unit="deg")
    assert a.separation(b).arcsec[0] < 0.01


def test_go_to_and_shared_link_restore_the_view(app, driver):
    shared = "ra=266.0&dec=-29.5&fov=3&proj=SIN&survey=dss2-red-e2&cmap=magma&stretch=sqrt&min=1%25&max=99%25"
    body = open_view(driver, app, shared)
    assert body == {
        "ra": 266.0, "dec": -29.5, "fovDeg": 3, "width": body["width"], "height": body["height"],
        "format": "png", "projection": "SIN", "colormap": "magma", "scale": "sqrt",
        "survey": "dss2-red-e2", "epoch": "2.1", "minCut": "1%", "maxCut": "99%",
    }  # fmt: skip
    assert driver.find_element("id", "epoch").get_attribute("value") == "dss2-red-e2"
    assert driver.find_element("id", "projection").get_attribute("value") == "SIN"
    box = driver.find_element("id", "goto")
    box.clear()
    box.send_keys("17 45 40.04 -29 00 28.1\n")
    browser.wait_idle(driver)
    went = browser.preview_requests(driver)[-1]
    want = SkyCoord("17h45m40.04s -29d00m28.1s")
    assert SkyCoord(went["ra"] * u.deg, went["dec"] * u.deg).separation(want).arcsec < 1e-3
    box.clear()
    box.send_keys("nowhere\n")
    assert "cannot read" in driver.find_element("id", "error").text


def test_api_errors_are_shown_as_text(app, driver):
    open_view(driver, app, GC_HASH)
    picture = canvas_pixels(driver)
    driver.execute_script("location.hash = arguments[0]", GC_HASH + "&max=lots")
    banner = browser.wait_for(lambda: driver.find_element("id", "error").text, what="error banner")
    assert "invalid request body (HTTP 422)" in banner and "maxCut" in banner, banner
    # The last good picture stays (dimmed: it is not of the asked view), never a broken image.
    assert canvas_pixels(driver)[200:400, 300:700].mean() > 0.2 * picture[200:400, 300:700].mean()
    r = httpx.post(f"{app.url}/v1/preview", json={"ra": 0, "dec": 0, "fovDeg": 1, "maxCut": "lots"})
    assert r.status_code == 422  # the same answer the page explained


def test_layers_epochs_contours_and_colour(app, driver):
    from selenium.webdriver.support.ui import Select

    open_view(driver, app, GC_HASH + "&stretch=asinh")
    single = canvas_pixels(driver)
    region = (slice(150, 450), slice(300, 700))
    seen = []
    for mode, path in (
        ("difference", "/v1/epochs/difference"),
        ("contours", "/v1/composite"),
        ("rgb", "/v1/composite"),
        ("blink", "/v1/epochs/blink"),
    ):
        Select(driver.find_element("id", "mode")).select_by_value(mode)
        browser.wait_idle(driver)
        sent = browser.api_requests(driver)
        assert sent and sent[-1][0] == path, (mode, sent)
        body = sent[-1][1]
        assert (body["ra"], body["dec"], body["fovDeg"]) == (266.4, -28.9, 6)
        assert driver.find_element("id", "error").text == ""
        assert f"mode={mode}" in driver.current_url
        seen.append((mode, body))
        r = app.client.post(path, json=body)
        assert r.status_code == 200 and "x-wcs" in r.headers, (mode, r.text[:300])
        if mode == "blink":
            anim = driver.find_element("id", "anim")
            assert anim.is_displayed() and anim.get_attribute("src").startswith("blob:")
            loaded = "return arguments[0].complete && arguments[0].naturalWidth"
            assert driver.execute_script(loaded, anim) == 1000
        else:
            shown = canvas_pixels(driver)
            assert np.abs(shown[region] - single[region]).mean() > 5, mode  # a different picture
    bodies = dict(seen)
    assert bodies["difference"]["survey"] == "dss" and bodies["difference"]["epochs"] == ["1.1", "2.1"]
    assert bodies["blink"]["epochs"] == ["1.1", "2.1"] and bodies["blink"]["format"] == "apng"
    contours = bodies["contours"]
    assert contours["mode"] == "contours" and contours["contours"]["levels"] == [3, 5, 10, 20]
    assert [layer["survey"] for layer in contours["layers"]] == ["dss2-red", "irac4"]
    assert contours["layers"][0]["epoch"] == "1.1"
    # The survey, then the other surveys' single bands (irac4, hi4pi) before its own other epoch.
    assert [layer["survey"] for layer in bodies["rgb"]["layers"]] == ["dss2-red", "irac4", "hi4pi"]
    # The readout still reads the picture's X-WCS in a layers mode.
    canvas = driver.find_element("id", "sky")
    actions(driver).move_to_element_with_offset(canvas, 100, 50).perform()
    assert browser.wait_for(lambda: driver.find_element("id", "radec-deg").text != "–", what="readout")
