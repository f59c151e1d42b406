"""How long a pan in the viewer takes to show a new picture, in a real headless Chromium.

Starts the real Serve application with a loopback HTTP upstream serving CDS tiles, opens
the viewer, and drags the sky N times; the page times each one from the end of the drag
(pointer up) to the new picture drawn on the canvas. In the same run the same views are
asked of ``POST /v1/preview`` directly (httpx, no browser): the ratio is what the browser
adds (decoding, drawing, the page's own scheduling).

    python bench/bench_viewer.py                       # full (30 pans)
    python bench/bench_viewer.py --short               # CI (8 pans)
    python bench/bench_viewer.py --screenshot docs/img/viewer.png   # also the README's picture
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.service import browser  # noqa: E402
from tests.service.loopback import StaticHips  # noqa: E402
from tests.service.serve_harness import ServeApp  # noqa: E402
from tests.shared_dir import SHARED_DIR  # noqa: E402

HIPS = SHARED_DIR / "data" / "hips"
PAN_VIEW = "ra=266.4&dec=-28.9&fov=5&proj=TAN&survey=dss2-red&cmap=gray&stretch=asinh"
SHOT_VIEW = "ra=84.6&dec=-1.2&fov=6&proj=TAN&survey=dss2-color"  # Orion's belt, the Horsehead at lower left


def pan_times(driver, n: int) -> tuple[list[float], list[dict]]:
    """Drag ``n`` times; [ms] from each pointer up to the new picture drawn, and the bodies asked."""
    from selenium.webdriver import ActionChains

    canvas = driver.find_element("id", "sky")
    times, bodies = [], []
    for i in range(n):
        dx, dy = (90, 50) if i % 4 < 2 else (-90, -50)  # wander and come back: some tiles new, some warm
        seen = driver.execute_script("return window.skyViewer.events.length")
        ActionChains(driver, duration=0).move_to_element(canvas).click_and_hold().move_by_offset(
            dx, dy
        ).release().perform()
        browser.wait_idle(driver)
        events = driver.execute_script("return window.skyViewer.events.slice(arguments[0])", seen)
        pans = [e["ms"] for e in events if e["type"] == "pan-to-picture"]
        assert pans, f"no picture after the drag: {events}"
        times.append(pans[-1])
        bodies.append(next(e["body"] for e in reversed(events) if e["type"] == "request"))
    return times, bodies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="CI mode: fewer pans")
    parser.add_argument("--screenshot", type=Path, help="write a screenshot of the viewer here (PNG)")
    args = parser.parse_args(argv)
    why = browser.available()
    if why:
        print(f"bench_viewer: cannot start a browser: {why}", file=sys.stderr)
        return 1
    n = 8 if args.short else 30
    upstream = StaticHips(HIPS)
    app = ServeApp(
        {
            "surveys": [
                {"name": "dss2-red", "url": f"{upstream.url}/cds-dss2-red"},
                {"name": "dss2-color", "url": f"{upstream.url}/cds-dss2-color"},
                {"name": "gaia-rv", "url": f"{upstream.url}/cds-gaia-dr2-rv"},
            ],
            "build_sample_survey": False,
        }
    )
    driver = browser.start_chromium(1200, 800)
    try:
        mode = 'short' if args.short else 'full'
        print(f"# skyrender viewer benchmark ({mode}), headless Chromium, loopback")
        if args.screenshot:
            driver.get(f"{app.url}/viewer#{SHOT_VIEW}")
            browser.wait_idle(driver)
            from selenium.webdriver import ActionChains

            canvas = driver.find_element("id", "sky")
            # The pointer on the Horsehead, so the readout shows a position.
            ActionChains(driver, duration=0).move_to_element_with_offset(canvas, -130, 252).perform()
            time.sleep(0.3)
            args.screenshot.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.screenshot))
            print(f"screenshot: {args.screenshot}")
        driver.get(f"{app.url}/viewer#{PAN_VIEW}")
        driver.refresh()
        browser.wait_idle(driver)
        pan_times(driver, 2)  # warm-up: first pictures, JIT in the page
        times, bodies = pan_times(driver, n)
        size = f"{bodies[0]['width']}x{bodies[0]['height']}"
        direct = []
        for body in bodies:  # the same views, straight from the API
            t0 = time.perf_counter()
            r = app.client.post("/v1/preview", json=body)
            direct.append((time.perf_counter() - t0) * 1e3)
            assert r.status_code == 200, r.text[:300]
        p50, p95 = np.percentile(times, [50, 95])
        d50 = float(np.median(direct))
        print(f"pan -> new picture drawn ({n} drags, {size} PNG): p50 {p50:.0f} ms, p95 {p95:.0f} ms")
        print(f"same views via POST /v1/preview (httpx, no browser): p50 {d50:.0f} ms")
        print(f"ratio browser / API p50: {p50 / d50:.2f}  (machine shared: compare ratios, not absolutes)")
        print(json.dumps({"pan_to_picture_ms_p50": round(p50, 1), "api_ms_p50": round(d50, 1), "pans": n}))
    finally:
        driver.quit()
        app.close()
        upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
