"""The app in a real browser: Debian's chromium driven by playwright, the real pipeline on the tiny Hub.

Needs `apt-get install -y chromium` and `pip install playwright`; never run
`playwright install` (we use the system chromium). Screenshots go to the test's
tmp folder; the README's pictures are `python -m benchmarks.screenshots`'s.
"""

import io
import shutil
from pathlib import Path

import pytest
from browser_support import TIMEOUT_MS, cancel_and_wait, chromium, open_settings, video_duration
from cancel_gate import CancelGate
from media_factory import make_video
from served import served

from selva.app.handlers import EXAMPLE_SEED
from selva.app.page import EXAMPLES_DIR

pytestmark = pytest.mark.browser

SHOT_LIMIT = 300_000  # bytes: a whole page's picture stays small


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


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
    """Wait until example card `player` has loaded a video, and return its duration in seconds."""
    return video_duration(page, f"#result-{player}")


def mix_duration(page) -> float:
    """Wait until the result area's mixed video has loaded, and return its duration in seconds."""
    return video_duration(page, "#mix-video")


def mix_info_has(page, needle: str) -> str:
    """Wait until the result area's info line holds `needle`; returns it."""
    return page.wait_for_function(
        "(n) => { const v = document.querySelector('#mix-info textarea')?.value || '';"
        " return v.includes(n) ? v : null; }",
        arg=needle,
    ).json_value()


def take_seconds(page, url: str) -> float:
    """The length in seconds of the audio file at `url` (decoded with PyAV)."""
    import av

    with av.open(io.BytesIO(page.request.get(url).body())) as f:
        stream = f.streams.audio[0]
        return sum(frame.samples for frame in f.decode(stream)) / stream.rate


def test_upload_prompt_generate_and_download(page, tmp_path):
    clip = tmp_path / "dog_and_car.mp4"  # a synthetic clip (see examples/make_examples.py)
    shutil.copy(EXAMPLES_DIR / "dog_and_car.mp4", clip)
    upload(page, clip)
    page.locator("#prompt textarea").fill("dog barking")
    page.locator("#negative-prompt textarea").fill("car engine")
    set_number(page, "Candidates", 2)
    page.locator("#generate").click()

    assert mix_duration(page) == pytest.approx(5.0, abs=0.15)  # auto: the whole 5 s clip
    info = mix_info_has(page, "seed")
    assert "tiny_16k on cpu" in info and "5.00 s from 0.00 s" in info  # the run's own info line
    audio_shown(page, "#take-1-1", "0:05")
    audio_shown(page, "#take-1-2", "0:05")

    flac = page.locator("#take-1-2 a[download$='.flac']").get_attribute("href")
    response = page.request.get(flac)
    assert response.ok and response.body()[:4] == b"fLaC"

    page.locator("#keep-take-1-2").click()
    page.wait_for_function("() => document.querySelectorAll('#kept-files a').length === 1")
    shot = tmp_path / "ui.png"
    page.screenshot(path=str(shot), full_page=True)
    assert 0 < shot.stat().st_size < SHOT_LIMIT


def test_a_file_that_is_no_video_is_refused_at_upload_with_a_titled_whole_message(page, tmp_path):
    broken = tmp_path / "not a video.mp4"
    broken.write_bytes(b"this is not a video" * 100)
    page.locator("#input-video input[type=file]").set_input_files(str(broken))

    toast = page.locator(".toast-body", has_text="is not a media file")  # at upload: no Generate yet
    toast.wait_for()
    text = toast.inner_text()
    assert "Not a usable video" in text  # our title (gradio heads the group "Error")
    assert "not a video.mp4 is not a media file" in text and "convert it to MP4" in text  # whole
    assert "Errno" not in text and "Traceback" not in page.content()
    page.wait_for_function("() => !document.querySelector('#input-video video')")  # the box is cleared
    page.screenshot(path=str(tmp_path / "error.png"))

    upload(page, make_video(tmp_path / "good.mp4", seconds=2.0))
    # The span fits the clip: Duration's end is the clip's 2 s.
    page.wait_for_function("() => document.querySelector('#duration input[type=range]').max === '2'")
    page.locator("#prompt textarea").fill("dog barking")
    page.locator("#generate").click()
    toast.wait_for(state="detached")  # a new run clears the old toasts
    assert mix_duration(page) == pytest.approx(2.0, abs=0.15)
    mix_info_has(page, "2.00 s from")


