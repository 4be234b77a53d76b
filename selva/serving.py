"""Serving state for long-running front ends (the Gradio app): one resident pipeline, temp outputs.

A server process keeps a single `SelvaPipeline` in a `PipelineSlot`: it loads on
first use, swaps to another variant on request (freeing the old one first, so
only one generator is ever in memory), and lets the visitor who started a
generation cancel it. `OutputStore` hands out short-lived folders for the files
a request produces.
"""

from __future__ import annotations

import gc
import logging
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from selva.pipeline import SelvaPipeline

log = logging.getLogger(__name__)

OUTPUT_KEEP_SECONDS = 600  # our copies only need to live until the front end has copied them


class PipelineSlot:
    """Holds this process's single `SelvaPipeline`, loads it on first use, swaps it for another variant.

    Switching variants frees the resident pipeline before loading the next one,
    so only one generator is ever in memory. `lock` guards the pipeline: hold
    it while loading or generating.
    """

    def __init__(
        self,
        variant: str = "small_16k",  # = selva.variants.DEFAULT_VARIANT; importing that pulls in torch
        *,
        device: str | None = None,
        precision: str | None = None,
        offload: str = "auto",
        weights_dir: str | Path | None = None,
        revision: str | None = None,
        max_duration: float | None = None,
        pipe: SelvaPipeline | None = None,
    ):
        self.default_variant = variant
        self.device = device
        self.precision = precision
        self.offload = offload
        self.weights_dir = weights_dir
        self.revision = revision
        self._max_duration = max_duration
        self.pipe = pipe
        self.lock = threading.Lock()
        self._running: str | None = None  # session of the generation in flight
        self._cancelled = threading.Event()

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
        if self._max_duration is not None:
            return self._max_duration
        from selva.pipeline import DEFAULT_MAX_DURATION

        return DEFAULT_MAX_DURATION

    @property
    def variant(self) -> str | None:
        """The resident variant, or None before the first load."""
        return self.pipe.variant.name if self.pipe is not None else None

    def get(
        self, variant: str | None, report: Callable[..., object] | None = None
    ) -> tuple[SelvaPipeline, float]:
        """The pipeline for `variant` (default: the start-up one) and the seconds spent loading it.

        Call with `lock` held. Loading happens here, once per switch, never per request.
        """
        variant = variant or self.default_variant
        if self.pipe is not None and self.pipe.variant.name == variant:
            return self.pipe, 0.0
        from selva.pipeline import SelvaPipeline
        from selva.variants import get_variant

        get_variant(variant)  # an unknown name fails here, before the resident pipeline is dropped
        if report is not None:
            report(0.0, desc=f"Loading {variant} (first use of this model; later requests skip this)")
        self.release()
        started = time.perf_counter()
        kwargs: dict[str, Any] = dict(
            device=self.device,
            dtype=self.precision,
            offload=self.offload,
            weights_dir=self.weights_dir,
            revision=self.revision,
        )
        if self._max_duration is not None:
            kwargs["max_duration"] = self._max_duration
        pipe = SelvaPipeline.from_pretrained(variant, **kwargs)
        # Gradio shows our own stage/step progress; the tqdm bar would only add noise to the logs.
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        seconds = time.perf_counter() - started
        log.info("loaded %s on %s in %.1f s", variant, pipe.device, seconds)
        return pipe, seconds

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

    def started(self, session: str) -> None:
        self._cancelled.clear()
        self._running = session

    def finished(self) -> None:
        self._running = None

    def cancel(self, session: str) -> bool:
        """Stop the generation in flight if `session` started it (a visitor cannot cancel another's job)."""
        if self._running is None or self._running != session:
            return False
        self._cancelled.set()
        if self.pipe is not None:
            self.pipe.interrupt()
        return True

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class OutputStore:
    """A private temp folder with one sub-folder per request.

    Gradio copies every returned file into its own cache (pruned by
    `delete_cache`), so our copies are only needed for a short while; old
    request folders are removed as new ones are made, and the whole folder
    when the process exits.
    """

    def __init__(self, keep_seconds: float = OUTPUT_KEEP_SECONDS):
        self.keep_seconds = keep_seconds
        self._root: Path | None = None
        self._lock = threading.Lock()

    @property
    def root(self) -> Path:
        with self._lock:
            if self._root is None:  # made on first use, not at import or build time
                self._root = Path(tempfile.mkdtemp(prefix="selva-studio-"))
                weakref.finalize(self, shutil.rmtree, self._root, ignore_errors=True)
            return self._root

    def new_folder(self) -> Path:
        root = self.root
        cutoff = time.time() - self.keep_seconds
        for old in root.iterdir():
            if old.is_dir() and old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        folder = root / uuid.uuid4().hex
        folder.mkdir()
        return folder
