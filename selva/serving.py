"""Serving for long-running front ends (the Gradio app): requests, their jobs, temp outputs.

A server process keeps a single `SelvaPipeline` in a `selva.slot.PipelineSlot`
(re-exported here). `parse_request` turns form or API values into a checked
`GenerationRequest`; `GenerationService` runs one on the slot's pipeline and
writes its files into the short-lived folders of an `OutputStore` (`selva.output_store`). What a run
reports (progress text, the info line) lives in `selva.progress`.

Asked with `score=True`, a job also scores its takes with CLAP (`selva.project_scores`;
the checkpoint is the service's `scorer`, loaded on first use and kept resident): the
result's `scores` list each take's numbers and best flag, and its info line ends with
them; a scorer that cannot load or score leaves the takes unscored and says why
(`score_warning`), and the generation is delivered all the same. Delivered files are
at `spec.DEFAULT_OUTPUT_RATE` (48 kHz) unless `sample_rate="model"` asks for the
model's own, and at a `loudness` target when one is given.

Nothing here imports gradio, and torch and the pipeline only load on first use,
so a front end can import this module without loading a model.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from selva.names import slug
from selva.output_store import OUTPUT_KEEP_SECONDS, OutputStore  # noqa: F401 (re-exported)
from selva.progress import ProgressFn, ProgressReport, StemsProgress, info_line, project_info, ran_on
from selva.project import Mix, Project, take_seeds
from selva.slot import LoadStatus, PipelineSlot  # noqa: F401 (re-exported: the server's API)
from selva.spec import (
    DEFAULT_LOUDNESS_TARGET,
    DEFAULT_OUTPUT_RATE,
    NUM_SAMPLES,
    ORIGINAL_AUDIO_GAIN,
    CancelToken,
    GenerationRequest,
    check_loudness_target,
    check_output_rate,
)

if TYPE_CHECKING:
    from selva.pipeline import SelvaPipeline
    from selva.project_files import ProjectResult
    from selva.project_scores import ScoredTake
    from selva.render import Rendered
    from selva.stems import Stem

log = logging.getLogger(__name__)

MAX_CANDIDATES = int(NUM_SAMPLES.maximum)  # each candidate costs a full generation and a video file


# -- requests ----------------------------------------------------------------------------------------


# Widget values (or an API caller's) -> a checked `GenerationRequest`: the spec's form parser.
parse_request = GenerationRequest.from_form


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
    score_warning: str | None = None  # why the takes went unscored when scores were asked for

    @property
    def scores(self) -> tuple[ScoredTake, ...]:
        """Each scored candidate's CLAP scores and best flag (none unless asked with `score=True`)."""
        return _scores(self.project)

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


def _scores(project: Project | None) -> tuple[ScoredTake, ...]:
    from selva.project_scores import scored_takes

    return () if project is None else scored_takes(project)


def with_delivery(
    mix: Mix, sample_rate: int | str | None = DEFAULT_OUTPUT_RATE, loudness: float | str | None = None
) -> Mix:
    """`mix` delivered at `sample_rate` (48000, or "model" for the model's own) and `loudness`.

    `loudness` is a target of `spec.LOUDNESS_TARGETS` (-23, -16, -14 LUFS, or their labels), or
    None / "off" for the peak-normalised level. Bad values raise `InputError` naming the choices.
    """
    rate = check_output_rate(sample_rate, model_rate=0)  # 0 stands for "model": no file holds it
    return replace(mix, sample_rate=rate or None, loudness=check_loudness_target(loudness))


