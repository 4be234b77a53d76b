"""Serving for long-running front ends (the Gradio app): requests, one resident pipeline, temp outputs.

A server process keeps a single `SelvaPipeline` in a `PipelineSlot`: it loads on
first use, swaps to another variant on request (freeing the old one first, so
only one generator is ever in memory), and lets the visitor who started a
generation cancel it. `parse_request` turns form or API values into a checked
`GenerationRequest`; `GenerationService` runs one on the slot's pipeline and
writes its files into the short-lived folders of an `OutputStore`. What a run
reports (progress text, the info line) lives in `selva.progress`.

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

from selva.progress import ProgressFn, ProgressReport, StemsProgress, dtype_name, info_line
from selva.spec import (
    DEFAULT_MAX_DURATION,
    DEFAULT_VARIANT,
    NUM_SAMPLES,
    ORIGINAL_AUDIO_GAIN,
    CancelToken,
    GenerationRequest,
)

if TYPE_CHECKING:
    from selva.pipeline import SelvaOutput, SelvaPipeline
    from selva.stems import Stem, StemsOutput

log = logging.getLogger(__name__)

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
    """What one request made: files in an `OutputStore` folder, what was asked, the info line, the seed.

    Candidate k was drawn from `seed + k` (`candidate_seed(k)`): asked alone with
    that seed it comes out the same. Front ends that keep results longer than our
    folders live swap in their own copies of the files (`dataclasses.replace`).
    """

    videos: tuple[str, ...]  # one mp4 per candidate; none for sound from the prompt alone
    audio_files: tuple[str, ...]  # per candidate, a FLAC then a WAV
    info: str
    seed: int
    prompt: str = ""
    duration: float = 0.0  # the span made, in seconds (never "auto": what the pipeline settled on)
    start: float = 0.0
    source: str | None = None  # the video's file name; None for sound from the prompt alone

    @property
    def count(self) -> int:
        """How many candidates were made."""
        return len(self.audio_files) // 2

    def candidate_seed(self, k: int) -> int:
        return self.seed + k

    def candidate_audio(self, k: int) -> tuple[str, str]:
        """Candidate k's FLAC and WAV."""
        flac, wav = self.audio_files[2 * k : 2 * k + 2]
        return flac, wav

    def candidate_files(self, k: int) -> tuple[str, ...]:
        """Everything candidate k has: its mp4 (with a video), FLAC and WAV."""
        return (*self.videos[k : k + 1], *self.candidate_audio(k))

    @property
    def label(self) -> str:
        """How a list of results names this one: prompt, seed, span."""
        where = f"of {self.source}" if self.source else "from the prompt alone"
        many = f" · {self.count} candidates" if self.count > 1 else ""
        return f"{self.prompt} · seed {self.seed} · {self.duration:.2f} s {where}{many}"


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
        cancel: CancelToken | None = None,
    ) -> GenerationResult:
        """Generate `req` (waiting for a job in flight) and write an mp4, a FLAC and a WAV per candidate.

        `session` names the visitor: only they can cancel the job (`PipelineSlot.cancel`),
        which ends it with `GenerationCancelled`, also while it still waits for its turn;
        `cancel` is the caller's own token for this one job (a front end's cancel of one request).
        `original_audio_gain` mixes the video's own soundtrack under the new audio in the mp4s.
        """
        if original_audio_gain:
            ORIGINAL_AUDIO_GAIN.check(original_audio_gain, by_label=True)
        token = self.slot.job(session, cancel)
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
        stem = f"{_slug(source, 24)}_{_slug(req.prompt, 32)}"
        videos: list[str] = []
        audio_files: list[str] = []
        count = out.audio.shape[0]
        for k in range(count):
            # Candidate k is drawn from seed + k: its file names carry the seed that makes it again.
            name = f"{stem}_seed{out.seed + k}"
            if out.video is not None:
                gain = original_audio_gain or None
                videos.append(str(out.save_video(folder / f"{name}.mp4", k, original_audio_gain=gain)))
            audio_files += [str(out.save_audio(folder / f"{name}.{ext}", k)) for ext in ("flac", "wav")]
        info = info_line(out, pipe, load_seconds)
        if original_audio_gain:
            info += f" · original audio at {original_audio_gain:g}"
        return GenerationResult(
            videos=tuple(videos),
            audio_files=tuple(audio_files),
            info=info,
            seed=out.seed,
            prompt=req.prompt,
            duration=out.duration,
            start=out.start,
            source=Path(req.video).name if req.video is not None else None,
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
        cancel: CancelToken | None = None,
    ) -> StemsResult:
        """Generate each stem on `base`'s span (stem k with seed + k), mix them and save every file.

        One job: it holds the pipeline for all its stems and is cancelled as a whole (as `run`).
        """
        from selva.stems import check_stems

        stems = check_stems(stems)
        ORIGINAL_AUDIO_GAIN.check(original_audio_gain, by_label=True)
        token = self.slot.job(session, cancel)
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


def _slug(text: str, limit: int) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "clip"
