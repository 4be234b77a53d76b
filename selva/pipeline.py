"""SelvaPipeline: a video and two prompts in, selectively generated audio out.

A call (`generate`) is a numbered list of the pipeline's own public steps, the
same methods the ComfyUI nodes and the tests call:

1. `check_inputs`: the request in range, the seed drawn if none was given;
2. `plan_span`: probe the video, settle the span, plan its 8 s windows;
3. `encode_prompts`: T5 for TextSynch, the CLIP text tower for the generator;
4. `sync_features`: TextSynch over the span, conditioned on the prompt;
5-9. `sample`, from the features, window by window: `sample_latents` (steps 5-7:
   `prepare_latents`, the seed's noise; `prepare_conditions`; `denoise`, the flow with
   classifier-free guidance), then `decode_windows` (steps 8-9: `decode_latents`,
   latents to mel; `vocode`, mel to waveform; `join`, the windows crossfaded into one track).
   `sample_latents` and `decode_windows`, the loops over the windows' flow batches, live in
   `selva.window_passes` (a mixin: they stay this class's own methods).

The networks sit in two components the pipeline owns: `pipe.features`
(`selva.features.FeatureEncoder`: text encoders, TextSynch, the caches; steps
3-4) and `pipe.synthesis` (`selva.synthesis.Synthesizer`: generator, VAE,
vocoder; steps 6-8). Features are cached, so a re-roll (another seed, steps,
CFG or negative prompt) skips decoding and TextSynch.

Reentrant: what a call needs (lengths, seed, callbacks, cancel token) is local
to it, so threads may share one pipeline. The caches are locked (two callers
missing one key both compute it); offloaded networks move under one lock.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selva import device as devices
from selva import media, spec
from selva.features import FeatureEncoder, Placement, Span, StageCallback, StageReport
from selva.outputs import SelvaOutput
from selva.sequence import SequenceLengths
from selva.spec import DEFAULT_MAX_DURATION, CancelToken, GenerationRequest
from selva.synthesis import StepCallback, Synthesizer
from selva.window_passes import WindowPasses
from selva.windows import (
    DEFAULT_WINDOW_OVERLAP,
    Window,
    draw_noise,
    join_windows,
    plan_windows,
    resolve_span,
)

log = logging.getLogger(__name__)

# The stages a call goes through, in order, as `callback_on_stage` names them.
STAGES = ("probe", "text", "decode", "text_synch", "flow", "vae", "vocoder")


def _delegated(part: str, name: str) -> property:
    """`pipe.<name>`: attribute `name` of the pipeline's component `part` (a bound method for a step)."""
    return property(lambda self: getattr(getattr(self, part), name), doc=f"`{part}.{name}`")


__all__ = ["STAGES", "SelvaPipeline", "StageCallback", "StepCallback"]


