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
    HF_HUB_CACHE point at it, HF_HUB_OFFLINE=1, and the variants tiny_16k / tiny_44k are registered.
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
