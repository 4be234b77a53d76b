"""The workspace in a real browser: Debian's chromium driven by playwright, the tiny pipeline.

One page for the whole module (the 2-core CI box is shared): the tests run in file order on it,
each leaving the page in a known state; `two_sounds` is the generation the later tests build on.
Needs `apt-get install -y chromium` and `pip install playwright`; never `playwright install`.
"""

from urllib.parse import unquote

import pytest
from browser_support import TIMEOUT_MS, chromium, open_settings, video_duration
from media_factory import make_video

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def page(browser, app_server):
    page = browser.new_page(viewport=DESKTOP)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app_server.url)
    page.wait_for_selector("#generate")
    yield page
    page.close()


def set_number(page, selector: str, value: float) -> None:
    open_settings(page)  # most numbers are Settings (collapsed at first)
    box = page.locator(selector)
    box.fill(str(value))
    box.press("Enter")


def mix_info(page, needle: str) -> str:
    """Wait until the mix info line holds `needle`; returns it."""
    handle = page.wait_for_function(
        """(needle) => {
            const v = document.querySelector('#mix-info textarea')?.value || '';
            return v.includes(needle) ? v : null;
        }""",
        arg=needle,
    )
    return handle.json_value()


def waveform_width(page, selector: str) -> float:
    """Wait until the audio player at `selector` has drawn its waveform (wavesurfer's canvas); its width."""
    handle = page.wait_for_function(
        """(selector) => {
            const root = document.querySelector(`${selector} #waveform > div`)?.shadowRoot;
            for (const canvas of root ? root.querySelectorAll('canvas') : []) {
                const box = canvas.getBoundingClientRect();
                if (canvas.width > 0 && box.width > 0 && box.height > 0) return box.width;
            }
            return null;
        }""",
        arg=selector,
    )
    return handle.json_value()


def test_video_first_prompt_and_generate_lie_in_the_first_viewport(page):
    in_first_viewport(page, ("#input-video", "#prompt", "#generate"), DESKTOP["height"])
    assert page.locator("#stems").is_hidden()  # no second editor on the page
    assert page.locator("#sound-row-2").is_hidden()  # one sound to start
    assert page.locator("#seed input").is_hidden()  # Settings start collapsed


@pytest.fixture(scope="module")
def two_sounds(page, tmp_path_factory) -> str:
    """Sound 1 in the page's prompt, Add a sound, sound 2; a 1 s clip, 2 steps, seed 7: the mix info."""
    clip = make_video(tmp_path_factory.mktemp("browser_workspace") / "street.mp4", seconds=1.0)
    page.locator("#input-video input[type=file]").set_input_files(str(clip))
    page.wait_for_selector("#input-video video")
    set_number(page, "input[aria-label='number input for Steps']", 2)
    page.locator("#prompt textarea").fill("dog barking")
    page.locator("#add-sound").click()
    page.locator("#sound-row-2").wait_for()
    page.locator("#sound-prompt-2 textarea").fill("car engine")
    set_number(page, "#seed input", 7)
    page.locator("#generate").click()
    return mix_info(page, "seed 8")


def test_two_sounds_generate_one_result_area_with_both(page, two_sounds):
    assert "1. 'dog barking' seed 7" in two_sounds and "2. 'car engine' seed 8" in two_sounds
    assert page.locator("#workspace-result").is_visible()
    assert video_duration(page, "#mix-video") == pytest.approx(1.0, abs=0.1)
    for k, prompt in ((1, "dog barking"), (2, "car engine")):
        assert page.locator(f"#sound-label-{k}").inner_text().strip() == f"Sound {k}: {prompt}"
        assert waveform_width(page, f"#take-{k}-1") > 50
    assert page.locator("#sound-result-3").is_hidden() and page.locator("#sound-result-4").is_hidden()
    assert page.locator("#candidates-area").is_hidden()  # one result area: no cards besides it
    href = page.locator("#project-file a").first.get_attribute("href")
    assert href.endswith(".selva.json") and page.request.get(href).ok
    zipped = page.locator("#bundle a").first.get_attribute("href")  # the bundle, named by sounds and seeds
    assert unquote(zipped.split("?")[0]).endswith("/1-dog-barking_seed7+2-car-engine_seed8.zip")
    body = page.request.get(zipped).body()
    assert body[:2] == b"PK"


def test_rerolling_sound_2_adds_its_takes_and_muting_remixes(page, two_sounds):
    page.locator("#reroll-2").click()
    page.locator("#take-2-2").wait_for()  # its first take and the new one, side by side
    assert page.locator("#take-1-2").is_hidden()  # sound 1 has its one take still
    assert waveform_width(page, "#take-2-2") > 50
    page.locator("#sound-mute-1 input").check()
    info = mix_info(page, "re-mixed")
    assert "1. 'dog barking' seed 7" in info  # sound 1's take stays the one on show


def test_history_survives_a_reload_and_restore_puts_prompts_and_seed_back(page, two_sounds):
    # The re-roll's entry is listed (stored in the browser) before the reload.
    page.wait_for_function(
        "() => /car engine \\(seed (?!8\\))/.test(document.querySelector('#history-list input')?.value || '')"
    )
    page.reload()
    page.wait_for_selector("#generate")
    assert page.locator("#workspace-result").is_hidden()  # a new session: nothing on show
    listed = page.locator("#history-list input")
    page.wait_for_function(
        "() => (document.querySelector('#history-list input')?.value || '').includes('dog barking (seed 7)')"
    )
    assert "car engine (seed " in listed.input_value() and "street.mp4" in listed.input_value()
    assert page.locator("#prompt textarea").input_value() == ""
    page.locator("#history-restore").click()
    page.wait_for_function("() => document.querySelector('#prompt textarea').value === 'dog barking'")
    assert page.locator("#sound-prompt-2 textarea").input_value() == "car engine"
    open_settings(page)
    assert page.locator("#seed input").input_value() == "7"
    assert video_duration(page, "#input-video") == pytest.approx(1.0, abs=0.1)  # the server still holds it


def in_first_viewport(page, selectors, height: int) -> None:
    for selector in selectors:
        box = page.locator(selector).bounding_box()
        assert box is not None and box["y"] >= 0, selector
        assert box["y"] + box["height"] <= height, f"{selector} ends at {box['y'] + box['height']}"


def test_on_a_phone_the_inputs_are_on_the_first_screen_and_a_run_scrolls_to_the_result(
    browser, app_server, tmp_path
):
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(app_server.url)
        page.wait_for_selector("#generate")
        in_first_viewport(page, ("#input-video", "#prompt", "#generate"), PHONE["height"])

        page.locator("#input-video input[type=file]").set_input_files(
            str(make_video(tmp_path / "c.mp4", seconds=1.0))
        )
        page.wait_for_selector("#input-video video")
        set_number(page, "input[aria-label='number input for Steps']", 2)
        page.locator("#prompt textarea").fill("dog barking")
        page.evaluate("() => window.scrollTo(0, 0)")
        page.locator("#generate").tap()
        # The result column comes on screen at once, while the run goes on.
        page.wait_for_function(
            """() => { const top = document.querySelector('#result-column').getBoundingClientRect().top;
                       return scrollY > 0 && top >= -2 && top < innerHeight / 2; }"""
        )
        mix_info(page, "1.00 s from")
        box = page.locator("#workspace-result").bounding_box()
        assert box["y"] < PHONE["height"]  # the result is where the page scrolled to
    finally:
        context.close()