class Job(NamedTuple):
    """What `GenerationService.render` did: the rendered project, on which pipeline, and how."""

    rendered: Rendered
    pipe: SelvaPipeline
    load_seconds: float  # 0.0 when the variant was loaded already
    score_warning: str | None = None  # scores asked for and not made: why


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
        scorer: str | None = None,
    ):
        self.slot = slot
        self.outputs = outputs or OutputStore()
        self.scorer = scorer  # the CLAP checkpoint (Hub repo id or folder) for `score=True`; None: the spec's
        self._render = on_gpu(self._render_here) if on_gpu is not None else self._render_here

    def run(
        self,
        req: GenerationRequest,
        progress: ProgressFn | None = None,
        *,
        session: str = "local",
        original_audio_gain: float | None = None,
        cancel: CancelToken | None = None,
        score: bool = False,
        sample_rate: int | str = DEFAULT_OUTPUT_RATE,
        loudness: float | str | None = DEFAULT_LOUDNESS_TARGET,
    ) -> GenerationResult:
        """Generate `req` (waiting for a job in flight) and write an mp4, a FLAC and a WAV per candidate.

        One sound's project with `num_samples` takes, rendered by `render`.
        `session` names the visitor: only they can cancel the job (`PipelineSlot.cancel`),
        which ends it with `GenerationCancelled`, also while it still waits for its turn;
        `cancel` is the caller's own token for this one job (a front end's cancel of one request).
        `original_audio_gain` mixes the video's own soundtrack under the new audio in the mp4s.
        `score` scores the candidates (see the module's docstring); `sample_rate` and
        `loudness` are the delivered files' (`with_delivery`).
        """
        from selva.project_files import write_takes
        from selva.render import single_sound

        if original_audio_gain:
            ORIGINAL_AUDIO_GAIN.check(original_audio_gain, by_label=True)
        project = single_sound(req, original_audio_gain=original_audio_gain or 0.0)
        project = replace(project, mix=with_delivery(project.mix, sample_rate, loudness))
        folder, (rendered, pipe, load_seconds, warning) = self._render_new(
            project, progress, session, cancel, score
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
        info = _with_scores(info, rendered.project, warning)
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
            score_warning=warning,
        )

    def render(
        self,
        project: Project,
        folder: Path | None,
        progress: ProgressFn | None = None,
        *,
        session: str = "local",
        cancel: CancelToken | None = None,
        score: bool = False,
        region: tuple | None = None,
    ) -> Job:
        """Render `project` on the slot's pipeline (loading its variant if needed): one job.

        Returns the rendered project, the pipeline and the seconds spent loading it. `cancel`
        is the caller's own token for this job (else the slot makes one for `session`).
        With `score`, the takes this render holds are scored in the same job (on the
        pipeline's device); a scorer that fails leaves them unscored with the reason.
        `region`: `selva.region.reroll_region`'s (sound, take, start, end, seed, prompt) as well.
        """
        token = self.slot.job(session, cancel)
        try:
            if progress is not None and self.slot.lock.locked():
                progress(0.0, desc="Waiting for the job in progress to finish")
            with self.slot.lock:  # one generation at a time; no variant swap during one
                token.raise_if_cancelled()  # cancelled while it waited: do not even load
                pipe, load_seconds = self.slot.get(project.variant, progress)
                rendered, warning = self._render(project, folder, progress, token, score, self.scorer, region)
        finally:
            self.slot.done(session, token)
        return Job(rendered, pipe, load_seconds, warning)

    def _render_new(
        self,
        project: Project,
        progress: ProgressFn | None,
        session: str,
        cancel: CancelToken | None,
        score: bool = False,
    ) -> tuple[Path, Job]:
        """`render` into a new output folder (takes in `takes/`); a cancelled or failed job leaves none."""
        folder = self.outputs.new_folder()
        with _removed_on_failure(folder):
            takes = folder / "takes"
            return folder, self.render(project, takes, progress, session=session, cancel=cancel, score=score)

    def _render_here(
        self,
        project: Project,
        folder: Path | None,
        progress: ProgressFn | None,
        token: CancelToken,
        score: bool = False,
        scorer: str | None = None,
        region: tuple | None = None,
    ) -> tuple[Rendered, str | None]:
        """The model's part of a job (what ZeroGPU runs on its GPU): render (or re-roll a region), then
        score if asked."""
        from selva.region import render_with_edits, reroll_region

        pipe = self.slot.pipe
        assert pipe is not None  # loaded by `render` under the lock
        steps = max((t.steps for s in project.sounds for t in s.takes if t.audio is None), default=1)
        if region is not None:  # the edited take runs its source take's steps
            sound = project.sounds[region[0]]
            steps = max(steps, sound.takes[sound.chosen if region[1] is None else region[1]].steps)
        several = len(project.sounds) > 1
        report = StemsProgress(progress, steps) if several else ProgressReport(progress, steps)
        if region is not None:  # one sound's region: its flow only, after any take the project lacks
            sound, take, start, end, seed, prompt = region
            rendered = reroll_region(pipe, project, sound, take, start, end, seed=seed, prompt=prompt,
                                     folder=folder, callback_on_stage=report.stage,
                                     callback_on_step_end=report.step, cancel=token).rendered  # fmt: skip
        else:
            rendered = render_with_edits(
                pipe,
                project,
                folder,
                callback_on_stage=report.stage,
                callback_on_step_end=report.step,
                on_sound=getattr(report, "begin", None),
                cancel=token,
            )
        report.finish()
        if not score:
            return rendered, None
        from selva.project_scores import scored_safely

        if progress is not None:
            progress(1.0, desc="Scoring the takes")
        return scored_safely(rendered, scorer, device=pipe.device)

    def render_project(
        self,
        project: Project,
        progress: ProgressFn | None = None,
        *,
        session: str = "local",
        cancel: CancelToken | None = None,
        score: bool = False,
        sample_rate: int | str | None = DEFAULT_OUTPUT_RATE,
        loudness: float | str | None = DEFAULT_LOUDNESS_TARGET,
    ) -> ProjectResult:
        """Render `project` (only takes without audio run the model) into a new folder, with every file.

        `score` scores the takes this render holds; `sample_rate` (48000 or "model") and
        `loudness` (a LUFS target, or None / "off") set how the files are delivered;
        `sample_rate=None` keeps the project's own delivery settings, loudness included.
        """
        from selva.project_files import deliver_project

        if sample_rate is not None:
            project = replace(project, mix=with_delivery(project.mix, sample_rate, loudness))
        job = self._render_new(project, progress, session, cancel, score)
        folder, (rendered, pipe, loaded, warning) = job
        info = f"{project_info(rendered)} · {ran_on(pipe, loaded)}"
        result = deliver_project(rendered, folder, "")
        return replace(result, info=_with_scores(info, result.project, warning), score_warning=warning)

    def reroll_region(
        self,
        project: Project,
        sound: int,
        take: int | None,
        start: float,
        end: float,
        *,
        seed: int | None = None,
        prompt: str | None = None,
        progress: ProgressFn | None = None,
        session: str = "local",
        cancel: CancelToken | None = None,
    ) -> ProjectResult:
        """Seconds `start`..`end` of sound `sound`'s take `take` (from 0; None: the chosen) re-rolled
        (`selva.region.reroll_region`) into a new folder, delivered as `render_project` does.

        Checked before any model loads. The edited take is the sound's last, and chosen; its
        `seed` (drawn when None) and `edit` (the widened region) are in the result's project and info.
        """
        from selva.project_files import deliver_project
        from selva.region import check_region
        from selva.render import random_seed
        from selva.variants import get_variant

        variant = get_variant(project.variant or self.slot.default_variant)  # what `slot.get` loads
        seed = random_seed() if seed is None else seed
        check_region(project, sound, take, start, end, sample_rate=variant.sample_rate,
                     hop_length=variant.hop_length, prompt=prompt, seed=seed)  # fmt: skip
        folder = self.outputs.new_folder()
        region = (sound, take, start, end, seed, prompt)  # plain values: ZeroGPU pickles them
        with _removed_on_failure(folder):
            rendered, pipe, loaded, _ = self.render(
                project, folder / "takes", progress, session=session, cancel=cancel, region=region
            )
        edited = rendered.project.sounds[sound].takes[-1]
        info = (
            f"sound {sound + 1}: {edited.edit.start:.3f}-{edited.edit.end:.3f} s re-rolled with seed {seed} "
            f"as take {len(rendered.project.sounds[sound].takes)} · {project_info(rendered)} · "
            f"{ran_on(pipe, loaded)}"
        )
        return deliver_project(rendered, folder, info)

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
        score: bool = False,
        sample_rate: int | str = DEFAULT_OUTPUT_RATE,
        loudness: float | str | None = DEFAULT_LOUDNESS_TARGET,
    ) -> StemsResult:
        """Generate each stem on `base`'s span (stem k with seed + k), mix them and save every file.

        One job: it holds the pipeline for all its stems and is cancelled as a whole (as `run`).
        `score`, `sample_rate` and `loudness` as for `run`.
        """
        from selva.project_files import write_mix
        from selva.stems import stems_project

        ORIGINAL_AUDIO_GAIN.check(original_audio_gain, by_label=True)
        project = stems_project(base, stems, original_audio_gain=original_audio_gain)
        project = replace(project, mix=with_delivery(project.mix, sample_rate, loudness))
        folder, (rendered, pipe, load_seconds, warning) = self._render_new(
            project, progress, session, cancel, score
        )
        seeds = tuple(rendered.seeds)
        files = write_mix(rendered, folder, f"{slug(Path(project.video).stem, 24)}_seed{seeds[0]}")
        info = f"{project_info(rendered)} · {ran_on(pipe, load_seconds)}"
        info = _with_scores(info, rendered.project, warning)
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
            score_warning=warning,
        )


def _with_scores(info: str, project: Project, warning: str | None) -> str:
    """The info line, then the scores (or why there are none) on lines of their own."""
    from selva.project_scores import scores_summary

    summary = f"Scores: {warning}" if warning else scores_summary(project)
    return f"{info}\n{summary}" if summary else info


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
    score_warning: str | None = None  # why the stems went unscored when scores were asked for

    @property
    def scores(self) -> tuple[ScoredTake, ...]:
        """Each stem's CLAP scores (none unless asked with `score=True`)."""
        return _scores(self.project)

    @property
    def label(self) -> str:
        """How a list of earlier results names this one."""
        return " + ".join(self.prompts) + f" (seed {self.seeds[0]})"
