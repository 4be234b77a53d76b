"""Serving for long-running front ends (the Gradio app): requests, one resident pipeline, temp outputs.

A server process keeps a single `SelvaPipeline` in a `PipelineSlot`: it loads on
first use, swaps to another variant on request (freeing the old one first, so
only one generator is ever in memory), and lets the visitor who started a
generation cancel it. `parse_request` turns form or API values into a checked
`GenerationRequest`; `GenerationService` runs one on the slot's pipeline and
writes its files into the short-lived folders of an `OutputStore`.

Nothing here imports gradio, and torch and the pipeline only load on first use,
so a front end can import this module without loading a model.
"""

from __future__ import annotations

import gc
import logging
import re
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selva.spec import (
    DEFAULT_MAX_DURATION,
    DEFAULT_VARIANT,
    NUM_SAMPLES,
    ORIGINAL_AUDIO_GAIN,
    CancelToken,
    GenerationRequest,
)

if TYPE_CHECKING:
    import torch

    from selva.pipeline import SelvaOutput, SelvaPipeline
    from selva.stems import Stem, StemsOutput

log = logging.getLogger(__name__)

ProgressFn = Callable[..., object]  # called as progress(fraction, desc=...), as gradio's gr.Progress is
MAX_CANDIDATES = int(NUM_SAMPLES.maximum)  # each candidate costs a full generation and a video file
OUTPUT_KEEP_SECONDS = 600  # our copies only need to live until the front end has copied them


# -- requests ----------------------------------------------------------------------------------------


# Widget values (or an API caller's) -> a checked `GenerationRequest`: the spec's form parser.
parse_request = GenerationRequest.from_form


