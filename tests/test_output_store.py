"""selva/output_store.py: request folders pruned by age and size, the temp folder gone on SIGTERM/SIGINT."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from selva.output_store import OUTPUT_KEEP_SECONDS, OutputStore
from selva.spec import InputError

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000.0  # an explicit clock: folder times are set, never waited for


def _folder(store: OutputStore, made_at: float, size: int = 0) -> Path:
    folder = store.new_folder(now=made_at)
    if size:
        (folder / "a.flac").write_bytes(b"x" * size)
    os.utime(folder, (made_at, made_at))
    return folder


def test_folders_older_than_the_keep_time_are_pruned(tmp_path):
    store = OutputStore(keep_seconds=600, parent=tmp_path)
    old = _folder(store, T0, size=10)
    recent = _folder(store, T0 + 300)
    newest = store.new_folder(now=T0 + 601)  # old is 601 s old now, recent 301 s
    assert not old.exists() and recent.is_dir() and newest.is_dir()
    assert sorted(p.name for p in store.root.iterdir()) == sorted([recent.name, newest.name])


def test_the_size_cap_removes_the_oldest_first(tmp_path):
    store = OutputStore(keep_seconds=3600, max_bytes=250, min_keep_seconds=60, parent=tmp_path)
    first, second, third = (_folder(store, T0 + 100 * k, size=100) for k in range(3))
    assert store.size() == 300
    assert store.prune(now=T0 + 400) == [first]  # 300 > 250: the oldest goes, 200 fits
    assert second.is_dir() and third.is_dir() and store.size() == 200
    fourth = _folder(store, T0 + 450, size=100)
    assert store.prune(now=T0 + 470) == [second]  # fourth is 20 s old: being written, never cut for size
    assert third.is_dir() and fourth.is_dir()


def test_young_folders_stay_even_over_the_cap(tmp_path):
    store = OutputStore(keep_seconds=3600, max_bytes=10, min_keep_seconds=60, parent=tmp_path)
    a, b = _folder(store, T0, size=100), _folder(store, T0 + 5, size=100)
    assert store.prune(now=T0 + 30) == []  # one request's files may exceed the cap alone
    assert a.is_dir() and b.is_dir()
    assert store.prune(now=T0 + 62) == [a]  # a is past the grace time now; b still in it


def test_limits_from_the_environment(tmp_path, monkeypatch):
    assert OutputStore(parent=tmp_path).keep_seconds == OUTPUT_KEEP_SECONDS
    monkeypatch.setenv("SELVA_OUTPUT_KEEP_SECONDS", "120")
    monkeypatch.setenv("SELVA_OUTPUT_MAX_MB", "1.5")
    store = OutputStore(parent=tmp_path)
    assert (store.keep_seconds, store.max_bytes) == (120.0, int(1.5 * 1024**2))
    assert OutputStore(keep_seconds=5, max_bytes=7, parent=tmp_path).max_bytes == 7  # arguments win
    monkeypatch.setenv("SELVA_OUTPUT_MAX_MB", "lots")
    with pytest.raises(InputError, match="SELVA_OUTPUT_MAX_MB='lots'"):
        OutputStore(parent=tmp_path)


def test_remove_then_a_new_folder_makes_a_new_root(tmp_path):
    store = OutputStore(parent=tmp_path)
    first_root = store.new_folder().parent
    store.remove()
    assert not first_root.exists()
    assert store.new_folder().parent.is_dir() and store.root != first_root


# The child makes a store with a request folder, installs the handlers, says where the folder is,
# then waits for its signal; the parent reads that line and sends it.
CHILD = """
import signal, sys, time
from selva.output_store import OutputStore
store = OutputStore(parent=sys.argv[1])
(store.new_folder() / "a.flac").write_bytes(b"x" * 1000)
assert OutputStore.remove_on_exit()
print(store.root, flush=True)
signal.pause() if hasattr(signal, "pause") else time.sleep(60)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_removes_the_temp_folder(tmp_path, signum):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        root = Path(child.stdout.readline().strip())
        assert root.is_dir() and root.parent == tmp_path, child.stderr.read()
        child.send_signal(signum)
        _, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
    assert not root.exists() and list(tmp_path.iterdir()) == []
    # the previous handlers still ran: the default SIGTERM's status, Ctrl-C's KeyboardInterrupt
    if signum == signal.SIGTERM:
        assert child.returncode == -signal.SIGTERM
    else:
        # an uncaught KeyboardInterrupt ends Python 3.12+ by SIGINT itself, older ones with status 1
        assert child.returncode in (1, -signal.SIGINT) and "KeyboardInterrupt" in stderr
