"""Sequence lengths of every stream, derived from the clip duration.

All lengths follow from the duration and the rates the networks were trained
with: sync frames at 25 fps (16-frame segments, stride 8, 8 tokens each), CLIP
frames at 8 fps, and audio latents at one per two mel hops.
"""

import math
from dataclasses import dataclass

from selva.spec import SEGMENT_FRAMES, SYNC_FPS

SYNC_SIZE = 224
SEGMENT_STRIDE = 8
TOKENS_PER_SEGMENT = 8
CLIP_FPS = 8

# Durations come from integer frame counts divided by a rate, so products such
# as 7.96 * 25 can land a hair below an integer; this margin absorbs that.
_EPS = 1e-6


@dataclass(frozen=True)
class SequenceLengths:
    duration: float
    sync_frames: int  # video frames fed to TextSynch
    sync_segments: int
    sync_len: int  # sync tokens = segments * 8
    clip_len: int  # CLIP tokens (the empty CLIP sequence in SelVA)
    latent_len: int  # audio latents
    audio_samples: int  # waveform samples after vocoding

    @classmethod
    def from_duration(cls, duration: float, *, sample_rate: int, hop_length: int) -> "SequenceLengths":
        sync_frames = math.floor(duration * SYNC_FPS + _EPS)
        if sync_frames < SEGMENT_FRAMES:
            raise ValueError(
                f"{duration:.2f} s is too short: SelVA needs at least {SEGMENT_FRAMES} frames at "
                f"{SYNC_FPS} fps ({SEGMENT_FRAMES / SYNC_FPS:.2f} s)"
            )
        segments = (sync_frames - SEGMENT_FRAMES) // SEGMENT_STRIDE + 1
        latent_len = math.ceil(duration * sample_rate / hop_length / 2 - _EPS)
        return cls(
            duration=duration,
            sync_frames=sync_frames,
            sync_segments=segments,
            sync_len=segments * TOKENS_PER_SEGMENT,
            clip_len=math.floor(duration * CLIP_FPS + _EPS),
            latent_len=latent_len,
            audio_samples=latent_len * 2 * hop_length,
        )