# -- the resident pipeline ---------------------------------------------------------------------------


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
        """
        variant = variant or self.default_variant
        if self.pipe is not None and self.pipe.variant.name == variant:
            return self.pipe, 0.0
        from selva import hub
        from selva.pipeline import SelvaPipeline
        from selva.variants import get_variant

        get_variant(variant)  # an unknown name fails here, before the resident pipeline is dropped
        if report is not None:
            report(0.0, desc=f"Loading {variant} (first use of this model; later requests skip this)")
        started = time.perf_counter()
        # Missing or corrupt files (offline, say) must fail while the resident pipeline is still
        # here, or one bad request would leave the server with no model. `from_pretrained` resolves
        # again with the same arguments; the checksums verified here are remembered, so that costs little.
        hub.resolve(variant, weights_dir=self.weights_dir, revision=self.revision)
        self.release()
        kwargs: dict[str, Any] = dict(
            device=self.device,
            dtype=self.precision,
            offload=self.offload,
            weights_dir=self.weights_dir,
            revision=self.revision,
            compile=self.compile,
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

    def job(self, session: str) -> CancelToken:
        """A cancel token for a new job of `session`, registered until `done` is called with it."""
        token = CancelToken()
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


# -- running a request -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationResult:
    """What one request made: files in an `OutputStore` folder, the info line and the seed used."""

    videos: tuple[str, ...]  # one mp4 per candidate; none for sound from the prompt alone
    audio_files: tuple[str, ...]  # a FLAC and a WAV per candidate
    info: str
    seed: int


class GenerationService:
    """Runs `GenerationRequest`s on a slot's pipeline, one at a time, and saves what they make.

    `on_gpu` wraps the model call alone (ZeroGPU's `spaces.GPU`): loading and
    file writing stay in this process, so a loaded variant stays loaded between
    calls. The wrapped call takes plain values because ZeroGPU pickles them into
    its worker.
    """

    def __init__(
        self,
        slot: PipelineSlot,
        outputs: OutputStore | None = None,
        *,
        on_gpu: Callable[[Callable], Callable] | None = None,
    ):
        self.slot = slot
        self.outputs = outputs or OutputStore()
        self._infer = on_gpu(self._infer_here) if on_gpu is not None else self._infer_here
        wrap = on_gpu or (lambda fn: fn)
        self._infer_stems = wrap(self._infer_stems_here)

    def run(
        self,
        req: GenerationRequest,
        progress: ProgressFn | None = None,
        *,
        session: str = "local",
        original_audio_gain: float | None = None,
    ) -> GenerationResult:
        """Generate `req` (waiting for a job in flight) and write an mp4, a FLAC and a WAV per candidate.

        `session` names the visitor: only they can cancel the job (`PipelineSlot.cancel`),
        which ends it with `GenerationCancelled`, also while it still waits for its turn.
        `original_audio_gain` mixes the video's own soundtrack under the new audio in the mp4s.
        """
        if original_audio_gain:
            ORIGINAL_AUDIO_GAIN.check(original_audio_gain, by_label=True)
        token = self.slot.job(session)
        try:
            out, pipe, load_seconds = self._generate(req, progress, token)
        finally:
            self.slot.done(session, token)
        return self._save(req, out, pipe, load_seconds, original_audio_gain)

    def _generate(
        self, req: GenerationRequest, progress: ProgressFn | None, token: CancelToken
    ) -> tuple[SelvaOutput, SelvaPipeline, float]:
        if progress is not None and self.slot.lock.locked():
            progress(0.0, desc="Waiting for the job in progress to finish")
        with self.slot.lock:  # one generation at a time; no variant swap during one
            token.raise_if_cancelled()  # cancelled while it waited: do not even load
            pipe, load_seconds = self.slot.get(req.variant, progress)
            out = self._infer(req, progress, token)
        return out, pipe, load_seconds

    def _infer_here(
        self, req: GenerationRequest, progress: ProgressFn | None, token: CancelToken
    ) -> SelvaOutput:
        pipe = self.slot.pipe
        assert pipe is not None  # loaded by _generate under the lock
        report = ProgressReport(progress, req.steps)
        out = pipe.generate(
            req, callback_on_stage=report.stage, callback_on_step_end=report.step, cancel=token
        )
        report.finish()
        return out

    def _save(
        self,
        req: GenerationRequest,
        out: SelvaOutput,
        pipe: SelvaPipeline,
        load_seconds: float,
        original_audio_gain: float | None = None,
    ) -> GenerationResult:
        folder = self.outputs.new_folder()
        source = Path(req.video).stem if req.video is not None else "prompt"
        stem = f"{_slug(source, 24)}_{_slug(req.prompt, 32)}_seed{out.seed}"
        videos: list[str] = []
        audio_files: list[str] = []
        count = out.audio.shape[0]
        for k in range(count):
            name = stem if count == 1 else f"{stem}_{k + 1}"
            if out.video is not None:
                gain = original_audio_gain or None
                videos.append(str(out.save_video(folder / f"{name}.mp4", k, original_audio_gain=gain)))
            audio_files += [str(out.save_audio(folder / f"{name}.{ext}", k)) for ext in ("flac", "wav")]
        info = info_line(out, pipe, load_seconds)
        if original_audio_gain:
            info += f" · original audio at {original_audio_gain:g}"
        return GenerationResult(
            videos=tuple(videos), audio_files=tuple(audio_files), info=info, seed=out.seed
        )


    # -- several sources at once (selva.stems) ----------------------------------------------------

    def run_stems(
        self,
        base: GenerationRequest,
        stems: Sequence[Stem],
        progress: ProgressFn | None = None,
        *,
        session: str = "local",
        original_audio_gain: float = 0.0,
    ) -> StemsResult:
        """Generate each stem on `base`'s span (stem k with seed + k), mix them and save every file.

        One job: it holds the pipeline for all its stems and is cancelled as a whole.
        """
        from selva.stems import check_stems

        stems = check_stems(stems)
        ORIGINAL_AUDIO_GAIN.check(original_audio_gain, by_label=True)
        token = self.slot.job(session)
        try:
            if progress is not None and self.slot.lock.locked():
                progress(0.0, desc="Waiting for the job in progress to finish")
            with self.slot.lock:
                token.raise_if_cancelled()
                pipe, load_seconds = self.slot.get(base.variant, progress)
                out = self._infer_stems(base, list(stems), float(original_audio_gain), progress, token)
        finally:
            self.slot.done(session, token)
        from selva.stems import save_stems, stems_info

        folder = self.outputs.new_folder()
        files = save_stems(out, folder, f"{_slug(Path(base.video).stem, 24)}_seed{out.seed}")
        info = stems_info(out) + f" · {pipe.variant.name} on {pipe.device} ({dtype_name(pipe.dtype)})"
        if load_seconds:
            info += f" · model loaded in {load_seconds:.1f} s"
        return StemsResult(
            mix_video=str(files.mix_video),
            tracks_video=str(files.tracks_video),
            mix_audio=str(files.mix_audio),
            stem_audio=tuple(str(p) for p in files.stem_audio),
            prompts=tuple(s.prompt for s in out.stems),
            seeds=files.seeds,
            info=info,
        )

    def _infer_stems_here(
        self,
        base: GenerationRequest,
        stems: list[Stem],
        original_audio_gain: float,
        progress: ProgressFn | None,
        token: CancelToken,
    ) -> StemsOutput:
        from selva.stems import generate_stems

        pipe = self.slot.pipe
        assert pipe is not None  # loaded by run_stems under the lock
        report = StemsProgress(progress, base.steps)
        out = generate_stems(
            pipe,
            base,
            stems,
            original_audio_gain=original_audio_gain,
            callback_on_stage=report.stage,
            callback_on_step_end=report.step,
            on_stem=report.begin,
            cancel=token,
        )
        report.finish()
        return out


@dataclass(frozen=True)
class StemsResult:
    """What one stems request made: file paths in an `OutputStore` folder, the seeds and the info line."""

    mix_video: str  # the span with the mix as its soundtrack
    tracks_video: str  # mix (default track) + one track per stem (+ "original")
    mix_audio: str
    stem_audio: tuple[str, ...]  # one FLAC per stem, at its gain
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]  # stem k: seed + k
    info: str

    @property
    def label(self) -> str:
        """How a list of earlier results names this one."""
        return " + ".join(self.prompts) + f" (seed {self.seeds[0]})"


# -- reporting ---------------------------------------------------------------------------------------


class ProgressReport:
    """The pipeline's stage and step callbacks as `progress(fraction, desc=...)` calls (gradio's shape)."""

    # Where each stage starts on the bar, and what the user reads meanwhile.
    STAGES = {
        "probe": (0.0, "Reading video"),
        "text": (0.05, "Encoding prompts"),
        "decode": (0.1, "Decoding video"),
        "text_synch": (0.15, "TextSynch: following the prompted motion"),
        "flow": (0.2, "Generating"),
        "vae": (0.9, "Decoding audio"),
        "vocoder": (0.95, "Vocoding"),
    }
    FLOW_SHARE = 0.7  # of the bar, from the flow's start to the VAE's

    def __init__(self, progress: ProgressFn | None, steps: int):
        self.progress = progress
        self.steps = steps

    def stage(self, name: str) -> None:
        if self.progress is not None and name in self.STAGES:
            fraction, desc = self.STAGES[name]
            self.progress(fraction, desc=desc)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress(1.0, desc="Done")

    def step(self, pipe: object, index: int, t: float, state: dict) -> None:
        """One flow step done; past 8 s also which window (batch of windows) of how many runs.

        Windows run batched, so one flow pass may carry several windows at once:
        the bar then names the first window of the pass ("windows 1-3/12").
        """
        if self.progress is None:
            return
        done = index + 1
        passes, number = state.get("passes", 1), state.get("pass", 0)
        overall = (number * self.steps + done) / (passes * self.steps)
        fraction = self.STAGES["flow"][0] + self.FLOW_SHARE * overall
        where = ""
        windows = state.get("windows", 1)
        if windows > 1:
            first = state["window"] + 1
            last = first + state.get("window_count", 1) - 1
            span = f"window {first}/{windows}" if last == first else f"windows {first}-{last}/{windows}"
            where = f"{span}, "
        self.progress(fraction, desc=f"Generating: {where}step {done}/{self.steps}")


class StemsProgress(ProgressReport):
    """`ProgressReport` over several stems: stem k of n fills the k-th n-th of the bar."""

    def __init__(self, progress: ProgressFn | None, steps: int):
        super().__init__(self._scaled if progress is not None else None, steps)
        self.outer = progress
        self.index, self.count = 0, 1

    def begin(self, index: int, count: int) -> None:
        self.index, self.count = index, count

    def _scaled(self, fraction: float, desc: str = "") -> None:
        assert self.outer is not None
        if fraction >= 1.0:
            self.outer(1.0, desc=desc)
            return
        label = f"Stem {self.index + 1}/{self.count}: {desc}"
        self.outer((self.index + fraction) / self.count, desc=label)


_STAGES = {
    "probe": "probe",
    "text": "prompts",
    "decode": "video decode",
    "text_synch": "TextSynch",
    "flow": "flow",
    "vae": "VAE",
    "vocoder": "vocoder",
}


def info_line(out: SelvaOutput, pipe: SelvaPipeline, load_seconds: float = 0.0) -> str:
    """Seed, span, device and seconds per stage, in one line a user can paste into a bug report."""
    timings = out.timings
    stages = []
    for key, label in _STAGES.items():
        if key in timings:
            extra = (
                f" ({timings['flow_per_step']:.2f} s/step)"
                if key == "flow" and "flow_per_step" in timings
                else ""
            )
            stages.append(f"{label} {timings[key]:.2f} s{extra}")
    stages += [
        f"{k} {v:.2f} s"
        for k, v in timings.items()
        if k not in _STAGES and k not in ("total", "flow_per_step")
    ]
    total = timings.get("total", sum(timings.get(k, 0.0) for k in _STAGES))
    candidates = out.audio.shape[0]
    parts = [
        f"seed {out.seed}",
        f"{out.duration:.2f} s from {out.start:.2f} s",
        f"{candidates} candidate{'s' if candidates > 1 else ''} at {out.sample_rate / 1000:g} kHz",
        f"{pipe.variant.name} on {pipe.device} ({dtype_name(pipe.dtype)})",
        ", ".join(stages) + f"; total {total:.2f} s",
    ]
    if load_seconds:
        parts.append(f"model loaded in {load_seconds:.1f} s")
    return " · ".join(parts)


def dtype_name(dtype: torch.dtype) -> str:
    """bf16, fp16 or fp32: the names the command lines take."""
    return {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32"}.get(
        str(dtype), str(dtype)
    )


def _slug(text: str, limit: int) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "clip"
