"""Short-lived output folders for a server: one per request, pruned by age and total size.

A front end that copies every returned file into a cache of its own (gradio
does) only needs our copies for a short while. `OutputStore` keeps them in a
private temp folder: each new request folder first prunes folders older than
`keep_seconds`, then the oldest ones until the total fits `max_bytes`. The
whole temp folder goes when the process exits, on SIGTERM and SIGINT too once
`OutputStore.remove_on_exit()` has installed the handlers (a kill -9 cannot be
caught: the system's temp cleaner is the last resort).

No torch, no gradio: a front end imports this without loading a model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

from selva.spec import InputError

__all__ = [
    "OUTPUT_KEEP_SECONDS",
    "OUTPUT_MAX_BYTES",
    "OUTPUT_MIN_KEEP_SECONDS",
    "OutputStore",
]

log = logging.getLogger(__name__)

# Our copies only need to live until the front end has copied them.
OUTPUT_KEEP_SECONDS = 600.0
# All request folders together; past it the oldest go first. One request's files (4 candidates
# of a 10-minute video) can exceed it: the folders younger than OUTPUT_MIN_KEEP_SECONDS stay anyway.
OUTPUT_MAX_BYTES = 2 * 1024**3
# A folder being written or still being copied by the front end is never pruned for size.
OUTPUT_MIN_KEEP_SECONDS = 60.0
# The same limits from the environment (a deployment sets them without code).
KEEP_SECONDS_ENV = "SELVA_OUTPUT_KEEP_SECONDS"
MAX_MB_ENV = "SELVA_OUTPUT_MAX_MB"


@dataclass(frozen=True)
class _Folder:
    path: Path
    mtime: float  # the last time a file was made in it
    size: int


class OutputStore:
    """A private temp folder with one sub-folder per request, pruned oldest first.

    `keep_seconds` and `max_bytes` default to $SELVA_OUTPUT_KEEP_SECONDS and
    $SELVA_OUTPUT_MAX_MB when set, else `OUTPUT_KEEP_SECONDS` and `OUTPUT_MAX_BYTES`.
    """

    def __init__(
        self,
        keep_seconds: float | None = None,
        *,
        max_bytes: int | None = None,
        min_keep_seconds: float = OUTPUT_MIN_KEEP_SECONDS,
        parent: str | Path | None = None,
    ):
        if keep_seconds is None:
            keep_seconds = _from_env(KEEP_SECONDS_ENV)
        self.keep_seconds = OUTPUT_KEEP_SECONDS if keep_seconds is None else float(keep_seconds)
        if max_bytes is None:
            mb = _from_env(MAX_MB_ENV)
            max_bytes = None if mb is None else int(mb * 1024**2)
        self.max_bytes = OUTPUT_MAX_BYTES if max_bytes is None else int(max_bytes)
        self.min_keep_seconds = min_keep_seconds
        self.parent = parent  # where the temp folder is made (default: the system's temp folder)
        self._root: Path | None = None
        self._lock = threading.Lock()
        _live.add(self)

    @property
    def root(self) -> Path:
        with self._lock:
            if self._root is None:  # made on first use, not at import or build time
                self._root = Path(tempfile.mkdtemp(prefix="selva-studio-", dir=self.parent))
                weakref.finalize(self, shutil.rmtree, self._root, ignore_errors=True)
            return self._root

    def new_folder(self, *, now: float | None = None) -> Path:
        """A fresh folder for one request's files, made after pruning (`now`: the clock, for tests)."""
        root = self.root
        self.prune(now=now)
        folder = root / uuid.uuid4().hex
        folder.mkdir()
        return folder

    def prune(self, *, now: float | None = None) -> list[Path]:
        """Remove folders older than `keep_seconds`, then the oldest until all fit `max_bytes`.

        Returns the folders removed, oldest first.
        """
        now = time.time() if now is None else now
        with self._lock:
            root = self._root
        if root is None:
            return []
        folders = sorted(_folders(root), key=lambda f: f.mtime)
        total = sum(f.size for f in folders)
        removed: list[Path] = []
        for f in folders:
            age = now - f.mtime
            too_old = age > self.keep_seconds
            too_big = total > self.max_bytes and age > self.min_keep_seconds
            if not (too_old or too_big):
                continue
            shutil.rmtree(f.path, ignore_errors=True)
            total -= f.size
            removed.append(f.path)
        if removed:
            log.debug("pruned %d output folder(s) in %s", len(removed), root)
        return removed

    def size(self) -> int:
        """Bytes held in the request folders now."""
        with self._lock:
            root = self._root
        return sum(f.size for f in _folders(root)) if root is not None else 0

    def remove(self) -> None:
        """Delete the temp folder and everything in it; a later `new_folder` makes a new one."""
        with self._lock:
            root, self._root = self._root, None
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    @staticmethod
    def remove_on_exit() -> bool:
        """Make SIGTERM and SIGINT delete every store's temp folder before the previous handler runs.

        Call it from the main thread at launch (Python allows handlers nowhere else); the
        previous handlers still run afterwards (Ctrl-C still raises KeyboardInterrupt, the
        default SIGTERM still ends the process with its usual status). Calling it again does
        nothing. Returns whether the handlers are installed.
        """
        if threading.current_thread() is not threading.main_thread():
            log.warning("output folders are not removed on SIGTERM: remove_on_exit() needs the main thread")
            return False
        for signum in (signal.SIGTERM, signal.SIGINT):
            if signum not in _previous:
                _previous[signum] = signal.signal(signum, _remove_all_then_chain)
        return True


_live: weakref.WeakSet[OutputStore] = weakref.WeakSet()
_previous: dict[int, object] = {}


def _remove_all_then_chain(signum: int, frame: object) -> None:
    for store in list(_live):
        store.remove()
    previous = _previous.get(signum)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_IGN:
        return
    else:  # SIG_DFL, or None (set outside Python): the default action, with its exit status
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _folders(root: Path) -> list[_Folder]:
    found: list[_Folder] = []
    with contextlib.suppress(FileNotFoundError), os.scandir(root) as entries:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):  # pruned by another thread meanwhile
                if entry.is_dir(follow_symlinks=False):
                    found.append(_Folder(Path(entry.path), entry.stat().st_mtime, _tree_size(entry.path)))
    return found


def _tree_size(path: str) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _from_env(name: str) -> float | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise InputError(f"{name}={text!r}: set it to a number >= 0, or unset it for the default")
    return value
