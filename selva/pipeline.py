"""SelvaPipeline: a video and two prompts in, selectively generated audio out.

A call is a numbered recipe that reads like the paper:

1. check the inputs;
2. probe the video and settle the span (every sequence length follows from it);
3. encode the prompts: T5 for TextSynch, the CLIP text tower for the generator;
4. encode the video with TextSynch, conditioned on the prompt (sync features);
5. draw the starting noise from the seed;
6. integrate the flow from noise to data with classifier-free guidance;
7. decode latents to a mel spectrogram and vocode it to a waveform.

Steps 3 and 4 live in `selva.features` (a base class of the pipeline). Their
features are cached, so a re-roll (another seed, step count, CFG strength or
negative prompt) skips decoding and TextSynch.

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
from selva.cache import LRUCache
from selva.features import FeatureEncoding, StageCallback
from selva.loading import release_freed_memory
from selva.outputs import SelvaOutput
from selva.sequence import SequenceLengths
from selva.spec import (
    DEFAULT_MAX_DURATION,
    CancelToken,
    GenerationRequest,
)
from selva.windows import (
    DEFAULT_WINDOW_OVERLAP,
    join_windows,
    plan_windows,
    resolve_span,
    window_batches,
    window_noise,
)

log = logging.getLogger(__name__)

# The stages a call goes through, in order, as `callback_on_stage` names them.
STAGES = ("probe", "text", "decode", "text_synch", "flow", "vae", "vocoder")

# diffusers' shape: called after each flow step as fn(pipe, step_index, t, {"latents": x}); a returned
# dict with "latents" replaces the state.
StepCallback = Callable[["SelvaPipeline", int, float, dict[str, Any]], "dict[str, Any] | None"]


# Windows x candidates per flow batch (CFG doubles it): enough to keep an accelerator busy, bounded
# so a 10 minute clip (90 windows) does not need 90 windows of activations at once.
WINDOW_BATCH = 16
# Rows the vocoder takes at once on the CPU. Its activations grow with rows times samples (a 16 kHz
# window is 128k samples by up to 512 channels): batching the nine 8 s windows of a 60 s clip took
# 7.1 s per window against 4.6-5.1 s for one alone (2 cores, bf16). Window by window, 30 s and 60 s
# clips peak at 3.37 and 3.38 GB RSS, an 8 s one at 3.14 GB. Accelerators take the whole batch.
CPU_VOCODER_ROWS = 1


class SelvaPipeline(FeatureEncoding):
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
        self.text_synch = text_synch
        self.generator = generator
        self.vae = vae
        self.vocoder = vocoder
        self.t5 = t5
        self.clip = clip
        self.device = torch.device(device)
        self.dtype = dtype
        # With little accelerator memory the text encoders and the vocoder
        # wait on the CPU and visit the accelerator only while they run.
        self.offload = offload
        self.max_duration = max_duration
        plan_windows(0.0, 16000, overlap=window_overlap)  # refuses a bad overlap now, not per call
        self.window_overlap = window_overlap
        # ("t5", prompt) -> (states, mask); ("clip", prompt) -> states
        self.prompt_cache: LRUCache[Any] = LRUCache(cache_size)
        self.sync_cache: LRUCache[torch.Tensor] = LRUCache(cache_size)
        self._offload_lock = threading.RLock()  # one offloaded network moves at a time
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

    def clear_caches(self) -> None:
        self.prompt_cache.clear()
        self.sync_cache.clear()

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
        cancel = cancel or CancelToken()

        def stage(name: str) -> None:
            cancel.raise_if_cancelled()
            if callback_on_stage is not None:
                callback_on_stage(name)

        # 1. Check the inputs.
        req = request.checked(max_duration=self.max_duration)
        video = Path(req.video) if req.video is not None else None
        seed = random.randrange(2**31) if req.seed is None else req.seed
        steps, num_samples = req.steps, req.num_samples
        overlap = self.window_overlap if window_overlap is None else window_overlap
        sr = self.variant.sample_rate

        # 2. Probe the video and settle the span (from the prompt alone: the asked duration).
        start = float(req.start)
        info = None
        if video is not None:
            stage("probe")
            with self._timed(timings, "probe"):
                info = media.probe(video)
            duration = self.resolve_duration(info.duration, start, req.duration)
        else:
            duration = self.resolve_duration(math.inf, 0.0, req.duration)
        windows = plan_windows(duration, sr, overlap=overlap)
        lengths = SequenceLengths.from_duration(duration, sample_rate=sr, hop_length=self.variant.hop_length)

        # 3. Encode the prompts, while a worker thread decodes the span's frames (unless cached).
        key = self._sync_key(video, req.prompt, start, duration) if video is not None else None
        feed = None
        if key is not None and key not in self.sync_cache:
            feed = self._frame_feed(info, start, lengths)
        try:
            stage("text")
            with self._timed(timings, "text"):
                positive, negative_clip = self.encode_prompts(req.prompt, req.negative_prompt)

            # 4. Sync features of the whole span, once (every window takes its slice).
            sync_f = None  # from the prompt alone: the learned empty sync sequence
            if key is not None:

                def compute_sync() -> torch.Tensor:
                    with feed or self._frame_feed(info, start, lengths) as frames:
                        return self.encode_span(
                            frames, [positive], stage=stage, timings=timings, cancel=cancel
                        )[0]

                sync_f = self.sync_cache.get_or_compute(key, compute_sync)
        finally:
            if feed is not None:
                feed.close()

        # 5-6. Noise and flow, window by window in batches of windows x candidates.
        latent_dim, hop = self.generator.config.latent_dim, self.variant.hop_length
        noise = window_noise(windows, num_samples, seed, latent_dim=latent_dim, hop_length=hop)
        batches = window_batches(windows, max(1, WINDOW_BATCH // num_samples))
        stage("flow")
        latents: list[torch.Tensor] = []
        with self._timed(timings, "flow"):
            for number, batch in enumerate(batches):
                win_lengths = SequenceLengths.from_duration(
                    batch[0].duration, sample_rate=sr, hop_length=self.variant.hop_length
                )
                rows = len(batch) * num_samples  # window-major: row w * num_samples + k
                x0 = torch.cat([noise[w.index] for w in batch]).to(self.device)
                window_sync = None
                if sync_f is not None:
                    window_sync = torch.cat([sync_f[:, w.sync_slice] for w in batch]).repeat_interleave(
                        num_samples, dim=0
                    )
                cond, uncond = self.prepare_conditions(
                    window_sync, positive.clip, negative_clip, num_samples=rows, lengths=win_lengths
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
                        x0,
                        cond,
                        uncond,
                        steps=steps,
                        cfg_strength=req.cfg_strength,
                        callback_on_step_end=callback_on_step_end,
                        cancel=cancel,
                        state=where,
                    )
                )
        timings["flow_per_step"] = timings["flow"] / (steps * len(batches))

        # 7. Latents -> mel -> waveform. Past the flow a cancel is too late: the work is nearly done.
        if callback_on_stage is not None:
            callback_on_stage("vae")
        mels = [self.decode_latents(latent, timings) for latent in latents]
        if callback_on_stage is not None:
            callback_on_stage("vocoder")
        pieces: list[torch.Tensor] = []
        with self._timed(timings, "vocoder"):
            for batch, mel in zip(batches, mels, strict=True):
                audio = self.vocode(mel).float().cpu()
                pieces += [audio[k * num_samples : (k + 1) * num_samples] for k in range(len(batch))]
        ordered = [w for batch in batches for w in batch]
        pieces = [p for _, p in sorted(zip(ordered, pieces, strict=True), key=lambda wp: wp[0].index)]
        audio = join_windows(pieces, windows, round(duration * sr)).clamp(-1, 1)
        # TextSynch's and the vocoder's activations are hundreds of MB; glibc keeps such freed
        # blocks in the heap, and an idle app would hold its worst request's peak for good.
        release_freed_memory()

        timings["total"] = time.perf_counter() - t_total
        return SelvaOutput(
            audio=audio,
            sample_rate=sr,
            seed=seed,
            duration=duration,
            start=start,
            video=video,
            timings=timings,
            windows=len(windows),
            info=info,
        )

    # -- steps ---------------------------------------------------------------------------------

    def resolve_duration(self, video_duration: float, start: float, duration: float | None) -> float:
        """The span to sonify: as asked, or what is left after `start` up to `max_duration`."""
        return resolve_span(video_duration, start, duration, max_duration=self.max_duration)

    def prepare_latents(self, num_samples: int, latent_len: int, seed: int) -> torch.Tensor:
        """Noise (num_samples, L, C); candidate k is drawn from seed + k.

        One CPU generator per candidate: the same seed gives the same noise on
        every device, and any candidate of a batch can be reproduced alone.
        """
        latent_dim = self.generator.config.latent_dim
        noise = [
            torch.randn((1, latent_len, latent_dim), generator=torch.Generator().manual_seed(seed + k))
            for k in range(num_samples)
        ]
        return torch.cat(noise).to(self.device)

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

    # -- helpers -------------------------------------------------------------------------------

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
