"""The stems editor in a real browser: Debian's chromium driven by playwright, the tiny pipeline.

One page for the whole module (the 2-core CI box is shared): the tests run in file
order on it, each leaving the editor in a known state; `first_run` is the stems
generation the later tests build on. Needs `apt-get install -y chromium` and
`pip install playwright`; never `playwright install`.
"""

import re

import av
import pytest
from browser_support import TIMEOUT_MS, cancel_and_wait, chromium, video_duration
from media_factory import make_video
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}  # an iPhone 12-14 in CSS pixels
FIRST = [("dog barking", "", 1.0), ("car engine", "horn", 0.5), ("rain", "", 1.5)]
FIRST_SEED = 7


@pytest.fixture(scope="module")
def page(app_server):
    with chromium() as browser:
        page = browser.new_page(viewport=DESKTOP)
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(app_server.url)
        page.wait_for_selector("#generate")
        page.get_by_text("Stems: several sources at once").click()  # open the accordion
        page.wait_for_selector("#generate-stems")
        yield page


# -- helpers ---------------------------------------------------------------------------------------------


VISIBLE_ROWS = """() => [1, 2, 3, 4].filter(k => {
    const row = document.getElementById(`stem-row-${k}`);
    return row !== null && row.getClientRects().length > 0;
}).length"""


def visible_rows(page) -> list[bool]:
    return [page.locator(f"#stem-row-{k}").is_visible() for k in range(1, 5)]


def show_rows(page, count: int) -> None:
    """Click Add stem / Remove stem until `count` rows show."""
    while (shown := page.evaluate(VISIBLE_ROWS)) != count:
        page.locator("#stems-add" if shown < count else "#stems-remove").click()
        page.wait_for_function(f"(n) => ({VISIBLE_ROWS})() !== n", arg=shown)


def set_number(page, selector: str, value: float) -> None:
    box = page.locator(selector)
    box.fill(str(value))
    box.press("Enter")


def fill_stems(page, rows: list[tuple[str, str, float]]) -> None:
    show_rows(page, len(rows))
    for k, (prompt, negative, gain) in enumerate(rows, start=1):
        page.locator(f"#stem-prompt-{k} textarea").fill(prompt)
        page.locator(f"#stem-negative-{k} textarea").fill(negative)
        set_number(page, f"#stem-gain-{k} input[type=number]", gain)


def generate_stems(page, seed: int, *, enter: bool = False) -> str:
    """Click Generate stems (or press Enter in stem 1's prompt) and wait for the info line of the
    run with `seed`; returns it."""
    set_number(page, "#seed input", seed)
    if enter:
        page.locator("#stem-prompt-1 textarea").press("Enter")
    else:
        page.locator("#generate-stems").click()
    handle = page.wait_for_function(
        """(seed) => {
            const v = document.querySelector('#stems-info textarea').value;
            return v.includes(`seed ${seed} `) ? v : null;
        }""",
        arg=seed,
    )
    return handle.json_value()


def expect_label(page, selector: str, label: str) -> None:
    """Wait for the player at `selector` to be labelled `label` (labels follow the files, in the
    event that lists the run under Earlier results)."""
    expect(page.locator(f"{selector} [data-testid=block-label]")).to_have_text(label, timeout=TIMEOUT_MS)


def waveform_size(page, selector: str) -> tuple[float, float]:
    """Wait until the audio player at `selector` has drawn its waveform; (width, height) in CSS px.

    Gradio's player draws with wavesurfer.js: a host element under #waveform whose shadow root
    holds the canvases. The size is that of the drawn canvas, so a player that shows no
    waveform (or an empty one) never returns.
    """
    handle = page.wait_for_function(
        """(selector) => {
            const host = document.querySelector(`${selector} #waveform > div`);
            const root = host && host.shadowRoot;
            if (!root) return null;
            for (const canvas of root.querySelectorAll('canvas')) {
                const box = canvas.getBoundingClientRect();
                if (canvas.width > 0 && canvas.height > 0 && box.width > 0 && box.height > 0)
                    return [box.width, box.height];
            }
            return null;
        }""",
        arg=selector,
    )
    width, height = handle.json_value()
    return width, height


