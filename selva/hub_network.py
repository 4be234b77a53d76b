"""The network side of `selva.hub`: one quick look at the Hub, and what a download reports.

huggingface_hub retries a failed request with growing waits (and a 60 s
timeout on its second try) for every file: on a machine with no network a
variant's dozen files took minutes to fail. `hub_unreachable` asks the
endpoint once, bounded by `NETWORK_CHECK_SECONDS` whatever DNS does, before
the first file is fetched; the look-up then fails at once with its
missing-files message.

`DownloadTracker` turns huggingface_hub's progress bars into
`DownloadProgress` values (file, bytes, speed, time left) for a callback, so
a page can show a first start's 7 GB download instead of a frozen bar.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from huggingface_hub import constants
from huggingface_hub.utils import get_session
from huggingface_hub.utils import tqdm as hub_tqdm

from selva.variants import WeightFile, human_size

__all__ = [
    "NETWORK_CHECK_SECONDS",
    "DownloadProgress",
    "DownloadTracker",
    "accepts_tqdm_class",
    "hub_unreachable",
    "one_line_per_hub_warning",
]

# One request to the Hub's endpoint before downloading; a dead network fails within this time.
NETWORK_CHECK_SECONDS = 5.0
# A download reports at most this often (besides each file's start and end).
REPORT_EVERY_SECONDS = 0.5


def hub_unreachable(timeout: float = NETWORK_CHECK_SECONDS) -> str | None:
    """None when the Hub's endpoint gives any HTTP answer within `timeout` seconds, else why not.

    Runs on a daemon thread so that a hanging name look-up (which no socket
    timeout bounds) cannot hold the caller longer than `timeout`.
    """
    endpoint = constants.ENDPOINT
    outcome: list[str | None] = []

    def ask() -> None:
        try:
            # huggingface_hub's own client: its proxies and certificates, no retries. Any status
            # code (even 404 from a mirror) proves the network works.
            get_session().head(endpoint, timeout=timeout)
            outcome.append(None)
        except Exception as exc:  # the client's errors differ between versions (requests, httpx)
            outcome.append(f"{type(exc).__name__}: {' '.join(str(exc).split())}")

    thread = threading.Thread(target=ask, name="selva-hub-check", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return f"no answer from {endpoint} within {timeout:g} s"
    return outcome[0]


def one_line_per_hub_warning() -> None:
    """Stop huggingface_hub's warnings (its retry lines) printing twice once logging is set up.

    The library logs through a handler of its own *and* propagates to the root
    logger; when an app has configured the root logger, every line shows twice.
    Its own handler goes then, so the root logger's format applies. Idempotent.
    """
    library = logging.getLogger("huggingface_hub")
    if not (library.propagate and logging.getLogger().handlers):
        return
    for handler in list(library.handlers):
        if type(handler) is logging.StreamHandler:  # the one it adds at import, nobody else's
            library.removeHandler(handler)


@dataclass(frozen=True)
class DownloadProgress:
    """How far the download of a variant's missing files has come (what `on_download` receives)."""

    name: str  # the variant (or repo) being fetched
    file: str  # the file being fetched now (repo path), "" when all are done
    files_done: int
    file_count: int
    bytes_done: int
    total_bytes: int
    seconds: float  # since the download began

    @property
    def fraction(self) -> float:
        return min(1.0, self.bytes_done / self.total_bytes) if self.total_bytes else 1.0

    @property
    def speed(self) -> float | None:
        """Bytes per second so far; None before there is anything to measure."""
        return self.bytes_done / self.seconds if self.seconds > 0 and self.bytes_done else None

    @property
    def eta(self) -> float | None:
        """Seconds left at the speed so far; None while it is unknown."""
        speed = self.speed
        return (self.total_bytes - self.bytes_done) / speed if speed else None

    def describe(self) -> str:
        """One line for a page or a log, e.g. "Downloading small_16k: 1.2 GB of 7.2 GB, file 3 of 6
        (open_clip_pytorch_model.bin), 35.2 MB/s, about 2 min 50 s left"."""
        text = f"Downloading {self.name}: {human_size(self.bytes_done)} of {human_size(self.total_bytes)}"
        if self.file:
            number = min(self.files_done + 1, self.file_count)
            text += f", file {number} of {self.file_count} ({self.file.rsplit('/', 1)[-1]})"
        else:
            text += f", {self.files_done} of {self.file_count} files"
        if self.speed is not None:
            text += f", {human_size(int(self.speed))}/s"
        if self.eta is not None and self.file:
            text += f", about {_duration(self.eta)} left"
        return text


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    return f"{minutes // 60} h {minutes % 60} min"


