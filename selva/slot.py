"""The one resident pipeline of a server process (`PipelineSlot`) and what its loading is doing.

A slot loads its pipeline on first use (through `selva.loader`, with the slot's
`LoadOptions`), swaps it for another variant on request (freeing the old one
first, so only one generator is ever in memory), reports the weights' download,
and keeps the cancel tokens of each visitor's queued and running jobs.
Nothing here imports gradio; torch and the pipeline load on first use.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selva.progress import ProgressFn
from selva.spec import DEFAULT_MAX_DURATION, DEFAULT_VARIANT, CancelToken, LoadOptions, SelvaError

if TYPE_CHECKING:
    from selva.hub_network import DownloadProgress
    from selva.pipeline import SelvaPipeline

log = logging.getLogger(__name__)

DOWNLOAD_SHARE = 0.8  # of a loading bar: the weights' download; building the networks takes the rest


@dataclass(frozen=True)
class LoadStatus:
    """What a `PipelineSlot`'s loading is doing, as a page shows it (`PipelineSlot.status`)."""

    state: str  # "idle" (nothing asked yet), "loading", "ready" or "failed"
    variant: str | None
    fraction: float = 0.0
    desc: str = ""  # one line, e.g. "Downloading small_16k: 1.2 GB of 7.2 GB, file 3 of 11 (...)"
    error: str | None = None  # when failed: the message, which says what to do
    download: DownloadProgress | None = None  # while downloading: files, bytes, speed, time left