def history_choices(page) -> list[str]:
    """The Earlier results entries, newest first (opens the list, then closes it)."""
    page.locator("#stems-history input").click()
    options = page.locator("#stems-history [role=option]")
    options.first.wait_for()
    names = [text.split("\n")[-1].strip() for text in options.all_inner_texts()]  # after the selected one's ✓
    page.locator("#stems-history input").blur()
    options.first.wait_for(state="detached")
    return names


def pick_history(page, name: str) -> None:
    """Choose an Earlier results entry as a user does: open the list and click it."""
    page.locator("#stems-history input").click()
    option = page.locator("#stems-history [role=option]", has_text=name)
    option.wait_for()
    option.click()


# -- the tests, in page order ------------------------------------------------------------------------------


def test_rows_are_added_and_removed_and_a_removed_row_starts_afresh(page):
    assert visible_rows(page) == [True, True, False, False]
    page.locator("#stems-add").click()
    page.locator("#stem-row-3").wait_for()
    page.locator("#stems-add").click()
    page.locator("#stem-row-4").wait_for()
    assert visible_rows(page) == [True] * 4
    assert page.locator("#stems-add").is_disabled()  # four is the most

    page.locator("#stem-prompt-4 textarea").fill("footsteps")
    page.locator("#stem-negative-4 textarea").fill("music")
    set_number(page, "#stem-gain-4 input[type=number]", 0.25)
    page.locator("#stems-remove").click()
    page.locator("#stem-row-4").wait_for(state="hidden")
    assert visible_rows(page) == [True, True, True, False] and page.locator("#stems-add").is_enabled()
    page.locator("#stems-add").click()
    page.locator("#stem-row-4").wait_for()
    # The row comes back empty: its old prompt would otherwise still be generated, unseen.
    assert page.locator("#stem-prompt-4 textarea").input_value() == ""
    assert page.locator("#stem-negative-4 textarea").input_value() == ""
    assert float(page.locator("#stem-gain-4 input[type=number]").input_value()) == 1.0

    # One click at a time, each waiting for its row to go: a click made while the previous one is still
    # in flight is dropped (gradio's trigger_mode "once"), so three quick clicks may remove fewer rows.
    show_rows(page, 1)
    assert visible_rows(page) == [True, False, False, False]
    assert page.locator("#stems-remove").is_disabled()  # one stem at least
    page.locator("#stems-add").click()
    page.locator("#stem-row-2").wait_for()
    assert page.locator("#stems-remove").is_enabled()


@pytest.fixture(scope="module")
def first_run(page, tmp_path_factory) -> str:
    """Three stems with gains on a 1 s clip, 2 flow steps, seed 7: the info line."""
    clip = make_video(tmp_path_factory.mktemp("browser_stems") / "street.mp4", seconds=1.0)
    page.locator("#input-video input[type=file]").set_input_files(str(clip))
    page.wait_for_selector("#input-video video")
    set_number(page, "input[aria-label='number input for Steps']", 2)
    fill_stems(page, FIRST)
    return generate_stems(page, FIRST_SEED)


def test_generate_stems_shows_a_labelled_waveform_player_per_stem_and_the_mix(page, first_run, tmp_path):
    assert "1. 'dog barking' seed 7 gain 1" in first_run
    assert "2. 'car engine' seed 8 gain 0.5" in first_run and "3. 'rain' seed 9 gain 1.5" in first_run
    assert "1.00 s from 0.00 s" in first_run

    for k, (prompt, _, _) in enumerate(FIRST, start=1):
        player = f"#stem-audio-{k}"
        assert page.locator(player).is_visible()
        expect_label(page, player, f"Stem {k}: {prompt} (seed {FIRST_SEED + k - 1})")
        width, height = waveform_size(page, player)
        assert width > 100 and height > 10
    assert page.locator("#stem-audio-4").is_hidden()  # three stems, three players
    width, height = waveform_size(page, "#stems-mix-audio")
    assert width > 100 and height > 10

    assert video_duration(page, "#stems-mix") == pytest.approx(1.0, abs=0.1)
    href = page.locator("#stems-tracks a").first.get_attribute("href")
    response = page.request.get(href)
    assert response.ok
    tracks = tmp_path / "tracks.mp4"
    tracks.write_bytes(response.body())
    with av.open(str(tracks)) as f:
        titles = [s.metadata.get("name") for s in f.streams.audio]
        assert len(f.streams.video) == 1
    assert titles == ["mix", "dog barking", "car engine", "rain"]

    assert history_choices(page) == ["1. dog barking + car engine + rain (seed 7)"]


