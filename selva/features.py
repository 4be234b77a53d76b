"""Steps 3 and 4 of a call: prompt features (T5, CLIP text) and sync features (TextSynch), cached.

`FeatureEncoding` is a base of `SelvaPipeline`: these methods are the pipeline's
own (`pipe.encode_prompt`, `pipe.sync_features`, ...), kept here so the call in
`selva.pipeline` reads as its recipe. They use what the pipeline holds: its
networks and caches, its device and precision, and its `_resident` (offloaded
networks visit the device) and `_timed` (stage timings) helpers.

Features are cached per prompt (T5, CLIP) and per clip content, prompt, span and
variant (sync features), so a re-roll skips decoding and TextSynch. Frames reach
TextSynch from a `FrameFeed`: a worker thread decodes the next chunk while the
current one is encoded, so a long span never holds all its frames.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selva import media
from selva.cache import LRUCache
from selva.frame_feed import FrameFeed
from selva.outputs import PromptFeatures
from selva.sequence import SequenceLengths
from selva.spec import CancelToken

StageCallback = Callable[[str], None]

# TextSynch segments per batch on the CPU. Measured on 2 cores, bf16, 8 s clip (24 segments):
# one at a time 9.0 s and 90 MB of activations, all at once 16.5 s and 700 MB (glibc maps and
# page-faults every block over 32 MB afresh). Accelerators take all segments at once.
CPU_SEGMENT_CHUNK = 1
# Frames are decoded and fed to TextSynch this many segments at a time: 24 segments are 200 frames
# (8 s, 30 MB at 224 px), so a span of one window is one TextSynch pass, as before windows, and a
# longer one holds one chunk at a time (plus the next, decoding), never the clip.
SYNC_CHUNK_SEGMENTS = 24


class FeatureEncoding:
    """The feature steps of `SelvaPipeline` (see the module docstring for what they use)."""

    variant: Any
    text_synch: nn.Module
    t5: Any
    clip: Any
    device: torch.device
    dtype: torch.dtype
    prompt_cache: LRUCache[Any]
    sync_cache: LRUCache[torch.Tensor]

    # Provided by SelvaPipeline.
    def resolve_duration(self, video_duration: float, start: float, duration: float | None) -> float:
        raise NotImplementedError

    def _resident(self, module: nn.Module) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _timed(self, timings: dict[str, float], name: str) -> AbstractContextManager[None]:
        raise NotImplementedError

    def encode_prompt(self, prompt: str) -> PromptFeatures:
        """T5 and CLIP text features of one prompt, cached."""
        return self.encode_prompts(prompt)[0]

    def encode_prompts(
        self, prompt: str, negative_prompt: str = ""
    ) -> tuple[PromptFeatures, torch.Tensor | None]:
        """The prompt's T5 and CLIP features, and the negative prompt's CLIP features (None if blank).

        The negative prompt never reaches TextSynch, so it gets no T5 pass. Each CLIP prompt is
        encoded alone: a row of a batch differs from the prompt alone in the last bits, which the
        flow magnifies, and a cached feature must not depend on which prompt it came with (the
        same take through any front end, in any order, is the same to the bit). Both are cached
        per prompt.
        """
        negative = negative_prompt if negative_prompt.strip() else None
        wanted = list(dict.fromkeys(p for p in (prompt, negative) if p is not None))
        fresh = {p: self._encode_clip([p]) for p in wanted if ("clip", p) not in self.prompt_cache}

        def clip_of(p: str) -> torch.Tensor:
            return self.prompt_cache.get_or_compute(
                ("clip", p), lambda: fresh[p] if p in fresh else self._encode_clip([p])
            )

        def compute_t5() -> tuple[torch.Tensor, torch.Tensor]:
            with self._resident(self.t5):
                t5, t5_mask = self.t5([prompt])
            return t5.to(self.device, self.dtype), t5_mask.to(self.device)

        t5, t5_mask = self.prompt_cache.get_or_compute(("t5", prompt), compute_t5)
        positive = PromptFeatures(t5=t5, t5_mask=t5_mask, clip=clip_of(prompt))
        return positive, (clip_of(negative) if negative is not None else None)

    def _encode_clip(self, prompts: list[str]) -> torch.Tensor:
        with self._resident(self.clip):
            return self.clip(prompts).to(self.device, self.dtype)  # (B, 77, D)

    def sync_features(
        self,
        video: str | Path,
        prompts: list[str],
        *,
        start: float = 0.0,
        duration: float | None = None,
        cancel: CancelToken | None = None,
    ) -> list[torch.Tensor]:
        """Sync features (1, S * 8, D) of one span for each prompt, decoding the span once.

        Cached as a call's are, so calls with these prompts on this span skip decoding and
        TextSynch (`selva.stems` runs this first, then one call per stem).
        """
        info = media.probe(video)
        duration = self.resolve_duration(info.duration, start, duration)
        lengths = SequenceLengths.from_duration(
            duration, sample_rate=self.variant.sample_rate, hop_length=self.variant.hop_length
        )
        keys = [self._sync_key(Path(video), p, start, duration) for p in prompts]
        todo = list(
            dict.fromkeys(p for p, key in zip(prompts, keys, strict=True) if key not in self.sync_cache)
        )
        fresh: dict[str, torch.Tensor] = {}

        def encode(todo: list[str]) -> None:
            with self._frame_feed(info, start, lengths) as frames:
                features = self.encode_span(frames, [self.encode_prompt(p) for p in todo], cancel=cancel)
                fresh.update(zip(todo, features, strict=True))

        if todo:
            encode(todo)

        def compute(p: str) -> torch.Tensor:
            if p not in fresh:  # evicted by another thread since the look-up above
                encode([p])
            return fresh[p]

        return [
            self.sync_cache.get_or_compute(key, lambda p=p: compute(p))
            for p, key in zip(prompts, keys, strict=True)
        ]

    def encode_span(
        self,
        frames: FrameFeed,
        prompts: list[PromptFeatures],
        *,
        stage: StageCallback | None = None,
        timings: dict[str, float] | None = None,
        cancel: CancelToken | None = None,
    ) -> list[torch.Tensor]:
        """Sync features (1, S * 8, D) of a whole span for each prompt, from its frames chunk by chunk.

        TextSynch sees every segment on its own, so the chunks' features side by side are the
        features of one pass; each chunk is encoded for every prompt before the next is taken.
        `cancel` is looked at before each chunk.
        """
        timings = {} if timings is None else timings
        parts: list[list[torch.Tensor]] = [[] for _ in prompts]
        if stage is not None:
            stage("decode")
        for first, chunk in frames:
            if cancel is not None:
                cancel.raise_if_cancelled()
            if stage is not None and first == 0:
                stage("text_synch")
            with self._timed(timings, "text_synch"):
                for part, p in zip(parts, prompts, strict=True):
                    part.append(self.encode_video(chunk.unsqueeze(0), p.t5, p.t5_mask))
        timings["decode"] = timings.get("decode", 0.0) + frames.decode_seconds
        return [torch.cat(part, dim=1) for part in parts]

    def _sync_key(self, video: Path, prompt: str, start: float, duration: float) -> tuple:
        return (media.content_hash(video), prompt, round(start, 4), round(duration, 4), self.variant.name)

    def _frame_feed(self, info: media.VideoInfo, start: float, lengths: SequenceLengths) -> FrameFeed:
        return FrameFeed(
            info,
            start=start,
            lengths=lengths,
            chunk_segments=SYNC_CHUNK_SEGMENTS,
            pin_memory=self.device.type == "cuda",
        )

    def encode_video(self, frames: torch.Tensor, t5: torch.Tensor, t5_mask: torch.Tensor) -> torch.Tensor:
        """uint8 or [-1, 1] frames (B, T, 3, 224, 224) -> sync features (B, S * 8, D)."""
        # uint8 crosses to the device (a quarter of float32's bytes; asynchronously from pinned
        # memory) and is converted there.
        frames = frames.to(self.device, non_blocking=frames.is_pinned())
        if frames.dtype == torch.uint8:
            # Squashed 224 px frames, scaled to [-1, 1] as Synchformer was trained.
            frames = frames.to(torch.float32).div_(127.5).sub_(1.0)
        frames = frames.to(self.dtype)
        t5 = t5.to(self.device, self.dtype)
        chunk = CPU_SEGMENT_CHUNK if self.device.type == "cpu" else None
        return self.text_synch(frames, t5, t5_mask.to(self.device), segment_chunk=chunk)
