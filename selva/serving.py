"""Serving for long-running front ends (the Gradio app): requests, one resident pipeline, temp outputs.

A server process keeps a single `SelvaPipeline` in a `PipelineSlot`: it loads on
first use, swaps to another variant on request (freeing the old one first, so
only one generator is ever in memory), and lets the visitor who started a
generation cancel it. `parse_request` turns form or API values into a checked
`GenerationRequest`; `GenerationService` runs one on the slot's pipeline and
writes its files into the short-lived folders of an `OutputStore` (`selva.output_store`). What a run
reports (progress text, the info line) lives in `selva.progress`.

Nothing here imports gradio, and torch and the pipeline only load on first use,
so a front end can import this module without loading a model.
"""

from __future__ import annotations

import gc
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selva.names import slug
from selva.output_store import OUTPUT_KEEP_SECONDS, OutputStore  # noqa: F401 (re-exported)
from selva.progress import ProgressFn, ProgressReport, StemsProgress, dtype_name, info_line, project_info
from selva.project import Project, take_seeds
from selva.spec import (
    DEFAULT_MAX_DURATION,
    DEFAULT_VARIANT,
    NUM_SAMPLES,
    ORIGINAL_AUDIO_GAIN,
    CancelToken,
    GenerationRequest,
    LoadOptions,
    SelvaError,
)

if TYPE_CHECKING:
    from selva.hub_network import DownloadProgress
    from selva.pipeline import SelvaPipeline
    from selva.render import Rendered
    from selva.stems import Stem

log = logging.getLogger(__name__)

MAX_CANDIDATES = int(NUM_SAMPLES.maximum)  # each candidate costs a full generation and a video file


# -- requests ----------------------------------------------------------------------------------------


# Widget values (or an API caller's) -> a checked `GenerationRequest`: the spec's form parser.
parse_request = GenerationRequest.from_form


# -- the resident pipeline ---------------------------------------------------------------------------

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
    project: Project | None = None  # what was rendered, to continue from or save

    @property
    def count(self) -> int:
        """How many candidates were made."""
        return len(self.audio_files) // 2

    def candidate_seed(self, k: int) -> int:
        return take_seeds(self.seed, k + 1)[k]

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


@contextmanager
def _removed_on_failure(folder: Path) -> Iterator[None]:
    """Remove `folder` (a request's, still without results) when the block raises."""
    try:
        yield
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


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
        self._render = on_gpu(self._render_here) if on_gpu is not None else self._render_here

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

        One sound's project with `num_samples` takes, rendered by `render`.
        `session` names the visitor: only they can cancel the job (`PipelineSlot.cancel`),
        which ends it with `GenerationCancelled`, also while it still waits for its turn;
        `cancel` is the caller's own token for this one job (a front end's cancel of one request).
        `original_audio_gain` mixes the video's own soundtrack under the new audio in the mp4s.
        """
        from selva.project_files import write_takes
        from selva.render import single_sound

        if original_audio_gain:
            ORIGINAL_AUDIO_GAIN.check(original_audio_gain, by_label=True)
        project = single_sound(req, original_audio_gain=original_audio_gain or 0.0)
        folder = self.outputs.new_folder()
        with _removed_on_failure(folder):  # a cancelled or failed job leaves no folder behind
            rendered, pipe, load_seconds = self.render(
                project, folder / "takes", progress, session=session, cancel=cancel
            )
        source = Path(req.video).stem if req.video is not None else "prompt"
        files = write_takes(rendered, folder, f"{slug(source, 24)}_{slug(req.prompt, 32)}")
        first = rendered.project.sounds[0].takes[rendered.generated[0][1]]
        info = info_line(
            rendered.timings,
            pipe,
            seed=first.seed,
            duration=rendered.duration,
            start=rendered.start if req.video is not None else None,
            candidates=len(files),
            load_seconds=load_seconds,
        )
        if original_audio_gain:
            info += f" · original audio at {original_audio_gain:g}"
        return GenerationResult(
            videos=tuple(str(f.video) for f in files if f.video is not None),
            audio_files=tuple(str(p) for f in files for p in f.audio),
            info=info,
            seed=first.seed,
            prompt=req.prompt,
            duration=rendered.duration,
            start=rendered.start,
            source=Path(req.video).name if req.video is not None else None,
            project=rendered.project,
        )

    def render(
        self,
        project: Project,
        folder: Path | None,
        progress: ProgressFn | None = None,
        *,
        session: str = "local",
        cancel: CancelToken | None = None,
    ) -> tuple[Rendered, SelvaPipeline, float]:
        """Render `project` on the slot's pipeline (loading its variant if needed): one job.

        Returns the rendered project, the pipeline and the seconds spent loading it. `cancel`
        is the caller's own token for this job (else the slot makes one for `session`).
        """
        token = self.slot.job(session, cancel)
        try:
            if progress is not None and self.slot.lock.locked():
                progress(0.0, desc="Waiting for the job in progress to finish")
            with self.slot.lock:  # one generation at a time; no variant swap during one
                token.raise_if_cancelled()  # cancelled while it waited: do not even load
                pipe, load_seconds = self.slot.get(project.variant, progress)
                rendered = self._render(project, folder, progress, token)
        finally:
            self.slot.done(session, token)
        return rendered, pipe, load_seconds

    def _render_here(
        self, project: Project, folder: Path | None, progress: ProgressFn | None, token: CancelToken
    ) -> Rendered:
        from selva.render import render

        pipe = self.slot.pipe
        assert pipe is not None  # loaded by `render` under the lock
        steps = max((t.steps for s in project.sounds for t in s.takes if t.audio is None), default=1)
        several = len(project.sounds) > 1
        report = StemsProgress(progress, steps) if several else ProgressReport(progress, steps)
        rendered = render(
            pipe,
            project,
            folder,
            callback_on_stage=report.stage,
            callback_on_step_end=report.step,
            on_sound=getattr(report, "begin", None),
            cancel=token,
        )
        report.finish()
        return rendered

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
        from selva.project_files import write_mix
        from selva.stems import stems_project

        ORIGINAL_AUDIO_GAIN.check(original_audio_gain, by_label=True)
        project = stems_project(base, stems, original_audio_gain=original_audio_gain)
        folder = self.outputs.new_folder()
        with _removed_on_failure(folder):  # a cancelled or failed job leaves no folder behind
            rendered, pipe, load_seconds = self.render(
                project, folder / "takes", progress, session=session, cancel=cancel
            )
        seeds = tuple(rendered.seeds)
        files = write_mix(rendered, folder, f"{slug(Path(project.video).stem, 24)}_seed{seeds[0]}")
        info = project_info(rendered) + f" · {pipe.variant.name} on {pipe.device} ({dtype_name(pipe.dtype)})"
        if load_seconds:
            info += f" · model loaded in {load_seconds:.1f} s"
        assert files.mix_video is not None and files.tracks_video is not None  # stems have a video
        return StemsResult(
            mix_video=str(files.mix_video),
            tracks_video=str(files.tracks_video),
            mix_audio=str(files.mix_audio),
            stem_audio=tuple(str(p) for p in files.sound_audio),
            prompts=tuple(s.prompt for s in rendered.project.sounds),
            seeds=seeds,
            info=info,
            project=rendered.project,
        )


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
    project: Project | None = None  # what was rendered, to continue from or save

    @property
    def label(self) -> str:
        """How a list of earlier results names this one."""
        return " + ".join(self.prompts) + f" (seed {self.seeds[0]})"
