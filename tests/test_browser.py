"""The app in a real browser: Debian's chromium driven by playwright, the real pipeline on the tiny Hub.

Needs `apt-get install -y chromium` and `pip install playwright`; never run
`playwright install` (we use the system chromium). Screenshots go to the test's
tmp folder; docs/ui.png (the README's) is written when missing, or refreshed
with SELVA_UPDATE_SCREENSHOT=1.
"""

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from media_factory import make_video

import app

pytestmark = pytest.mark.browser

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
README_SHOT = Path(__file__).resolve().parents[1] / "docs" / "ui.png"
SHOT_LIMIT = 300_000  # bytes: the README image is committed
TIMEOUT_MS = 90_000  # the 2-core CI box is shared


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium with `apt-get install -y chromium`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: `pip install playwright` (never `playwright install`)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app_server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app_server.url)
    page.wait_for_selector("#generate")
    yield page
    context.close()


def upload(page, path: Path) -> None:
    page.locator("#input-video input[type=file]").set_input_files(str(path))
    page.wait_for_selector("#input-video video")  # the upload finished and the preview shows


def result_duration(page, player: int = 1) -> float:
    """Wait until result player `player` has loaded a video, and return its duration in seconds."""
    handle = page.wait_for_function(
        """(id) => {
            const v = document.querySelector(`#result-${id} video`);
            return v && v.readyState >= 1 && isFinite(v.duration) && v.duration > 0 ? v.duration : null;
        }""",
        arg=player,
    )
    return handle.json_value()


def download_links(page) -> dict[str, str]:
    """File name -> URL of each entry in the downloads list."""
    page.wait_for_selector("#downloads a")
    urls = page.locator("#downloads a").evaluate_all("(as) => as.map(a => a.href)")
    return {Path(url.split("?")[0]).name: url for url in urls}


def test_upload_prompt_generate_and_download(page, tmp_path):
    clip = tmp_path / "dog_and_car.mp4"  # a synthetic clip (see examples/make_examples.py)
    shutil.copy(app.EXAMPLES_DIR / "dog_and_car.mp4", clip)
    upload(page, clip)
    page.locator("#prompt textarea").fill("dog barking")
    page.locator("#negative-prompt textarea").fill("car engine")
    page.locator("#generate").click()

    assert result_duration(page) == pytest.approx(5.0, abs=0.15)  # auto: the whole 5 s clip
    info = page.locator("#info textarea")
    info.wait_for()
    page.wait_for_function("() => document.querySelector('#info textarea').value.includes('seed')")
    assert "tiny_16k on cpu" in info.input_value() and "5.00 s from 0.00 s" in info.input_value()

    links = download_links(page)
    assert {Path(name).suffix for name in links} == {".flac", ".wav"}
    flac = next(url for name, url in links.items() if name.endswith(".flac"))
    response = page.request.get(flac)
    assert response.ok and response.body()[:4] == b"fLaC"

    shot = tmp_path / "ui.png"
    page.screenshot(path=str(shot), full_page=True)
    assert 0 < shot.stat().st_size < SHOT_LIMIT
    if not README_SHOT.exists() or os.environ.get("SELVA_UPDATE_SCREENSHOT") == "1":
        README_SHOT.parent.mkdir(exist_ok=True)
        shutil.copy(shot, README_SHOT)


def test_a_bad_upload_shows_the_error_and_the_next_request_works(page, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video" * 100)
    page.locator("#input-video input[type=file]").set_input_files(str(broken))
    page.locator("#prompt textarea").fill("dog barking")
    page.locator("#generate").click()

    toast = page.locator(".toast-body", has_text="not a media file")
    toast.wait_for()
    assert "broken.mp4" in toast.inner_text()
    assert "Traceback" not in page.content()
    page.screenshot(path=str(tmp_path / "error.png"))

    # the player and its toolbar each have a Clear button; the player's empties the input
    page.locator("#input-video button[aria-label='Clear']").last.click()
    upload(page, make_video(tmp_path / "good.mp4", seconds=2.0))
    page.locator("#generate").click()
    assert result_duration(page) == pytest.approx(2.0, abs=0.15)
    page.wait_for_function("() => document.querySelector('#info textarea').value.includes('2.00 s from')")


def set_number(page, label: str, value: float) -> None:
    box = page.get_by_label(f"number input for {label}")
    box.fill(str(value))
    box.press("Enter")


def test_progress_shows_the_steps_and_cancel_stops_the_job(page, app_server, tmp_path, caplog):
    caplog.set_level("INFO", logger="selva.app")
    upload(page, make_video(tmp_path / "clip.mp4", seconds=6.0))
    page.locator("#prompt textarea").fill("dog barking")
    set_number(page, "Steps", 100)
    set_number(page, "Candidates", 4)  # a slow job: four candidates, a hundred steps, 6 s
    page.locator("#generate").click()

    page.get_by_text(re.compile(r"Generating: step \d+/100")).first.wait_for()
    page.locator("#cancel").click()
    slot = app_server.demo.studio.slot
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while slot.lock.locked() and time.monotonic() < deadline:  # stops after the current step
        time.sleep(0.1)
    assert not slot.lock.locked()
    assert "generation cancelled by the user" in caplog.text  # the pipeline stopped between steps
    assert page.locator("#result-1 video").count() == 0

    set_number(page, "Steps", 3)
    set_number(page, "Candidates", 2)
    page.locator("#generate").click()
    assert result_duration(page, 2) == pytest.approx(6.0, abs=0.15)
    assert page.locator("#result-3").is_hidden()


def test_an_example_fills_the_inputs_and_shows_its_cached_result(page):
    label = "dog_and_car: car engine passing by"
    page.get_by_role("button", name=label).click()
    assert result_duration(page) == pytest.approx(5.0, abs=0.15)  # generated on first use, then cached
    assert page.locator("#prompt textarea").input_value() == "car engine passing by"
    assert page.locator("#negative-prompt textarea").input_value() == "dog barking"
    assert f"seed {app.EXAMPLE_SEED}" in page.locator("#info textarea").input_value()
