"""SelvaPipeline: a video and two prompts in, selectively generated audio out.

A call (`generate`) is a numbered list of the pipeline's own public steps, the
same methods the ComfyUI nodes and the tests call:

1. `check_inputs`: the request in range, the seed drawn if none was given;
2. `plan_span`: probe the video, settle the span, plan its 8 s windows;
3. `encode_prompts`: T5 for TextSynch, the CLIP text tower for the generator;
4. `sync_features`: TextSynch over the span, conditioned on the prompt;
5-9. `sample`, from the features, window by window: `prepare_latents` (the
   seed's noise), `prepare_conditions`, `denoise` (the flow with
   classifier-free guidance), `decode_latents` (latents to mel), `vocode`
   (mel to waveform), then `join` (the windows crossfaded into one track).

Steps 3 and 4 are the `FeatureEncoder` the pipeline owns (`pipe.features`,
`selva.features`). Their features are cached, so a re-roll (another seed, step
count, CFG strength or negative prompt) skips decoding and TextSynch.

Reentrant: everything a call needs (lengths, seed, callbacks, its cancel
token) is local to that call, so several threads may call one pipeline at
once. The feature caches are locked; two callers missing the same key at the
same moment both compute it and get equal values. Offloaded networks move
between devices under one lock, so with offloading on, their uses take turns.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from selva import device as devices
from selva import media, sampling
from selva.features import FeatureEncoder, Span, StageCallback
from selva.loading import release_freed_memory
from selva.outputs import PromptFeatures, SelvaOutput
from selva.sequence import SequenceLengths
from selva.spec import DEFAULT_MAX_DURATION, CancelToken, GenerationRequest
from selva.windows import (
    DEFAULT_WINDOW_OVERLAP,
    Window,
    draw_noise,
    join_windows,
    plan_windows,
    resolve_span,
    window_batches,
)

log = logging.getLogger(__name__)

# The stages a call goes through, in order, as `callback_on_stage` names them.
STAGES = ("probe", "text", "decode", "text_synch", "flow", "vae", "vocoder")
# Past the flow a cancel is too late: the work is nearly done, so these stages are not stopped.
_PAST_THE_FLOW = ("vae", "vocoder")

# diffusers' shape: called after each flow step as fn(pipe, step_index, t, {"latents": x}); a returned
# dict with "latents" replaces the state.
StepCallback = Callable[["SelvaPipeline", int, float, dict[str, Any]], "dict[str, Any] | None"]

__all__ = ["STAGES", "SelvaPipeline", "StageCallback", "StepCallback"]


# Windows x candidates per flow batch (CFG doubles it): enough to keep an accelerator busy, bounded
# so a 10 minute clip (90 windows) does not need 90 windows of activations at once.
WINDOW_BATCH = 16
# Rows the vocoder takes at once on the CPU. Its activations grow with rows times samples (a 16 kHz
# window is 128k samples by up to 512 channels): batching the nine 8 s windows of a 60 s clip took
# 7.1 s per window against 4.6-5.1 s for one alone (2 cores, bf16). Window by window, 30 s and 60 s
# clips peak at 3.37 and 3.38 GB RSS, an 8 s one at 3.14 GB. Accelerators take the whole batch.
CPU_VOCODER_ROWS = 1


class SelvaPipeline:
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
        self.generator = generator
        self.vae = vae
        self.vocoder = vocoder
        self.device = torch.device(device)
        self.dtype = dtype
        # With little accelerator memory the text encoders and the vocoder
        # wait on the CPU and visit the accelerator only while they run.
        self.offload = offload
        self.max_duration = max_duration
        plan_windows(0.0, 16000, overlap=window_overlap)  # refuses a bad overlap now, not per call
        self.window_overlap = window_overlap
        self._offload_lock = threading.RLock()  # one offloaded network moves at a time
        self.features = FeatureEncoder(
            variant=variant,
            text_synch=text_synch,
            t5=t5,
            clip=clip,
            device=self.device,
            dtype=dtype,
            cache_size=cache_size,
            resident=self._resident,
            timed=self._timed,
        )
        # True: wait for the device at the end of every timed stage, so `SelvaOutput.timings` are
        # device times (benchmarks). Off by default: each wait leaves the GPU idle while the host
        # queues the next stage, and on CUDA the timings are then host times.
        self.exact_timings = False
        self._progress_bar_config: dict = {}

    @classmethod
    def from_pretrained(
        cls,
        variant: str = "small_16k",
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
        self._progress_bar_config = kwargs

    # -- the feature component's networks, caches and steps, as the pipeline's own -------------

    text_synch = property(lambda self: self.features.text_synch)
    t5 = property(lambda self: self.features.t5)
    clip = property(lambda self: self.features.clip)
    prompt_cache = property(lambda self: self.features.prompt_cache)
    sync_cache = property(lambda self: self.features.sync_cache)

    def clear_caches(self) -> None:
        self.features.clear_caches()

    def encode_prompt(self, prompt: str) -> PromptFeatures:
        """T5 and CLIP text features of one prompt, cached."""
        return self.features.encode_prompts(prompt)[0]

    def encode_prompts(
        self, prompt: str, negative_prompt: str = ""
    ) -> tuple[PromptFeatures, torch.Tensor | None]:
        """Step 3: see `FeatureEncoder.encode_prompts`."""
        return self.features.encode_prompts(prompt, negative_prompt)

    def encode_video(self, frames: torch.Tensor, t5: torch.Tensor, t5_mask: torch.Tensor) -> torch.Tensor:
        """uint8 or [-1, 1] frames (B, T, 3, 224, 224) -> sync features (B, S * 8, D)."""
        return self.features.encode_video(frames, t5, t5_mask)

    def encode_span(self, frames, prompts: list[PromptFeatures], **kwargs) -> list[torch.Tensor]:
        """A span's sync features per prompt, chunk by chunk: see `FeatureEncoder.encode_span`."""
        return self.features.encode_span(frames, prompts, **kwargs)

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
        steps: int = 25,
        cfg_strength: float = 4.5,
        seed: int | None = None,
        duration: float | None = None,
        start: float = 0.0,
        num_samples: int = 1,
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
        request = GenerationRequest(
            video=video,
            prompt=prompt,
            negative_prompt=negative_prompt,
            steps=steps,
            cfg_strength=cfg_strength,
            seed=seed,
            duration=duration,
            start=start,
            num_samples=num_samples,
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
        stage = _Stages(callback_on_stage, cancel or CancelToken())

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
        audio = self.sample(
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
        candidates (at most WINDOW_BATCH rows); step callbacks get "window", "window_count",
        "windows", "pass" and "passes" beside the latents. Candidate k is drawn from seed + k.
        """
        stage = _Stages(callback_on_stage, cancel or CancelToken())
        timings = {} if timings is None else timings
        noise = self.prepare_latents(windows, num_samples, seed)
        batches = window_batches(windows, max(1, WINDOW_BATCH // num_samples))
        stage("flow")
        latents: list[torch.Tensor] = []
        with self._timed(timings, "flow"):
            for number, batch in enumerate(batches):
                rows = len(batch) * num_samples  # window-major: row w * num_samples + k
                window_sync = None
                if sync_f is not None:
                    window_sync = torch.cat([sync_f[:, w.sync_slice] for w in batch]).to(self.device)
                    window_sync = window_sync.repeat_interleave(num_samples, dim=0)
                cond, uncond = self.prepare_conditions(
                    window_sync,
                    clip_text_f,
                    negative_clip_text_f,
                    num_samples=rows,
                    lengths=self._lengths(batch[0].duration),
                )
                where = {
                    "window": batch[0].index,
                    "window_count": len(batch),
                    "windows": len(windows),
                    "pass": number,
                    "passes": len(batches),
                }
                latents.append(
                    self.denoise(
                        torch.cat([noise[w.index] for w in batch]),
                        cond,
                        uncond,
                        steps=steps,
                        cfg_strength=cfg_strength,
                        callback_on_step_end=callback_on_step_end,
                        cancel=stage.cancel,
                        state=where,
                    )
                )
        timings["flow_per_step"] = timings["flow"] / (steps * len(batches))

        stage("vae")
        mels = [self.decode_latents(latent, timings) for latent in latents]
        stage("vocoder")
        pieces: dict[int, torch.Tensor] = {}
        with self._timed(timings, "vocoder"):
            for batch, mel in zip(batches, mels, strict=True):
                audio = self.vocode(mel).float().cpu()
                pieces |= dict(zip([w.index for w in batch], audio.split(num_samples), strict=True))
        # TextSynch's and the vocoder's activations are hundreds of MB; glibc keeps such freed
        # blocks in the heap, and an idle app would hold its worst request's peak for good.
        release_freed_memory()
        return self.join([pieces[w.index] for w in windows], windows)

    def prepare_latents(self, windows: list[Window], num_samples: int, seed: int) -> list[torch.Tensor]:
        """Step 5: per window, noise (num_samples, L_w, C) on the device, by `windows.draw_noise`'s rule
        (candidate k from seed + k; a span of one window is the first window of a longer one)."""
        lens = [self._lengths(w.duration).latent_len for w in windows]
        noise = draw_noise(lens, num_samples, seed, latent_dim=self.generator.config.latent_dim)
        return [n.to(self.device) for n in noise]

    def prepare_conditions(
        self,
        sync_f: torch.Tensor | None,
        clip_text_f: torch.Tensor,
        negative_clip_text_f: torch.Tensor | None,
        *,
        num_samples: int,
        lengths: SequenceLengths,
    ):
        """Conditional and unconditional generator conditions for `num_samples` candidates.

        SelVA's generator gets no CLIP image features: the conditional branch
        uses the learned empty CLIP sequence, the prompt's CLIP text and the
        sync features; the unconditional one the learned empty sequences and
        the negative prompt's CLIP text (the negative prompt never reaches TextSynch).
        `sync_f` has one row or `num_samples`; None (no video) means the learned empty sync sequence.
        """
        gen = self.generator
        empty_clip = gen.empty_clip_feat.expand(num_samples, lengths.clip_len, -1)
        if sync_f is None:
            sync_f = gen.empty_sync_feat.expand(1, lengths.sync_len, -1)
        if sync_f.shape[0] == 1:
            sync_f = sync_f.expand(num_samples, -1, -1)
        cond = gen.preprocess_conditions(
            empty_clip.to(self.dtype),
            sync_f.to(self.dtype),
            clip_text_f.expand(num_samples, -1, -1).to(self.dtype),
            latent_len=lengths.latent_len,
        )
        negative = None
        if negative_clip_text_f is not None:
            negative = negative_clip_text_f.expand(num_samples, -1, -1).to(self.dtype)
        uncond = gen.empty_conditions(
            num_samples,
            latent_len=lengths.latent_len,
            clip_len=lengths.clip_len,
            sync_len=lengths.sync_len,
            negative_text_f=negative,
        )
        return cond, uncond

    def denoise(
        self,
        x0: torch.Tensor,
        cond,
        uncond,
        *,
        steps: int,
        cfg_strength: float,
        callback_on_step_end: StepCallback | None = None,
        cancel: CancelToken | None = None,
        state: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """Euler flow matching from t=0 (noise) to t=1 (normalised latents).

        The state is kept in float32 while the network runs in the pipeline's
        dtype: rounding the state to bf16 at every step would add up. `state`'s entries
        (which windows run) are passed to the step callback beside the latents.
        """
        # At cfg 1 the unconditional branch has no weight: skip it.
        guided = cfg_strength != 1.0
        conditions = cond.cat(uncond) if guided else cond
        timesteps = sampling.timesteps(steps)
        x = x0.float()
        bar = tqdm(range(steps), desc="Flow steps", leave=False, **self._progress_bar_config)
        for i in bar:
            if cancel is not None:
                cancel.raise_if_cancelled()
            t, t_next = timesteps[i], timesteps[i + 1]
            x_in = torch.cat([x, x]) if guided else x
            t_in = torch.full((x_in.shape[0],), float(t), device=self.device, dtype=self.dtype)
            v = self.generator(x_in.to(self.dtype), t_in, conditions).float()
            if guided:
                v_cond, v_uncond = v.chunk(2)
                v = cfg_strength * v_cond + (1.0 - cfg_strength) * v_uncond
            x = sampling.euler_step(x, v, t, t_next)
            if callback_on_step_end is not None:
                changed = callback_on_step_end(self, i, float(t_next), {**(state or {}), "latents": x})
                if changed and "latents" in changed:
                    x = changed["latents"]
        return self.generator.unnormalize(x)

    def decode_latents(self, latent: torch.Tensor, timings: dict[str, float] | None = None) -> torch.Tensor:
        """Unnormalised latents (B, L, C) -> mel (B, n_mels, 2L)."""
        with self._timed(timings if timings is not None else {}, "vae"):
            return self.vae(latent.transpose(1, 2).to(self.dtype))

    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, n_mels, T) -> waveform (B, N); on the CPU a row at a time (see CPU_VOCODER_ROWS)."""
        rows = CPU_VOCODER_ROWS if self.device.type == "cpu" else len(mel)
        with self._resident(self.vocoder):
            vocoder_dtype = next(self.vocoder.parameters()).dtype
            parts = [self.vocoder(part.to(vocoder_dtype)).squeeze(1) for part in mel.split(rows)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

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


class _Stages:
    """One call's stage reports: `callback(name)` as each stage begins, `cancel` looked at first,
    except past the flow, where a cancel is too late (the work is nearly done)."""

    def __init__(self, callback: StageCallback | None, cancel: CancelToken):
        self.callback, self.cancel = callback, cancel

    def __call__(self, name: str) -> None:
        if name not in _PAST_THE_FLOW:
            self.cancel.raise_if_cancelled()
        if self.callback is not None:
            self.callback(name)