def test_the_page_serves_while_the_weights_are_missing_and_says_why_whole(browser, fresh_tiny_hub, tmp_path):
    """The model loads behind the page; its failure shows there, and Generate's toast is titled and whole."""
    from selva.app import page as page_module
    from selva.serving import PipelineSlot

    generator = fresh_tiny_hub.variants["tiny_16k"].generator_file
    fresh_tiny_hub.remove(generator.repo, generator.path)
    slot = PipelineSlot("tiny_16k", device="cpu", precision="fp32")
    slot.load_in_background().join(120)
    assert slot.status.state == "failed"
    demo = page_module.build_demo(slot, examples=False)
    with served(demo) as url:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            panel = page.locator("#load-status")
            panel.get_by_text("The model could not load").wait_for()
            shown = panel.inner_text()
            assert "generator_small_16k" in shown and "put it at <weights_dir>/" in shown

            upload(page, make_video(tmp_path / "clip.mp4", seconds=2.0))
            page.locator("#prompt textarea").fill("dog barking")
            page.locator("#generate").click()
            toast = page.locator(".toast-body", has_text="Model weights missing")  # the title, in the text
            toast.wait_for()
            text = toast.inner_text()
            # Whole: the "<weights_dir>" path and the lines after it are there, not cut at "put it at".
            last_line = slot.status.error.splitlines()[-1].strip()
            assert "put it at <weights_dir>/" in text and text.rstrip().endswith(last_line)
            page.locator("#cancel").wait_for(state="hidden")
            assert page.locator("#generate").is_enabled()
        finally:
            context.close()


def set_number(page, label: str, value: float) -> None:
    open_settings(page)  # most numbers are Settings (collapsed at first)
    box = page.get_by_label(f"number input for {label}")
    box.fill(str(value))
    box.press("Enter")


def test_progress_shows_the_steps_and_cancel_stops_the_job(page, app_server, tmp_path, caplog, monkeypatch):
    caplog.set_level("INFO", logger="selva.app")
    page.locator("#load-status").wait_for(state="hidden")  # the model is ready: nothing to say
    assert page.locator("#cancel").is_hidden()  # nothing runs: no Cancel
    upload(page, make_video(tmp_path / "clip.mp4", seconds=6.0))
    page.locator("#prompt textarea").fill("dog barking")
    set_number(page, "Steps", 3)
    page.locator("#generate").click()
    assert mix_duration(page) == pytest.approx(6.0, abs=0.15)  # the result a cancel must keep
    page.locator("#cancel").wait_for(state="hidden")

    # After reporting its second step the job waits for the cancel, so however slow the browser's
    # click is, the job cannot finish its steps first.
    CancelGate(monkeypatch, from_step=1, report_first=True, timeout=TIMEOUT_MS / 1000)
    set_number(page, "Steps", 100)
    set_number(page, "Candidates", 4)
    page.locator("#generate").click()
    page.locator("#cancel").wait_for(state="visible")
    # Generate says what runs and waits; the percentage is the steps' share.
    page.wait_for_function(
        "() => /Generating: step \\d+\\/100/.test(document.querySelector('#generate').innerText)"
    )
    assert page.locator("#generate").is_disabled()
    cancel_and_wait(page, "#cancel")  # answered once the job has stopped after its current step
    page.locator(".toast-body", has_text="Cancelled").wait_for()
    page.locator("#cancel").wait_for(state="hidden")
    assert page.locator("#generate").is_enabled() and page.locator("#generate").inner_text() == "Generate"
    assert not app_server.demo.studio.slot.lock.locked()
    assert "generation cancelled by the user" in caplog.text  # the pipeline stopped between steps
    assert mix_duration(page) == pytest.approx(6.0, abs=0.15)  # the previous result stays
    assert page.locator("#take-card-1-2").is_hidden()  # its one take, not the cancelled run's
    monkeypatch.undo()

    set_number(page, "Steps", 3)
    set_number(page, "Candidates", 2)
    page.locator("#generate").click()
    audio_shown(page, "#take-1-2", "0:06")
    assert page.locator("#take-card-1-3").is_hidden()


def label_of(page, selector: str) -> str:
    return page.locator(f"{selector} [data-testid='block-label']").first.inner_text().strip()


def audio_shown(page, selector: str, seconds: str) -> None:
    """Wait until the audio player at `selector` has drawn its waveform for a clip of `seconds` ("0:02")."""
    page.wait_for_selector(f"{selector} [data-testid^='waveform-']")
    page.wait_for_function(
        "([sel, s]) => document.querySelector(`${sel} time#duration`)?.textContent.trim() === s",
        arg=[selector, seconds],
    )


