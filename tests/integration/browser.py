"""One headless Chromium for the page tests: Playwright driving Debian's chromium, waiting in real time.

``--virtual-time-budget`` with ``--dump-dom`` was tried first and is flaky: virtual time does not wait for a
WebSocket to open, so a loaded CI machine dumped the page before it was live. Playwright waits for what the
test names instead.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (.ci/run installs it)")


@asynccontextmanager
async def open_page(url: str, width: int = 1400, height: int = 900) -> AsyncIterator[Any]:
    """A fresh browser page at ``url``; the browser is closed however the test ends."""
    playwright = pytest.importorskip("playwright.async_api")
    async with playwright.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": width, "height": height})
            await page.goto(url)
            yield page
        finally:
            await browser.close()
