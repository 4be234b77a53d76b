"""The README's screenshots of the studio page: docs/ui.png (1366x900) and docs/ui-phone.png (390x844).

    python -m benchmarks.screenshots

Runs the page on the tests' tiny models (CPU, offline) with the tests' headless Chromium, makes
two sounds for the example clip (the second re-rolled once, so a sound shows two takes) and
screenshots the whole page; then on a phone viewport a one-sound run from the top of the page.
It also prints where the video, the prompt and Generate lie on the first screen.
Needs Debian's chromium and playwright, as the browser tests do.
"""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "parity"
DOCS = ROOT / "docs"
DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
SHOT_LIMIT = 400_000  # bytes: the pictures are committed


def boxes(page) -> str:
    parts = []
    for selector in ("#input-video", "#prompt", "#generate"):
        box = page.locator(selector).bounding_box()
        parts.append(f"{selector} y {box['y']:.0f}-{box['y'] + box['height']:.0f}")
    return ", ".join(parts)


def set_number(page, label: str, value: float) -> None:
    from browser_support import open_settings

    open_settings(page)
    box = page.get_by_label(f"number input for {label}")
    box.fill(str(value))
    box.press("Enter")


def drawn(page, selector: str) -> None:
    """Wait until the audio player at `selector` shows its clip's length (its waveform is drawn)."""
    page.wait_for_function(
        "(sel) => /^0:0[1-9]/.test(document.querySelector(`${sel} time#duration`)?.textContent.trim() || '')",
        arg=selector,
    )


def wait_info(page, needle: str) -> None:
    page.wait_for_function(
        "(n) => (document.querySelector('#mix-info textarea')?.value || '').includes(n)", arg=needle
    )


def desktop(browser, url: str, clip: Path, out: Path) -> None:
    page = browser.new_page(viewport=DESKTOP)
    page.set_default_timeout(120_000)
    page.goto(url)
    page.wait_for_selector("#generate")
    print(f"desktop {DESKTOP['width']}x{DESKTOP['height']}: {boxes(page)}")
    page.locator("#input-video input[type=file]").set_input_files(str(clip))
    page.wait_for_selector("#input-video video")
    page.locator("#prompt textarea").fill("dog barking")
    page.locator("#add-sound").click()
    page.locator("#sound-prompt-2 textarea").fill("car engine passing by")
    set_number(page, "Steps", 10)
    page.locator("#seed input").fill("7")
    page.locator("#settings").get_by_text("Settings", exact=True).first.click()  # collapsed again
    page.locator("#generate").click()
    wait_info(page, "seed 8")
    page.locator("#reroll-2").click()
    drawn(page, "#take-2-2")
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=str(out), full_page=True)
    page.close()


def phone(browser, url: str, clip: Path, out: Path) -> None:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(url)
    page.wait_for_selector("#generate")
    print(f"phone {PHONE['width']}x{PHONE['height']}: {boxes(page)}")
    page.locator("#input-video input[type=file]").set_input_files(str(clip))
    page.wait_for_selector("#input-video video")
    page.locator("#prompt textarea").fill("dog barking")
    set_number(page, "Steps", 10)
    set_number(page, "Candidates", 2)
    page.locator("#settings").get_by_text("Settings", exact=True).first.click()
    page.evaluate("() => window.scrollTo(0, 0)")
    page.locator("#generate").tap()
    drawn(page, "#take-1-2")
    page.evaluate("() => document.querySelector('#workspace-result').scrollIntoView({block: 'start'})")
    page.screenshot(path=str(out))  # the result, where the run scrolled to
    context.close()


def main() -> int:
    sys.path.insert(0, str(ROOT / "tests"))  # tiny_hub, media_factory and the browser live with the tests
    import pytest
    from browser_support import chromium
    from tiny_hub import build_tiny_hub

    from selva.app import launch
    from selva.app import page as page_module
    from selva.pipeline import SelvaPipeline

    work = Path(tempfile.mkdtemp(prefix="selva-screenshots-"))
    patch = pytest.MonkeyPatch()  # the tests' way of pointing huggingface_hub at the tiny cache
    try:
        build_tiny_hub(work / "hub", FIXTURES).activate(patch, offline=True)
        patch.setenv("GRADIO_EXAMPLES_CACHE", str(work / "examples"))
        pipe = SelvaPipeline.from_pretrained("tiny_16k", device="cpu", dtype="fp32")
        pipe.set_progress_bar_config(disable=True)
        demo = page_module.build_demo(pipe)
        with socket.socket() as s:  # a free port; gradio binds it right after
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                    **launch.launch_options())  # fmt: skip
        clip = work / "dog_and_car.mp4"
        shutil.copy(page_module.EXAMPLES_DIR / "dog_and_car.mp4", clip)
        shots = {"ui.png": work / "ui.png", "ui-phone.png": work / "ui-phone.png"}
        try:
            with chromium() as browser:
                desktop(browser, f"http://127.0.0.1:{port}/", clip, shots["ui.png"])
                phone(browser, f"http://127.0.0.1:{port}/", clip, shots["ui-phone.png"])
        finally:
            demo.close()
        for name, shot in shots.items():
            size = shot.stat().st_size
            if size > SHOT_LIMIT:
                print(f"{name} is {size} bytes, over {SHOT_LIMIT}: not copied", file=sys.stderr)
                return 1
            shutil.copy(shot, DOCS / name)
            print(f"docs/{name}: {size} bytes")
    finally:
        patch.undo()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
