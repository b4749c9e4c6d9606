"""A headless Chromium for the console's browser tests: Debian's `chromium`, driven by
Playwright (no browser download). Without one these tests are skipped with a note, unless
CALLBRIDGE_REQUIRE_SERVICES=1 (CI), where they fail."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser")


def find_chromium() -> tuple[str | None, str]:
    given = os.environ.get("CALLBRIDGE_CHROMIUM")
    if given:
        return (
            (given, "")
            if Path(given).is_file()
            else (None, f"CALLBRIDGE_CHROMIUM={given} is not a file")
        )
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found, ""
    return None, "no chromium on PATH (Debian: apt-get install chromium)"


def _unavailable(why: str) -> None:
    message = f"the browser tests need a headless Chromium: {why}"
    if os.environ.get("CALLBRIDGE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message}; CALLBRIDGE_REQUIRE_SERVICES=1 requires it")
    pytest.skip(f"{message}; skipped")


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    chromium, why = find_chromium()
    if chromium is None:
        _unavailable(why)
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed (make install)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium,
            # Root (CI, containers) has no user namespace sandbox to offer.
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where the tests save screenshots: a temporary folder, or CALLBRIDGE_SCREENSHOTS
    (to refresh docs/console/)."""
    folder = Path(os.environ.get("CALLBRIDGE_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
