"""SelVA Studio's request handlers: widget values in, files and text out, every failure a `gr.Error`.

`Studio` holds the handlers behind the page and the `/generate` and `/stems`
endpoints (testable without a browser); the requests themselves run in a
`selva.serving.GenerationService`. `user_errors` turns what goes wrong into a
message a visitor can act on. `check_source` is the page's own rule for its
Source choice, checked before `/generate` runs. Importing this module loads no
model and no torch.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr

from selva import spec
from selva.app.stems import stems_outputs
from selva.app.toasts import fail, notify, user_errors  # noqa: F401 (the handlers' own, re-exported)
from selva.progress import dtype_name
from selva.serving import (
    MAX_CANDIDATES,
    GenerationService,
    OutputStore,
    PipelineSlot,
    parse_request,
)
from selva.spec import CancelToken, InputError, SelvaError
from selva.stems import stems_from_form

try:  # Hugging Face ZeroGPU; the package is absent (or a no-op) everywhere else
    import spaces
except ImportError:
    spaces = None

log = logging.getLogger(__name__)

EXAMPLE_SEED = 2025  # cached examples are reproducible
ZEROGPU_SECONDS = 120  # the longest a ZeroGPU call may hold the GPU (an 8 s clip takes ~10 s on an A100)
SOURCE_VIDEO, SOURCE_PROMPT = "video", "prompt"  # the page's Source choice: sound for a video, or from text


T = TypeVar("T")

# The cancel token of the request a handler is serving, when gradio runs it through `stops_on_cancel`.
REQUEST_CANCEL: contextvars.ContextVar[CancelToken | None] = contextvars.ContextVar(
    "selva_request_cancel", default=None
)


def stops_on_cancel(handler: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """`handler` as gradio should run it: a cancelled event stops its job after the current step.

    gradio runs a plain handler in a worker thread; cancelling the event (the API's
    `job.cancel()` and the page's Cancel both post to /cancel) cancels the task that waits on
    that thread, but the thread, and the GPU with it, would run the job to its end. This runs
    `handler` in a thread with a `CancelToken` of the request's own (the handlers pass it to
    `selva.serving`) and cancels that token when the task is cancelled. The event then ends as
    after the page's Cancel, once the job has stopped: with "Generation cancelled" (a clean
    error for an API caller, instead of an empty result), or with the result of a job that was
    past its flow steps; so the cancel completes only when the pipeline is free for the queue's
    next job. The signature, docstring and annotations stay the handler's: the API and the MCP
    tools see no difference.
    """

    @functools.wraps(handler)
    async def run(*args: Any, **kwargs: Any) -> T:
        token = CancelToken()
        context = contextvars.copy_context()  # gradio's own context (gr.Info, progress) goes along
        context.run(REQUEST_CANCEL.set, token)
        call = functools.partial(context.run, handler, *args, **kwargs)
        work = asyncio.get_running_loop().run_in_executor(None, call)
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            token.cancel()
        return await asyncio.shield(work)

    return run


class _Tracked:
    """`progress` that also keeps its latest text in `activity[session]`, for the Generate button.

    A class, not a closure: ZeroGPU pickles the model call's arguments into its worker.
    """

    def __init__(self, progress: Any, activity: dict[str, str], session: str):
        self.progress, self.activity, self.session = progress, activity, session

    def __call__(self, fraction: float | None, desc: str | None = None, **kwargs: Any) -> None:
        if desc:
            self.activity[self.session] = desc
        if self.progress is not None:
            self.progress(fraction, desc=desc, **kwargs)


def _on_gpu(fn: Callable) -> Callable:
    """`spaces.GPU` where the `spaces` package is importable (ZeroGPU), otherwise `fn` itself."""
    if spaces is None:
        return fn
    return spaces.GPU(duration=ZEROGPU_SECONDS)(fn)


class Studio:
    """The request handlers behind the UI (testable without a browser).

    Widget values go in, our errors come out as `gr.Error`; the requests themselves
    run in a `selva.serving.GenerationService`.
    """

    def __init__(self, slot: PipelineSlot, outputs: OutputStore | None = None, *, scorer: str | None = None):
        self.slot = slot
        self.service = GenerationService(slot, outputs, on_gpu=_on_gpu, scorer=scorer)
        self.activity: dict[str, str] = {}  # per session: what its running job reports now

    def running_label(self, request: gr.Request | None = None) -> Any:
        """What this visitor's job is doing, as the Generate button says while it runs (or no change)."""
        desc = self.activity.get(session_of(request))
        return gr.update(value=desc) if desc else gr.update()

    def generate(
        self,
        video: str | None,
        prompt: str | None,
        negative_prompt: str | None,
        steps: float,
        cfg_strength: float,
        seed: float,
        duration: float | None,
        start: float | None,
        variant: str | None,
        num_samples: float,
        original_audio_gain: float | None = 0.0,
        score: bool | None = False,
        sample_rate: int | str | None = spec.DEFAULT_OUTPUT_RATE,
        loudness: float | str | None = spec.DEFAULT_LOUDNESS_TARGET,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio injects it: the default marks the parameter)
        request: gr.Request | None = None,
    ) -> tuple[Any, ...]:
        """Generate audio for a video that follows the prompted source, or from the prompt alone.

        Args:
            video: the video file (mp4, mov, webm...): a path, a public http(s) URL, or the file as
                a data: URL (at most about 3 MB of video: MCP refuses request bodies over 4 MiB);
                none, with a duration above 0, makes sound from the prompt alone.
            prompt: the sound to make; also picks which visible source it follows, e.g. "dog barking".
            negative_prompt: a sound to steer away from, e.g. "wind noise" (may be empty).
            steps: flow steps, 1-100 (25 is typical).
            cfg_strength: guidance, 1-10 (4.5 is typical).
            seed: -1 for random; the seed used is in the info line.
            duration: seconds to sonify; 0 = the rest of the clip (past 8 s in overlapping 8 s
                windows); without a video, the seconds of sound to make.
            start: where the span begins, in seconds.
            variant: model variant name, or empty for the server's.
            num_samples: candidates, 1-4; candidate k is drawn from seed + k.
            original_audio_gain: the video's own soundtrack under the new audio, 0-2 (0 replaces it).
            score: also score each candidate with CLAP (match with the prompt, leakage into the
                negative prompt, one ranking score): the scores end the info line. A hint, not a
                judgement of quality.
            sample_rate: the delivered files' rate: 48000 (the default) or "model" (the model's own).
            loudness: the mix's loudness target: "off", -23 (EBU R128), -16 or -14 LUFS.

        Returns one mp4 path per candidate (None for unused players, and for every one when the
        sound comes from the prompt alone), the FLAC and WAV files (per candidate), the info line,
        and the `GenerationResult` (kept in the page, not sent to API callers).
        """
        with user_errors(upload_dirs(video)):
            req = parse_request(
                video,
                prompt,
                negative_prompt,
                steps,
                cfg_strength,
                seed,
                duration,
                start,
                variant,
                num_samples,
                max_duration=self.slot.max_duration,
            )
            gain = spec.ORIGINAL_AUDIO_GAIN.check(float(original_audio_gain or 0.0), by_label=True)
            session = session_of(request)
            try:
                result = self.service.run(
                    req,
                    _Tracked(progress, self.activity, session),
                    session=session,
                    original_audio_gain=gain or None,
                    cancel=REQUEST_CANCEL.get(),
                    score=bool(score),
                    sample_rate=spec.DEFAULT_OUTPUT_RATE if sample_rate is None else sample_rate,
                    loudness=loudness,
                )
            finally:
                self.activity.pop(session, None)
            if result.score_warning:
                notify(f"The takes are not scored: {result.score_warning}", "No scores", "warning")
            result = _say_if_capped(result, req.video, self.slot.max_duration)
        # Plain paths (None for unused players), so API callers get files, not component updates;
        # the page's labels, audio players and history follow from the result (selva.app.results.present).
        videos = [*result.videos, *[None] * (MAX_CANDIDATES - len(result.videos))]
        return (*videos, list(result.audio_files), result.info, result)

    def generate_example(
        self,
        video: str,
        prompt: str,
        negative_prompt: str,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
        request: gr.Request | None = None,
    ) -> tuple[Any, ...]:
        """Examples: default settings, the start-up variant and a fixed seed, so the cache is reproducible.

        Returns the video, its audio (for the waveform player), the audio files and the info line.
        """
        with user_errors(upload_dirs(video)):
            req = spec.GenerationRequest(
                video, prompt, negative_prompt or "", seed=EXAMPLE_SEED, variant=self.slot.default_variant
            ).checked(max_duration=self.slot.max_duration)
            result = self.service.run(req, progress, session=session_of(request), cancel=REQUEST_CANCEL.get())
        return result.videos[0], result.candidate_audio(0)[1], list(result.audio_files), result.info

    def generate_stems(
        self,
        video: str | None,
        prompt_1: str | None,
        negative_1: str | None,
        gain_1: float | None,
        prompt_2: str | None,
        negative_2: str | None,
        gain_2: float | None,
        prompt_3: str | None,
        negative_3: str | None,
        gain_3: float | None,
        prompt_4: str | None,
        negative_4: str | None,
        gain_4: float | None,
        steps: float,
        cfg_strength: float,
        seed: float,
        duration: float | None,
        start: float | None,
        variant: str | None,
        original_audio_gain: float | None = 0.0,
        score: bool | None = False,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
        request: gr.Request | None = None,
    ) -> tuple[Any, ...]:
        """Generate up to 4 sounds for one video, one per prompt, and their mix (the `/stems` API).

        Each stem follows the source its prompt names; stem k uses seed + k. Stems
        with an empty prompt are skipped. The mix is the sum of the stems at their
        gains (0-2) plus the original soundtrack at original_audio_gain, scaled down
        if it would clip.

        Args:
            video: the video file (mp4, mov, webm...): a path, a public http(s) URL, or the file as
                a data: URL (at most about 3 MB of video: MCP refuses request bodies over 4 MiB).
            prompt_1: the first stem's sound, e.g. "dog barking" (required).
            negative_1: a sound the first stem steers away from (may be empty).
            gain_1: the first stem's level in the mix, 0-2.
            prompt_2: the second stem's sound (empty: none).
            negative_2: its negative prompt.
            gain_2: its level.
            prompt_3: the third stem's sound (empty: none).
            negative_3: its negative prompt.
            gain_3: its level.
            prompt_4: the fourth stem's sound (empty: none).
            negative_4: its negative prompt.
            gain_4: its level.
            steps: flow steps, 1-100.
            cfg_strength: guidance, 1-10.
            seed: -1 for random; stem k uses seed + k.
            duration: seconds to sonify; 0 = automatic.
            start: where the span begins, in seconds.
            variant: model variant name, or empty for the server's.
            original_audio_gain: the video's own soundtrack in the mix, 0-2.
            score: also score each stem with CLAP (match with its prompt, leakage into its
                negative and the other stems' prompts): the scores end the info line. A hint.

        Returns the mixed mp4, the multi-track mp4 (mix + one track per stem), the mix
        FLAC, one FLAC per stem (None for unused ones) and the info line with the seeds.
        """
        rows = [
            (prompt_1, negative_1, gain_1),
            (prompt_2, negative_2, gain_2),
            (prompt_3, negative_3, gain_3),
            (prompt_4, negative_4, gain_4),
        ]
        with user_errors(upload_dirs(video)):
            if not video:  # the form's rule would take no video and a Duration for sound from text alone
                raise InputError(
                    "Stems need a video: upload one (Source: Video); each stem follows its own source in it."
                )
            stems = stems_from_form(rows)
            # The first stem's prompt only passes the form check: each stem brings its own.
            base = parse_request(
                video, stems[0].prompt, "", steps, cfg_strength, seed, duration, start, variant, 1,
                max_duration=self.slot.max_duration,
            )  # fmt: skip
            gain = spec.ORIGINAL_AUDIO_GAIN.check(float(original_audio_gain or 0.0), by_label=True)
            result = self.service.run_stems(
                base,
                stems,
                progress,
                session=session_of(request),
                original_audio_gain=gain,
                cancel=REQUEST_CANCEL.get(),
                score=bool(score),
            )
        return stems_outputs(result)[:-1] + (result,)

    def leave(self, request: gr.Request | None = None) -> None:
        """A visitor left (closed the tab, or an API client disconnected): stop their jobs.

        The page's unload event: nobody is left to receive what the jobs would make, so a
        running one stops after its current flow step and a queued one before it starts.
        """
        session = getattr(request, "session_hash", None)
        if session and self.slot.cancel(session):
            log.info("a visitor left: their job is cancelled")

    def describe(self, variant: str | None) -> str:
        """The model status line under the variant picker."""
        variant = variant or self.slot.default_variant
        pipe = self.slot.pipe
        if pipe is not None and pipe.variant.name == variant:
            return f"`{variant}` is loaded on {pipe.device} ({dtype_name(pipe.dtype)})."
        if pipe is not None:
            resident = pipe.variant.name
            return f"`{variant}` loads on the next Generate, replacing `{resident}` (one model at a time)."
        return f"`{variant}` loads on the first Generate."