def test_takes_side_by_side_shown_once_keep_and_use_seed(page, tmp_path):
    """One sound's candidates are its takes, shown once: no card of the old one-sound road besides."""
    upload(page, make_video(tmp_path / "clip.mp4", seconds=2.0))
    page.locator("#prompt textarea").fill("dog barking")
    set_number(page, "Steps", 3)
    set_number(page, "Candidates", 2)  # opens the Settings
    page.locator("#seed input").fill("5")
    page.locator("#generate").click()

    page.locator("#keep-take-1-2").wait_for()
    audio_shown(page, "#take-1-1", "0:02")
    audio_shown(page, "#take-1-2", "0:02")
    assert page.locator("#candidates-area").is_hidden() and page.locator("#downloads").is_hidden()
    for t, label in ((1, "Take 1 · seed 5 (in the mix)"), (2, "Take 2 · seed 6")):  # take t: seed + t - 1
        assert label_of(page, f"#take-1-{t}") == label
    first, second = (page.locator(f"#take-card-1-{t}").bounding_box() for t in (1, 2))
    assert abs(first["y"] - second["y"]) < 2 and second["x"] >= first["x"] + first["width"]  # side by side

    page.locator("#keep-take-1-2").click()
    page.locator("#kept-list", has_text="dog barking · seed 6 · 2.00 s of clip.mp4").wait_for()
    page.wait_for_function("() => document.querySelectorAll('#kept-files a').length === 1")
    url = page.locator("#kept-files a").first.get_attribute("href")
    assert page.request.get(url).body()[:4] == b"fLaC"

    page.locator("#keep-take-1-2").click()
    page.locator(".toast-body", has_text="Already kept").wait_for()  # one take, kept once
    page.locator("#use-seed-1-2").click()
    page.locator(".toast-body", has_text="Seed 6, one candidate").wait_for()
    page.wait_for_function("() => document.querySelector('#seed input').value === '6'")
    assert page.get_by_label("number input for Candidates").input_value() == "1"
    assert page.locator("#take-card-1-2").is_visible()  # the take stays on show until the next run
    page.locator("#generate").click()  # take 2 again, alone
    mix_info_has(page, "seed 6 ")
    page.locator("#take-1-1 [data-testid='block-label']", has_text="Take 1 · seed 6 (in the mix)").wait_for()
    page.locator("#take-card-1-2").wait_for(state="hidden")


def test_a_phone_sized_page_makes_sound_from_the_prompt_alone(browser, app_server, tmp_path):
    width = 390
    context = browser.new_context(viewport={"width": width, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app_server.url)
    page.wait_for_selector("#generate")

    def fits(*selectors: str) -> None:
        # nothing to scroll sideways
        assert page.evaluate("() => document.scrollingElement.scrollWidth <= innerWidth")
        for selector in ("#source", "#prompt", "#generate", *selectors):
            box = page.locator(selector).bounding_box()
            assert box is not None and box["width"] > 0 and box["height"] > 0, selector
            assert box["x"] >= 0 and box["x"] + box["width"] <= width, selector

    fits()
    page.locator("#prompt textarea").fill("rain on a tin roof")
    page.locator("#generate").tap()  # Source: Video, and no video
    page.locator(".toast-body", has_text="Upload a video first").wait_for()
    page.get_by_label("Prompt only").check()
    page.locator("#prompt-only-note").wait_for()
    page.locator("#input-video").wait_for(state="hidden")
    assert page.get_by_label("number input for Duration (s)").input_value() == "8"  # Prompt only's start
    set_number(page, "Duration (s)", 0)
    page.locator("#generate").tap()
    page.locator(".toast-body", has_text="set Duration above 0").wait_for()
    set_number(page, "Duration (s)", 2)
    set_number(page, "Steps", 3)
    set_number(page, "Candidates", 2)
    page.locator("#generate").tap()

    audio_shown(page, "#take-1-1", "0:02")
    audio_shown(page, "#take-1-2", "0:02")
    mix_info_has(page, "2.00 s from the prompt alone")
    assert label_of(page, "#take-1-1").startswith("Take 1 · seed ")
    assert page.locator("#mix-video").is_hidden()  # no video to show
    first, second = (page.locator(f"#take-card-1-{t}").bounding_box() for t in (1, 2))
    beside = second["x"] >= first["x"] + first["width"] - 1
    assert beside or second["y"] >= first["y"] + first["height"] - 1  # no overlap
    page.locator("#take-1-1").scroll_into_view_if_needed()
    box = page.locator("#take-1-1").bounding_box()
    assert box["y"] >= 0 and box["y"] + box["height"] <= 844  # on screen once scrolled to
    fits("#take-card-1-1", "#take-card-1-2", "#take-1-1", "#mix-info")
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    context.close()


def test_a_30_second_clip_gets_sound_as_long_as_itself(page, tmp_path):
    clip = make_video(tmp_path / "clip30.mp4", seconds=30.0, gop=25)
    upload(page, clip)
    page.locator("#prompt textarea").fill("dog barking")
    set_number(page, "Steps", 2)
    page.locator("#generate").click()

    assert mix_duration(page) == pytest.approx(30.0, abs=0.04)  # the mp4 the browser plays
    audio_shown(page, "#take-1-1", "0:30")
    flac = page.locator("#take-1-1 a[download$='.flac']").get_attribute("href")
    assert take_seconds(page, flac) == pytest.approx(30.0, abs=0.04)
    assert "30.00 s from 0.00 s" in mix_info_has(page, "30.00 s from")


def test_an_example_fills_the_inputs_and_shows_its_cached_result(page):
    page.get_by_label("Prompt only").check()
    page.locator("#input-video").wait_for(state="hidden")
    label = "dog_and_car: car engine passing by"
    page.get_by_role("button", name=label).click()
    page.locator("#input-video video").wait_for()  # back to Source: Video, with the example's clip
    assert page.get_by_label("Video", exact=True).is_checked()
    assert result_duration(page) == pytest.approx(5.0, abs=0.15)  # generated on first use, then cached
    assert page.locator("#prompt textarea").input_value() == "car engine passing by"
    assert page.locator("#negative-prompt textarea").input_value() == "dog barking"
    assert f"seed {EXAMPLE_SEED}" in page.locator("#info textarea").input_value()
