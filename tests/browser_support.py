"""What the browser tests share: Debian's chromium under playwright, the waits they all need.

Needs `apt-get install -y chromium` and `pip install playwright`; never `playwright install`
(it downloads a browser of its own). The flags are DEVELOPERS.md's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
]
TIMEOUT_MS = 90_000  # the 2-core CI box is shared


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless system chromium (a playwright Browser); the test fails, saying how to install it."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium with `apt-get install -y chromium`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: `pip install playwright` (never `playwright install`)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS)
        try:
            yield browser
        finally:
            browser.close()


def video_duration(page: Any, selector: str) -> float:
    """Wait until the video under `selector` has loaded its metadata; its duration in seconds."""
    handle = page.wait_for_function(
        """(selector) => {
            const v = document.querySelector(`${selector} video`);
            return v && v.readyState >= 1 && isFinite(v.duration) && v.duration > 0 ? v.duration : null;
        }""",
        arg=selector,
    )
    return handle.json_value()


def open_settings(page: Any) -> None:
    """Open the page's Settings (collapsed by default) unless they are open already."""
    seed = page.locator("#seed input")
    if not seed.is_visible():
        page.locator("#settings").get_by_text("Settings", exact=True).first.click()
        seed.wait_for()


def cancel_and_wait(page: Any, selector: str) -> None:
    """Click the Cancel button at `selector` and wait until the server has answered the page's cancel.

    The server answers once the job has stopped (after its current flow step) and its handler has
    returned, logging included: the pipeline's lock alone is released before that, so a test
    waiting for the lock could look at the log too early.
    """
    with page.expect_response(lambda response: response.url.endswith("/gradio_api/cancel")) as answer:
        page.locator(selector).click()
    assert answer.value.ok, f"the cancel request failed: HTTP {answer.value.status}"