class PipelineSlot:
    """Holds this process's single `SelvaPipeline`, loads it on first use, swaps it for another variant.

    Switching variants frees the resident pipeline before loading the next one,
    so only one generator is ever in memory; the next one's files are found
    first, so a variant that cannot load leaves the resident one serving. `lock`
    guards the pipeline: hold it while loading or generating.
    """

    def __init__(
        self,
        variant: str = DEFAULT_VARIANT,
        *,
        device: str | None = None,
        precision: str | None = None,
        offload: str = "auto",
        weights_dir: str | Path | None = None,
        revision: str | None = None,
        max_duration: float | None = None,
        pipe: SelvaPipeline | None = None,
        compile: bool = False,
    ):
        self.default_variant = variant
        self.device = device
        self.precision = precision
        self.offload = offload
        self.weights_dir = weights_dir
        self.revision = revision
        self._max_duration = max_duration
        self.compile = compile  # torch.compile each pipeline this slot loads
        self.pipe = pipe
        self.lock = threading.Lock()
        self._jobs: dict[str, set[CancelToken]] = {}  # session -> tokens of its queued or running jobs
        self._jobs_lock = threading.Lock()
        self._status = LoadStatus("ready" if pipe is not None else "idle", variant, 1.0 if pipe else 0.0)

    def options(self, variant: str | None = None) -> LoadOptions:
        """How this slot loads `variant` (default: its start-up one)."""
        return LoadOptions(
            variant=variant or self.default_variant,
            device=self.device,
            precision=self.precision,
            offload=self.offload,
            compile=self.compile,
            weights_dir=str(self.weights_dir) if self.weights_dir is not None else None,
            revision=self.revision,
            max_duration=self.max_duration,
        )

    @classmethod
    def wrap(cls, pipe: SelvaPipeline, **options: Any) -> PipelineSlot:
        """A slot around an already loaded pipeline; other variants load with its device and precision."""
        options.setdefault("device", str(pipe.device))
        options.setdefault("precision", pipe.dtype)
        options.setdefault("offload", "offload_to_cpu" if pipe.offload else "keep_in_vram")
        options.setdefault("max_duration", pipe.max_duration)
        return cls(pipe.variant.name, pipe=pipe, **options)

    @property
    def max_duration(self) -> float:
        return self._max_duration if self._max_duration is not None else DEFAULT_MAX_DURATION

    @property
    def variant(self) -> str | None:
        """The resident variant, or None before the first load."""
        return self.pipe.variant.name if self.pipe is not None else None

    def get(self, variant: str | None, report: ProgressFn | None = None) -> tuple[SelvaPipeline, float]:
        """The pipeline for `variant` (default: the start-up one) and the seconds spent loading it.

        Call with `lock` held. Loading happens here, once per switch, never per request.
        `report(fraction, desc=...)` hears how it goes: the weights' download (file,
        bytes, speed, time left) fills the first `DOWNLOAD_SHARE` of the bar. The same
        lines go to `status`, for a page that polls it.
        """
        variant = variant or self.default_variant
        if self.pipe is not None and self.pipe.variant.name == variant:
            return self.pipe, 0.0
        from selva import hub
        from selva.loader import load_pipeline
        from selva.variants import get_variant

        get_variant(variant)  # an unknown name fails here, before the resident pipeline is dropped

        def say(fraction: float, desc: str, download: DownloadProgress | None = None) -> None:
            self._status = LoadStatus("loading", variant, fraction, desc, download=download)
            if report is not None:
                report(fraction, desc=desc)

        say(0.0, f"Loading {variant} (first use of this model; later requests skip this)")
        started = time.perf_counter()
        try:
            # Missing or corrupt files (offline, say) must fail while the resident pipeline is still
            # here, or one bad request would leave the server with no model. `from_pretrained` resolves
            # again with the same arguments; the checksums verified here are remembered, so that costs
            # little.
            hub.resolve(
                variant,
                weights_dir=self.weights_dir,
                revision=self.revision,
                on_download=lambda p: say(DOWNLOAD_SHARE * p.fraction, p.describe(), p),
            )
            say(DOWNLOAD_SHARE, f"Loading {variant} into memory")
            self.release()
            pipe = load_pipeline(self.options(variant))
        except Exception as exc:
            # A page shows this instead of a bar that never moves; our errors say what to do.
            error = str(exc) if isinstance(exc, SelvaError) else f"{type(exc).__name__}: {exc}"
            self._status = LoadStatus("failed", variant, 0.0, f"Loading {variant} failed", error=error)
            raise
        # Gradio shows our own stage/step progress; the tqdm bar would only add noise to the logs.
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        seconds = time.perf_counter() - started
        self._status = LoadStatus("ready", variant, 1.0, f"{variant} loaded in {seconds:.1f} s")
        log.info("loaded %s on %s in %.1f s", variant, pipe.device, seconds)
        return pipe, seconds

    @property
    def status(self) -> LoadStatus:
        """What loading is doing now (or did last): for a page to poll while it waits."""
        return self._status

    def load_in_background(self, variant: str | None = None) -> threading.Thread:
        """Start loading `variant` (default: the start-up one) on a thread and return at once.

        The page comes up meanwhile and polls `status`. A failure is kept in
        `status` (and logged); the next request tries again and reports it.
        """

        def load() -> None:
            try:
                with self.lock:
                    self.get(variant)
            except SelvaError as exc:
                log.error("%s", exc)
            except Exception:
                log.exception("loading %s failed", variant or self.default_variant)

        thread = threading.Thread(target=load, name="selva-load", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """Drop the resident pipeline and give its memory back (before another variant loads)."""
        if self.pipe is None:
            return
        device = self.pipe.device
        self.pipe = None
        gc.collect()
        if device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    # -- cancelling ------------------------------------------------------------------------------

    def job(self, session: str, token: CancelToken | None = None) -> CancelToken:
        """A cancel token for a new job of `session` (`token`, or a new one), registered until `done`."""
        token = token or CancelToken()
        with self._jobs_lock:
            self._jobs.setdefault(session, set()).add(token)
        return token

    def done(self, session: str, token: CancelToken) -> None:
        with self._jobs_lock:
            tokens = self._jobs.get(session, set())
            tokens.discard(token)
            if not tokens:
                self._jobs.pop(session, None)

    def cancel(self, session: str) -> bool:
        """Stop `session`'s queued and running jobs (a visitor cannot cancel another's job).

        A job still waiting for the lock stops before it starts; a running one
        after its current flow step; one past its flow steps finishes.
        """
        with self._jobs_lock:
            tokens = list(self._jobs.get(session, ()))
        for token in tokens:
            token.cancel()
        return bool(tokens)
