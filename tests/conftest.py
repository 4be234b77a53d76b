from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The parity fixtures beside the checkout (never copied into the repo)."""
    parity = FIXTURES / "parity"
    if not (parity / "manifests.json").is_file():
        pytest.fail(f"parity fixtures not found at {parity}: check out ../shared beside the repo")
    return parity


@pytest.fixture(scope="session")
def tiny_hub(fixtures_dir, tmp_path_factory):
    """The tiny fake Hub (see tests/tiny_hub.py), active for the whole session: HF_HOME and
    HF_HUB_CACHE point at it, HF_HUB_OFFLINE=1, and SELVA_VARIANTS_FILE names tiny_16k / tiny_44k.
    Treat it as read-only; tests that break files use `fresh_tiny_hub`."""
    from tiny_hub import build_tiny_hub

    hub = build_tiny_hub(tmp_path_factory.mktemp("tiny_hub"), fixtures_dir)
    mp = pytest.MonkeyPatch()
    hub.activate(mp, offline=True)
    yield hub
    mp.undo()


@pytest.fixture
def fresh_tiny_hub(tmp_path, fixtures_dir, monkeypatch):
    """A private copy of the tiny Hub for this test only (offline), free to damage."""
    from tiny_hub import build_tiny_hub

    hub = build_tiny_hub(tmp_path / "tiny_hub", fixtures_dir)
    hub.activate(monkeypatch, offline=True)
    return hub


@pytest.fixture(scope="module")
def pipe(tiny_hub):
    """A tiny_16k pipeline (CPU, fp32) of the test module's own: its caches are the module's."""
    from selva.pipeline import SelvaPipeline

    pipe = SelvaPipeline.from_pretrained("tiny_16k", device="cpu", dtype="fp32")
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- the app (selva.app): shared by tests/test_app.py and tests/test_browser.py -------------------------


@pytest.fixture(scope="session")
def app_pipe(tiny_hub):
    """The tiny_16k pipeline behind the app tests, loaded once (CPU, fp32)."""
    from selva.pipeline import SelvaPipeline

    pipe = SelvaPipeline.from_pretrained("tiny_16k", device="cpu", dtype="fp32")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def app_server(app_pipe, tmp_path_factory):
    """SelVA Studio around `app_pipe`, launched in this process on 127.0.0.1 at a free port.

    Yields `.url` and `.demo` (its `Studio` is `.demo.studio`). Lazily cached
    examples go to a temp folder, not the checkout's .gradio/."""
    from types import SimpleNamespace

    from served import served

    from selva.app import launch, page

    mp = pytest.MonkeyPatch()
    mp.setenv("GRADIO_EXAMPLES_CACHE", str(tmp_path_factory.mktemp("gradio_examples")))
    demo = page.build_demo(app_pipe)
    with served(demo, **launch.launch_options()) as url:
        yield SimpleNamespace(url=url, demo=demo)
    mp.undo()

