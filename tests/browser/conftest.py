"""Headless Chromium (Debian's `chromium` + `chromium-driver`) driven by Selenium, for the dashboard tests.

Nothing here downloads a browser or a driver: both paths are given explicitly, so Selenium Manager is never
asked to find (or fetch) one. Without them the browser tests are skipped with a reason saying what to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("TUNING_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = (
    os.environ.get("TUNING_TEST_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
)

# Flags Chromium needs as root on this closed network (no sandbox; no background calls home that would be
# refused many times over).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

LAPTOP = (1280, 900)
PHONE = (390, 844)


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} not found: apt-get install -y chromium chromium-driver ({package})"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium per test module, at laptop size, with a fresh empty profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-profile")
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={LAPTOP[0]},{LAPTOP[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    saved = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # belt and braces: Selenium Manager must never go online
    service = Service(executable_path=CHROMEDRIVER, log_output=subprocess.DEVNULL)
    driver = webdriver.Chrome(service=service, options=options)
    driver.downloads_dir = downloads
    try:
        yield driver
    finally:
        driver.quit()  # ends chromedriver and every chromium process it started
        if saved is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = saved


class Screenshots:
    """Saves screenshots under the module's temp dir. Each path is recorded on the test's report
    (`user_properties`), and tests/conftest.py lists them in the terminal summary, with or without -s and
    also from pytest-xdist workers."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.paths: list[Path] = []
        self.current: pytest.Item | None = None

    def save(self, driver: Any, name: str) -> Path:
        """The whole page (the window grows to the page's height for the shot, then goes back)."""
        path = self.folder / f"{len(self.paths) + 1:02d}-{name}.png"
        driver.execute_script("window.scrollTo(0, 0)")
        size = driver.get_window_size()
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(size["width"], min(max(int(height), size["height"]), 6000))
        try:
            assert driver.save_screenshot(str(path)), path
        finally:
            driver.set_window_size(size["width"], size["height"])
        self.paths.append(path)
        if self.current is not None:
            self.current.user_properties.append(("screenshot", str(path)))
        return path


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Screenshots]:
    yield Screenshots(tmp_path_factory.mktemp("screenshots"))


@pytest.fixture(autouse=True)
def _screenshots_of_this_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Points the module's Screenshots at the running test, whose report then carries the paths."""
    if "screenshots" not in request.fixturenames:
        yield
        return
    shots = request.getfixturevalue("screenshots")
    shots.current = request.node
    yield
    shots.current = None
