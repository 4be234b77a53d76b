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
