"""Headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by Selenium.

Selenium is pointed at the installed browser and driver, so Selenium Manager never
downloads anything. The browser's console and network events are logged (read with
``driver.get_log("browser")`` and ``driver.get_log("performance")``).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def available() -> str | None:
    """None when a browser can be started, else why not."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            return f"{path} missing (scripts/test.sh installs Debian's chromium and chromium-driver as root)"
    return None


def start_chromium(width: int = 1000, height: int = 700):
    """A headless Chromium with a ``width`` x ``height`` window, logging console and network."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--force-device-scale-factor=1",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_window_size(width, height)
    return driver


def wait_for(condition: Callable[[], Any], timeout_s: float = 60.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout_s} s")
        time.sleep(0.05)


def wait_idle(driver, timeout_s: float = 60.0) -> None:
    """Until the viewer shows the picture of its current view with nothing pending."""
    try:
        wait_for(
            lambda: driver.execute_script("return window.skyViewer && window.skyViewer.idle()"),
            timeout_s,
            "viewer idle",
        )
    except TimeoutError as exc:
        state = driver.execute_script(
            "return JSON.stringify({events: window.skyViewer && window.skyViewer.events.slice(-6),"
            " view: window.skyViewer && window.skyViewer.state.view,"
            " error: document.getElementById('error').textContent})"
        )
        raise TimeoutError(f"{exc}; the page: {state}; console: {driver.get_log('browser')}") from None


def api_requests(driver) -> list[tuple[str, dict[str, Any]]]:
    """(path, JSON body) of the POST requests the page sent since the last call (network log)."""
    sent = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") != "Network.requestWillBeSent":
            continue
        request = message["params"]["request"]
        if request["method"] == "POST" and "postData" in request:
            path = "/" + request["url"].split("/", 3)[3]
            sent.append((path, json.loads(request["postData"])))
    return sent


def preview_requests(driver) -> list[dict[str, Any]]:
    """Bodies of the ``POST /v1/preview`` requests the page sent since the last call (network log)."""
    return [body for path, body in api_requests(driver) if path == "/v1/preview"]