class SelvaPipeline(WindowPasses):
    """The SelVA networks and text encoders, ready to turn videos into sound.

    The constructor only receives components; `from_pretrained` builds them
    from the Hub (or a local folder), so tests can hand in tiny ones.
    """

    def __init__(
        self,
        *,
        variant,
        text_synch: nn.Module,
        generator: nn.Module,
        vae: nn.Module,
        vocoder: nn.Module,
        t5,
        clip,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        offload: bool = False,
        max_duration: float = DEFAULT_MAX_DURATION,
        cache_size: int = 16,
        window_overlap: float = DEFAULT_WINDOW_OVERLAP,
    ):
        self.variant = variant
        self.device = torch.device(device)
        self.dtype = dtype
        # With little accelerator memory the text encoders and the vocoder
        # wait on the CPU and visit the accelerator only while they run.
        self.offload = offload
        self.max_duration = max_duration
        plan_windows(0.0, 16000, overlap=window_overlap)  # refuses a bad overlap now, not per call
        self.window_overlap = window_overlap
        self._offload_lock = threading.RLock()  # one offloaded network moves at a time
        place = Placement(device=self.device, dtype=dtype, resident=self._resident, timed=self._timed)
        self.features = FeatureEncoder(
            variant=variant, text_synch=text_synch, t5=t5, clip=clip, place=place, cache_size=cache_size
        )
        self.synthesis = Synthesizer(generator=generator, vae=vae, vocoder=vocoder, place=place)
        # True: wait for the device at the end of every timed stage, so `SelvaOutput.timings` are
        # device times (benchmarks). Off by default: each wait leaves the GPU idle while the host
        # queues the next stage, and on CUDA the timings are then host times.
        self.exact_timings = False

    @classmethod
    def from_pretrained(
        cls,
        variant: str = spec.DEFAULT_VARIANT,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        offload: str = "auto",
        weights_dir: str | Path | None = None,
        revision: str | None = None,
        max_duration: float = DEFAULT_MAX_DURATION,
        window_overlap: float = DEFAULT_WINDOW_OVERLAP,
        compile: bool = False,
    ) -> SelvaPipeline:
        """Locate (download if needed), verify and load every component of `variant`.

        `compile=True` compiles the generator, TextSynch and the vocoder (see
        `selva.compile`: CUDA graphs for the generator on CUDA); the first calls
        of each new length are then slow while they compile.

        `device` and `dtype` default to the fastest safe choice for this machine
        (see `selva.device`); `weights_dir` (or SELVA_WEIGHTS_DIR) is a local
        folder in the reference layout, used with no network at all.
        """
        from selva.components import load_components

        parts = load_components(
            variant, device=device, dtype=dtype, offload=offload, weights_dir=weights_dir, revision=revision
        )
        pipe = cls(**parts, max_duration=max_duration, window_overlap=window_overlap)
        from selva.compile import compile_pipeline, tune_backends

        tune_backends(pipe.device)  # cuDNN autotuning on CUDA, compiled or not
        if compile:
            compile_pipeline(pipe)
        return pipe

    @property
    def sample_rate(self) -> int:
        return self.variant.sample_rate

    # -- hooks ---------------------------------------------------------------------------------

    def set_progress_bar_config(self, **kwargs) -> None:
        """Options for the tqdm bar over the flow steps (e.g. `disable=True`)."""
        self.synthesis.progress_bar_config = kwargs

    # -- the components' networks, caches and steps, reached as the pipeline's own -------------

    text_synch = _delegated("features", "text_synch")
    t5 = _delegated("features", "t5")
    clip = _delegated("features", "clip")
    prompt_cache = _delegated("features", "prompt_cache")
    sync_cache = _delegated("features", "sync_cache")
    clear_caches = _delegated("features", "clear_caches")
    encode_prompt = _delegated("features", "encode_prompt")
    encode_prompts = _delegated("features", "encode_prompts")  # step 3
    encode_video = _delegated("features", "encode_video")
    encode_span = _delegated("features", "encode_span")
    generator = _delegated("synthesis", "generator")
    vae = _delegated("synthesis", "vae")
    vocoder = _delegated("synthesis", "vocoder")
    prepare_conditions = _delegated("synthesis", "prepare_conditions")  # step 6
    decode_latents = _delegated("synthesis", "decode_latents")  # step 8
    vocode = _delegated("synthesis", "vocode")  # step 8

    def sync_features(
        self,
        video: str | Path | Span,
        prompts: list[str],
        *,
        start: float = 0.0,
        duration: float | None = None,
        cancel: CancelToken | None = None,
        **kwargs,
    ) -> list[torch.Tensor]:
        """Step 4: sync features (1, S * 8, D) of one span for each prompt, decoding the span once.

        `video` is a path (then `start` and `duration` settle the span as a call would) or a
        planned `Span`. Cached as a call's are, so calls with these prompts on this span skip
        decoding and TextSynch (`selva.stems` runs this first, then one call per stem).
        """
        span = video if isinstance(video, Span) else self.plan_span(video, start=start, duration=duration)
        return self.features.sync_features(span, prompts, cancel=cancel, **kwargs)

    # -- the call ------------------------------------------------------------------------------

    @torch.inference_mode()
    def __call__(
        self,
        video: str | Path | None,
        prompt: str,
        negative_prompt: str = "",
        *,
        steps: int = int(spec.STEPS.default),
        cfg_strength: float = float(spec.CFG_STRENGTH.default),
        seed: int | None = None,
        duration: float | None = None,
        start: float = float(spec.START.default),
        num_samples: int = int(spec.NUM_SAMPLES.default),
        window_overlap: float | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_stage: StageCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> SelvaOutput:
        """Generate `num_samples` soundtracks for `video` that follow `prompt`.

        `video=None` makes sound from the prompt alone; `duration` is then required.
        Spans over 8 s run in overlapping 8 s windows (`window_overlap` seconds,
        default the pipeline's) joined by a crossfade; step callbacks then also
        get "window", "windows", "pass" and "passes" in their state dict.

        `callback_on_stage(name)` is called as each of `STAGES` begins;
        `callback_on_step_end(pipe, i, t, {"latents": x})` after flow step i
        (0-based). `cancel`, if given, stops the call with `GenerationCancelled`
        before any stage or flow step once it is cancelled, even if that
        happened before the call began; once the flow is done the call finishes.
        """
        # The call's first nine arguments are the request's fields, in the request's order.
        request = GenerationRequest(
            video, prompt, negative_prompt, steps, cfg_strength, seed, duration, start, num_samples
        )
        return self.generate(
            request,
            callback_on_step_end=callback_on_step_end,
            callback_on_stage=callback_on_stage,
            cancel=cancel,
            window_overlap=window_overlap,
        )

    @torch.inference_mode()
    def generate(
        self,
        request: GenerationRequest,
        *,
        callback_on_step_end: StepCallback | None = None,
        callback_on_stage: StageCallback | None = None,
        cancel: CancelToken | None = None,
        window_overlap: float | None = None,
    ) -> SelvaOutput:
        """`__call__` for a ready-made `GenerationRequest` (its `variant` is not looked at)."""
        timings: dict[str, float] = {}
        t_total = time.perf_counter()
        stage = StageReport(callback_on_stage, cancel or CancelToken())

        # 1. Check the inputs.
        req, seed = self.check_inputs(request)
        # 2. Probe the video, settle the span and plan its windows.
        span = self.plan_span(
            req.video,
            start=req.start,
            duration=req.duration,
            window_overlap=window_overlap,
            stage=stage,
            timings=timings,
        )
        # 3. Encode the prompts, while a worker thread decodes the span's frames (unless cached).
        with self.features.prefetch(span, [req.prompt]) as feed:
            stage("text")
            with self._timed(timings, "text"):
                positive, negative_clip = self.encode_prompts(req.prompt, req.negative_prompt)
            # 4. Sync features of the whole span, once: every window takes its slice. None from the
            #    prompt alone (the generator's learned empty sync sequence).
            sync_f = None
            if span.video is not None:
                sync_f = self.sync_features(
                    span, [req.prompt], feed=feed, stage=stage, timings=timings, cancel=stage.cancel
                )[0]
        # 5-9. Noise, flow, mel and waveform window by window; the windows joined into one track.
        latents = self.sample_latents(
            sync_f,
            positive.clip,
            negative_clip,
            windows=span.windows,
            steps=req.steps,
            cfg_strength=req.cfg_strength,
            seed=seed,
            num_samples=req.num_samples,
            callback_on_step_end=callback_on_step_end,
            callback_on_stage=stage.callback,
            cancel=stage.cancel,
            timings=timings,
        )
        audio = self.decode_windows(
            latents,
            span.windows,
            num_samples=req.num_samples,
            callback_on_stage=stage.callback,
            timings=timings,
        )
        timings["total"] = time.perf_counter() - t_total
        return SelvaOutput(
            audio=audio,
            sample_rate=self.sample_rate,
            seed=seed,
            duration=span.duration,
            start=span.start,
            video=span.video,
            timings=timings,
            windows=len(span.windows),
            info=span.info,
            latents=[latents[w.index].cpu() for w in span.windows],
        )

    # -- steps ---------------------------------------------------------------------------------

    def check_inputs(self, request: GenerationRequest) -> tuple[GenerationRequest, int]:
        """Step 1: the request if it is in range (else an `InputError` naming the field), and its
        seed, drawn at random when the request has none."""
        req = request.checked(max_duration=self.max_duration)
        return req, (random.randrange(2**31) if req.seed is None else req.seed)

    def resolve_duration(self, video_duration: float, start: float, duration: float | None) -> float:
        """The span to sonify: as asked, or what is left after `start` up to `max_duration`."""
        return resolve_span(video_duration, start, duration, max_duration=self.max_duration)

    def plan_span(
        self,
        video: str | Path | None,
        *,
        start: float = 0.0,
        duration: float | None = None,
        window_overlap: float | None = None,
        stage: StageCallback | None = None,
        timings: dict[str, float] | None = None,
    ) -> Span:
        """Step 2: probe `video` (None: sound from the prompt alone, `duration` long), settle the span
        and plan its overlapping 8 s windows (`window_overlap` seconds, default the pipeline's)."""
        info = None
        if video is not None:
            if stage is not None:
                stage("probe")
            with self._timed({} if timings is None else timings, "probe"):
                info = media.probe(video)
        seconds = self.resolve_duration(info.duration if info else math.inf, start if info else 0.0, duration)
        overlap = self.window_overlap if window_overlap is None else window_overlap
        windows = plan_windows(seconds, self.sample_rate, overlap=overlap)
        return Span(None if video is None else Path(video), info, float(start), seconds, windows)

    @torch.inference_mode()
    def sample(
        self,
        sync_f: torch.Tensor | None,
        clip_text_f: torch.Tensor,
        negative_clip_text_f: torch.Tensor | None,
        *,
        windows: list[Window],
        steps: int,
        cfg_strength: float,
        seed: int,
        num_samples: int = 1,
        callback_on_step_end: StepCallback | None = None,
        callback_on_stage: StageCallback | None = None,
        cancel: CancelToken | None = None,
        timings: dict[str, float] | None = None,
    ) -> torch.Tensor:
        """Steps 5-9: audio (num_samples, N) float32 on the CPU in [-1, 1] from a span's features.

        `sync_f` (1, S * 8, D) covers the whole span (None: the prompt alone); `windows` are
        its plan (`plan_span`). Windows of equal length run as one flow batch of windows x
        candidates (at most `window_passes.WINDOW_BATCH` rows); step callbacks get "window", "window_count",
        "windows", "pass" and "passes" beside the latents. Candidate k is drawn from seed + k.
        """
        timings = {} if timings is None else timings
        latents = self.sample_latents(
            sync_f,
            clip_text_f,
            negative_clip_text_f,
            windows=windows,
            steps=steps,
            cfg_strength=cfg_strength,
            seed=seed,
            num_samples=num_samples,
            callback_on_step_end=callback_on_step_end,
            callback_on_stage=callback_on_stage,
            cancel=cancel,
            timings=timings,
        )
        return self.decode_windows(
            latents, windows, num_samples=num_samples, callback_on_stage=callback_on_stage, timings=timings
        )

    def prepare_latents(self, windows: list[Window], num_samples: int, seed: int) -> list[torch.Tensor]:
        """Step 5: per window, noise (num_samples, L_w, C) on the device, by `windows.draw_noise`'s rule
        (candidate k from seed + k; a span of one window is the first window of a longer one)."""
        lens = [self._lengths(w.duration).latent_len for w in windows]
        noise = draw_noise(lens, num_samples, seed, latent_dim=self.generator.config.latent_dim)
        return [n.to(self.device) for n in noise]

    def denoise(self, x0: torch.Tensor, cond, uncond, **kwargs: Any) -> torch.Tensor:
        """Step 7: the flow from noise to latents (`Synthesizer.denoise`); callbacks get this pipeline."""
        return self.synthesis.denoise(x0, cond, uncond, caller=self, **kwargs)

    def join(self, pieces: list[torch.Tensor], windows: list[Window]) -> torch.Tensor:
        """Step 9: the windows' audio (each (B, N_w), in window order) crossfaded into one track
        (B, N) in [-1, 1]; a single window passes through (clamped)."""
        last = windows[-1]
        return join_windows(pieces, windows, last.start_sample + last.num_samples).clamp(-1, 1)

    # -- helpers -------------------------------------------------------------------------------

    def _lengths(self, duration: float) -> SequenceLengths:
        return SequenceLengths.from_duration(
            duration, sample_rate=self.sample_rate, hop_length=self.variant.hop_length
        )

    def _resident(self, module: nn.Module):
        """`module` on the device for a block; offloaded ones move under a lock, one at a time."""
        if not self.offload:
            return nullcontext(module)
        return _locked(self._offload_lock, devices.resident(module, self.device, offload=True))

    @contextmanager
    def _timed(self, timings: dict[str, float], name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.exact_timings and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


@contextmanager
def _locked(lock: threading.RLock, inner) -> Iterator[Any]:
    with lock, inner as value:
        yield value