def test_earlier_results_are_listed_and_recalled(page, first_run):
    fill_stems(page, [("church bell", "", 1.0)])
    info = generate_stems(page, 20, enter=True)  # Enter in a stem prompt runs the stems too
    assert "1. 'church bell' seed 20" in info and "seed 21" not in info
    page.locator("#stem-audio-2").wait_for(state="hidden")  # one stem now
    expect_label(page, "#stem-audio-1", "Stem 1: church bell (seed 20)")
    assert history_choices(page) == [
        "2. church bell (seed 20)",
        "1. dog barking + car engine + rain (seed 7)",
    ]

    pick_history(page, "1. dog barking + car engine + rain (seed 7)")
    page.wait_for_function("() => document.querySelector('#stems-info textarea').value.includes('seed 7 ')")
    assert page.locator("#stems-info textarea").input_value() == first_run
    for k, (prompt, _, _) in enumerate(FIRST, start=1):
        page.locator(f"#stem-audio-{k}").wait_for()
        expect_label(page, f"#stem-audio-{k}", f"Stem {k}: {prompt} (seed {FIRST_SEED + k - 1})")
        assert waveform_size(page, f"#stem-audio-{k}")[0] > 100
    assert waveform_size(page, "#stems-mix-audio")[0] > 100
    assert video_duration(page, "#stems-mix") == pytest.approx(1.0, abs=0.1)


def test_a_phone_sized_viewport_fits_the_editor(page, first_run, tmp_path):
    page.set_viewport_size(PHONE)
    try:
        show_rows(page, 3)
        page.locator("#stems").scroll_into_view_if_needed()
        width = page.evaluate("() => window.innerWidth")
        assert page.evaluate("() => document.scrollingElement.scrollWidth") <= width  # no sideways scroll

        for k in range(1, 4):
            prompt, negative, gain = (
                page.locator(f"#stem-{part}-{k}").bounding_box() for part in ("prompt", "negative", "gain")
            )
            for box in (prompt, negative, gain):
                assert box["x"] >= 0 and box["x"] + box["width"] <= width
            # The prompt gets a line of its own, the negative and the gain share the next one.
            assert prompt["width"] > 0.6 * width
            assert negative["y"] >= prompt["y"] + prompt["height"] and negative["width"] >= 120
            assert gain["width"] >= 120
        for selector in ("#stem-audio-1", "#stems-mix-audio", "#stems-mix", "#stems-history"):
            box = page.locator(selector).bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= width

        button = page.locator("#generate-stems")
        button.scroll_into_view_if_needed()
        box = button.bounding_box()
        assert box["width"] > 0.4 * width and box["height"] >= 30  # a thumb-sized target
        # On screen and nothing covers it: the element at its centre (viewport coordinates) is the button.
        centre = [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2]
        assert 0 <= centre[1] <= PHONE["height"]
        on_top = "([x, y]) => !!document.elementFromPoint(x, y)?.closest('#generate-stems')"
        assert page.evaluate(on_top, centre)
        page.screenshot(path=str(tmp_path / "stems_phone.png"), full_page=True)
    finally:
        page.set_viewport_size(DESKTOP)


def test_cancel_stops_a_stems_job(page, app_server, tmp_path, caplog):
    caplog.set_level("INFO", logger="selva.app")
    page.locator("#input-video button[aria-label='Clear']").last.click()
    long_clip = make_video(tmp_path / "long.mp4", seconds=6.0)
    page.locator("#input-video input[type=file]").set_input_files(str(long_clip))
    page.wait_for_selector("#input-video video")
    set_number(page, "input[aria-label='number input for Steps']", 100)  # a slow job: 4 x 100 steps on 6 s
    fill_stems(page, [(prompt, "", 1.0) for prompt in ("dog barking", "car engine", "rain", "wind")])
    before = page.locator("#stems-info textarea").input_value()
    page.locator("#generate-stems").click()

    page.get_by_text(re.compile(r"Stem 1/4: Generating: step \d+/100")).first.wait_for()
    cancel_and_wait(page, "#stems-cancel")  # answered once the job has stopped after its current step
    assert not app_server.demo.studio.slot.lock.locked()
    assert "generation cancelled by the user" in caplog.text  # the pipeline stopped between steps
    assert page.locator("#stems-info textarea").input_value() == before  # nothing replaced the last result