class DownloadTracker:
    """Counts the bytes of `files` as huggingface_hub fetches them and reports to `callback`.

    `begin(f)` before a file's download, `end(f)` after it; in between the
    bars of `bar_class()` (passed as hf_hub_download's `tqdm_class`) feed the
    byte count. The first bar a download opens counts the file's bytes (the
    HTTP bar, or the xet "reconstruction" bar); later ones (xet's network
    transfer) only show in the console. A file's count never passes its
    registered size, and `end` sets it to that size, so the total stays true
    when no bar reports at all.
    """

    def __init__(
        self,
        name: str,
        files: Sequence[WeightFile],
        callback: Callable[[DownloadProgress], object] | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.name = name
        self.files = list(files)
        self.callback = callback
        self.clock = clock
        self.total = sum(f.size for f in self.files)
        self._lock = threading.Lock()
        self._finished = 0  # bytes of the files done
        self._current: WeightFile | None = None
        self._current_bytes = 0
        self._done = 0
        self._bar_open = False
        self._started: float | None = None
        self._last_report = float("-inf")

    def begin(self, f: WeightFile) -> None:
        with self._lock:
            if f not in self.files:  # not foreseen (a corrupt file fetched again): counted from now on
                self.files.append(f)
                self.total += f.size
            if self._started is None:
                self._started = self.clock()
            self._current, self._current_bytes, self._bar_open = f, 0, False
        self._report(force=True)

    def advance(self, n: float) -> None:
        with self._lock:
            if self._current is None:
                return
            self._current_bytes = max(0, min(self._current.size, self._current_bytes + int(n)))
        self._report()

    def end(self, f: WeightFile) -> None:
        with self._lock:
            self._finished += f.size
            self._done += 1
            self._current, self._current_bytes = None, 0
        self._report(force=True)

    def snapshot(self) -> DownloadProgress:
        with self._lock:
            current = self._current
            started = self._started if self._started is not None else self.clock()
            return DownloadProgress(
                name=self.name,
                file=current.path if current is not None else "",
                files_done=self._done,
                file_count=len(self.files),
                bytes_done=self._finished + self._current_bytes,
                total_bytes=self.total,
                seconds=self.clock() - started,
            )

    def _report(self, *, force: bool = False) -> None:
        if self.callback is None:
            return
        now = self.clock()
        if not force and now - self._last_report < REPORT_EVERY_SECONDS:
            return
        self._last_report = now
        self.callback(self.snapshot())

    def _claim_bar(self) -> bool:
        """Whether a bar opened now counts the current file's bytes (only the first one does)."""
        with self._lock:
            first = self._current is not None and not self._bar_open
            self._bar_open = self._bar_open or first
            return first

    def bar_class(self) -> type:
        """A tqdm class for hf_hub_download's `tqdm_class`: the console bar as usual, bytes counted here."""
        tracker = self

        class _CountingBar(hub_tqdm):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self._counts = tracker._claim_bar()
                if self._counts and kwargs.get("initial"):  # a resumed download: bytes already there
                    tracker.advance(kwargs["initial"])

            def update(self, n=1):
                if self._counts and n:
                    tracker.advance(n)
                return super().update(n)

        return _CountingBar


def accepts_tqdm_class(download: Callable) -> bool:
    """Whether this hf_hub_download takes `tqdm_class` (huggingface_hub 0.x did not)."""
    try:
        return "tqdm_class" in inspect.signature(download).parameters
    except (TypeError, ValueError):
        return False
