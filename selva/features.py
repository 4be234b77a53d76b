"""Steps 3 and 4 of a call: prompt features (T5, CLIP text) and sync features (TextSynch), cached.

`FeatureEncoder` is a component of `SelvaPipeline` (`pipe.features`): it holds
the text encoders, TextSynch and the two feature caches. The pipeline hands it
a `Placement` at construction: device, dtype and two of its own helpers,
`resident` (an offloaded network visits the device for a block, under the
pipeline's lock) and `timed` (a stage's seconds go into a call's timings), so
offloading and timing stay one thing for the whole pipeline.

Features are cached per prompt (T5, CLIP) and per clip content, prompt, span and
variant (sync features), so a re-roll skips decoding and TextSynch. Frames reach
TextSynch from a `FrameFeed`: a worker thread decodes the next chunk while the
current one is encoded, so a long span never holds all its frames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selva import device_frames, media
from selva.cache import LRUCache
from selva.frame_feed import FrameFeed
from selva.outputs import PromptFeatures
from selva.sequence import SEGMENT_FRAMES, SEGMENT_STRIDE, SequenceLengths
from selva.spec import CancelToken
from selva.windows import Window

StageCallback = Callable[[str], None]
Resident = Callable[[nn.Module], AbstractContextManager[Any]]
Timed = Callable[[dict[str, float], str], AbstractContextManager[None]]


@dataclass(frozen=True)
class Placement:
    """Where a component's networks run, with the pipeline's two helpers for them: `resident` (an
    offloaded network visits the device for a block) and `timed` (a stage's seconds into a call's
    timings). The pipeline hands the same one to each of its components."""

    device: torch.device
    dtype: torch.dtype
    resident: Resident
    timed: Timed


# Past the flow a cancel is too late: the work is nearly done, so these stages are not stopped.
PAST_THE_FLOW = ("vae", "vocoder")

# TextSynch segments per batch on the CPU. Measured on 2 cores, bf16, 8 s clip (24 segments):
# one at a time 9.0 s and 90 MB of activations, all at once 16.5 s and 700 MB (glibc maps and
# page-faults every block over 32 MB afresh). Accelerators take all segments at once.
CPU_SEGMENT_CHUNK = 1
# Frames are decoded and fed to TextSynch this many segments at a time: 24 segments are 200 frames
# (8 s, 30 MB at 224 px), so a span of one window is one TextSynch pass, as before windows, and a
# longer one holds one chunk at a time (plus the next, decoding), never the clip.
SYNC_CHUNK_SEGMENTS = 24


class StageReport:
    """One call's stage reports: `callback(name)` as each stage begins, `cancel` looked at first
    (except past the flow). The one stage callback every step of a call is handed."""

    def __init__(self, callback: StageCallback | None, cancel: CancelToken):
        self.callback, self.cancel = callback, cancel

    def __call__(self, name: str) -> None:
        if name not in PAST_THE_FLOW:
            self.cancel.raise_if_cancelled()
        if self.callback is not None:
            self.callback(name)


@dataclass(frozen=True)
class Span:
    """What a call sonifies: the video (None: the prompt alone), its probe, the seconds and the windows."""

    video: Path | None
    info: media.VideoInfo | None
    start: float
    duration: float
    windows: list[Window]


class FeatureEncoder:
    """T5 and the CLIP text tower (prompt features) and TextSynch (sync features), with their caches."""

    def __init__(
        self,
        *,
        variant: Any,
        text_synch: nn.Module,
        t5: Any,
        clip: Any,
        place: Placement,
        cache_size: int = 16,
    ):
        self.variant = variant
        self.text_synch = text_synch
        self.t5 = t5
        self.clip = clip
        self.place = place
        # ("t5", prompt) -> (states, mask); ("clip", prompt) -> states
        self.prompt_cache: LRUCache[Any] = LRUCache(cache_size)
        self.sync_cache: LRUCache[torch.Tensor] = LRUCache(cache_size)
        # Squash decoded frames on the device (off the CPU) instead of the host: the one switch.
        self.device_frames = device_frames.wanted(place.device)

    def clear_caches(self) -> None:
        self.prompt_cache.clear()
        self.sync_cache.clear()

    # -- prompts -------------------------------------------------------------------------------

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
            with self.place.resident(self.t5):
                t5, t5_mask = self.t5([prompt])
            return t5.to(self.place.device, self.place.dtype), t5_mask.to(self.place.device)

        t5, t5_mask = self.prompt_cache.get_or_compute(("t5", prompt), compute_t5)
        positive = PromptFeatures(t5=t5, t5_mask=t5_mask, clip=clip_of(prompt))
        return positive, (clip_of(negative) if negative is not None else None)

    def _encode_clip(self, prompts: list[str]) -> torch.Tensor:
        with self.place.resident(self.clip):
            return self.clip(prompts).to(self.place.device, self.place.dtype)  # (B, 77, D)

    # -- sync features of a span ---------------------------------------------------------------

    def prefetch(self, span: Span, prompts: list[str]) -> AbstractContextManager[FrameFeed | None]:
        """Start decoding `span`'s frames on a worker thread, unless no prompt needs them.

        Entered before the prompts are encoded, so decoding overlaps the text encoders; the
        feed is then handed to `sync_features`. None (nothing to decode) from the prompt alone
        or when every prompt's sync features are cached.
        """
        if span.info is None or all(self._sync_key(span, p) in self.sync_cache for p in prompts):
            return nullcontext(None)
        return self.frame_feed(span)

    def sync_features(
        self,
        span: Span,
        prompts: list[str],
        *,
        feed: FrameFeed | None = None,
        stage: StageCallback | None = None,
        timings: dict[str, float] | None = None,
        cancel: CancelToken | None = None,
    ) -> list[torch.Tensor]:
        """Sync features (1, S * 8, D) of `span` for each prompt, decoding the span at most once.

        Cached, so calls with these prompts on this span skip decoding and TextSynch. `feed`
        (from `prefetch`) is used for the first decode; `stage` hears "decode" and "text_synch".
        """
        if span.info is None:
            raise ValueError("sync features need a video; from the prompt alone there are none")
        keys = [self._sync_key(span, p) for p in prompts]
        todo = list(
            dict.fromkeys(p for p, key in zip(prompts, keys, strict=True) if key not in self.sync_cache)
        )
        spare = [feed] if feed is not None else []
        fresh: dict[str, torch.Tensor] = {}

        def encode(todo: list[str]) -> None:
            with spare.pop() if spare else self.frame_feed(span) as frames:
                encoded = [self.encode_prompt(p) for p in todo]
                features = self.encode_span(frames, encoded, stage=stage, timings=timings, cancel=cancel)
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
        frames: Iterable[tuple[int, torch.Tensor]],
        prompts: list[PromptFeatures],
        *,
        stage: StageCallback | None = None,
        timings: dict[str, float] | None = None,
        cancel: CancelToken | None = None,
    ) -> list[torch.Tensor]:
        """Sync features (1, S * 8, D) of a whole span for each prompt, from its frames chunk by chunk.

        `frames` yields (first segment, uint8 frames) chunks: a `FrameFeed`, or `frame_chunks`
        of frames in memory. TextSynch sees every segment on its own, so the chunks' features
        side by side are the features of one pass; each chunk is encoded for every prompt
        before the next is taken. `cancel` is looked at before each chunk.
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
            with self.place.timed(timings, "text_synch"):
                for part, p in zip(parts, prompts, strict=True):
                    part.append(self.encode_video(chunk.unsqueeze(0), p.t5, p.t5_mask))
        if isinstance(frames, FrameFeed):
            timings["decode"] = timings.get("decode", 0.0) + frames.decode_seconds
        return [torch.cat(part, dim=1) for part in parts]

    def encode_video(self, frames: torch.Tensor, t5: torch.Tensor, t5_mask: torch.Tensor) -> torch.Tensor:
        """uint8 or [-1, 1] frames (B, T, 3, 224, 224) -> sync features (B, S * 8, D)."""
        # uint8 crosses to the device (a quarter of float32's bytes; asynchronously from pinned
        # memory) and is converted there.
        frames = frames.to(self.place.device, non_blocking=frames.is_pinned())
        if frames.dtype == torch.uint8:
            # Squashed 224 px frames, scaled to [-1, 1] as Synchformer was trained.
            frames = frames.to(torch.float32).div_(127.5).sub_(1.0)
        frames = frames.to(self.place.dtype)
        t5 = t5.to(self.place.device, self.place.dtype)
        chunk = CPU_SEGMENT_CHUNK if self.place.device.type == "cpu" else None
        return self.text_synch(frames, t5, t5_mask.to(self.place.device), segment_chunk=chunk)

    def frame_feed(self, span: Span) -> FrameFeed:
        assert span.info is not None
        return FrameFeed(
            span.info,
            start=span.start,
            lengths=self._lengths(span.duration),
            chunk_segments=SYNC_CHUNK_SEGMENTS,
            pin_memory=self.place.device.type == "cuda",
            device=self.place.device if self.device_frames else None,
        )

    def _lengths(self, duration: float) -> SequenceLengths:
        return SequenceLengths.from_duration(
            duration, sample_rate=self.variant.sample_rate, hop_length=self.variant.hop_length
        )

    def _sync_key(self, span: Span, prompt: str) -> tuple:
        assert span.video is not None
        where = (round(span.start, 4), round(span.duration, 4))
        return (media.content_hash(span.video), prompt, *where, self.variant.name)


def frame_chunks(frames: torch.Tensor, segments: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(first segment, frames) chunks of `segments` whole segments from frames already in memory.

    The chunks a `FrameFeed` hands out, for a caller holding the frames (T, 3, 224, 224):
    consecutive chunks share 8 frames, as TextSynch's segments do.
    """
    for first in range(0, segments, SYNC_CHUNK_SEGMENTS):
        count = min(SYNC_CHUNK_SEGMENTS, segments - first)
        begin = first * SEGMENT_STRIDE
        yield first, frames[begin : begin + (count - 1) * SEGMENT_STRIDE + SEGMENT_FRAMES]