def check_source(source: str | None, video: str | None, duration: float | None) -> Any:
    """The page's Source choice against its inputs, before `/generate` runs; returns the Video box's value.

    The API's own rule (no video and a Duration above 0: sound from the prompt
    alone) would make a visitor who forgot the upload a clip of text-only sound;
    the page asks instead. With Prompt only, a video left in the hidden box (an
    example's, say) is not sent.
    """
    if source == SOURCE_PROMPT:
        if not duration or float(duration) <= 0:
            raise fail(
                "Prompt only makes as many seconds of sound as Duration says: set Duration above 0 "
                "(8 s is SelVA's training length).",
                "Duration needed",
            )
        return None
    if not video:
        raise fail(
            "Upload a video first: drop a clip (mp4, mov, webm...) on the Video box, "
            "or choose Source: Prompt only to make sound from the prompt alone.",
            "No video",
        )
    return gr.update()


def check_upload(video: str | None, duration: float | None, *, max_duration: float) -> tuple[Any, Any, Any]:
    """The Video box's upload event: refuse what is no usable video, fit the span to the clip.

    A file that is no video (a renamed text file, a damaged clip) is refused here with the
    reason, and the box is cleared, instead of the browser's "Video not playable" and a late
    error after Generate. A good clip sets Duration's end to its length (up to `max_duration`,
    saying so when the clip is longer: never a silent cut) and Start's to where a span can
    still begin. Returns updates for the video, Duration and Start.
    """
    if not video:
        return gr.update(), gr.update(maximum=max_duration), gr.update(maximum=None)
    from selva import media  # torch with it: the page imports this module without a model

    try:
        info = media.probe(video)
    except SelvaError as exc:
        message = str(exc)
        for folder in upload_dirs(video):
            message = message.replace(folder.rstrip("/\\") + os.sep, "")
        notify(message, "Not a usable video", level="error", duration=None)
        return gr.update(value=None), gr.update(maximum=max_duration), gr.update(maximum=None)
    length = round(info.duration, 2)
    if length > max_duration:
        notify(
            f"This clip is {length:g} s long; one request covers at most {max_duration:g} s. "
            f"Duration 0 (auto) makes the {max_duration:g} s from Start; move Start to go on.",
            "Clip longer than the limit",
            level="warning",
            duration=None,
        )
    end = min(length, max_duration)
    value = min(float(duration or 0.0), end)
    latest_start = max(0.0, length - spec.MIN_DURATION)  # a span needs this much clip after Start
    return gr.update(), gr.update(maximum=end, value=value), gr.update(maximum=round(latest_start, 2))


def _say_if_capped(result: Any, video: str | None, max_duration: float) -> Any:
    """`result` whose info line says so when the clip went on past the span `max_duration` allowed."""
    if not video or result.duration < max_duration - 0.01:
        return result
    from selva import media

    left = media.probe(video).duration - result.start
    if left <= result.duration + 0.01:
        return result
    note = f"span capped at {max_duration:g} s of the {left:.2f} s left in the clip"
    return dataclasses.replace(result, info=f"{result.info} · {note}")


def upload_dirs(video: str | None) -> list[str]:
    """The server folder an upload sits in: messages name the file, not where the server keeps it."""
    if not video:
        return []
    return list({str(Path(video).parent), str(Path(video).resolve().parent)})


def session_of(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"
