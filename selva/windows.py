"""Long spans as overlapping 8 s windows, and the crossfade that joins their audio.

SelVA was trained on 8 s clips, so a longer span is sonified window by window.
Window starts fall on whole TextSynch segment strides (8 frames at 25 fps,
0.32 s): TextSynch encodes each 16-frame segment on its own, so the sync
tokens of a window starting on a stride are exactly a contiguous slice of the
whole span's tokens, and one TextSynch pass over the span serves every window.
A start on a stride is also a whole number of audio samples at 16 kHz and
44.1 kHz, so the windows' audio lines up sample for sample.

The plan is plain arithmetic; the noise rule (`draw_noise`) and the crossfade make tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from selva.sequence import SEGMENT_FRAMES, SEGMENT_STRIDE, SYNC_FPS, TOKENS_PER_SEGMENT
from selva.spec import MIN_DURATION, TRAINED_DURATION, InputError, check_duration

DEFAULT_WINDOW_OVERLAP = 1.0  # seconds; long enough to hide a seam, short enough to cost little
STRIDE_SECONDS = SEGMENT_STRIDE / SYNC_FPS  # 0.32 s: the grid window starts sit on
# RMS matching may not change a window's level by more than this factor either way: a window that
# starts in silence (or a sudden loud event) must not be blown up or crushed to match its neighbour.
MAX_GAIN = 2.0
_EPS = 1e-6  # as in selva.sequence: durations are frame counts over a rate


@dataclass(frozen=True)
class Window:
    """One window of a span: where it starts and how long it runs, in frames, seconds and samples."""

    index: int
    start_frame: int  # from the span's start, a multiple of SEGMENT_STRIDE
    duration: float  # seconds
    sample_rate: int

    @property
    def start(self) -> float:
        return self.start_frame / SYNC_FPS

    @property
    def start_sample(self) -> int:
        return round(self.start_frame * self.sample_rate / SYNC_FPS)

    @property
    def num_samples(self) -> int:
        return round(self.duration * self.sample_rate)

    @property
    def sync_slice(self) -> slice:
        """This window's sync tokens within the whole span's (segments are 8 tokens each)."""
        first_segment = self.start_frame // SEGMENT_STRIDE
        frames = math.floor(self.duration * SYNC_FPS + _EPS)
        segments = (frames - SEGMENT_FRAMES) // SEGMENT_STRIDE + 1
        return slice(first_segment * TOKENS_PER_SEGMENT, (first_segment + segments) * TOKENS_PER_SEGMENT)


def plan_windows(
    duration: float,
    sample_rate: int,
    *,
    overlap: float = DEFAULT_WINDOW_OVERLAP,
    window: float = TRAINED_DURATION,
) -> list[Window]:
    """The windows covering `duration` seconds: one if it fits in `window`, else overlapping ones.

    Every window but the last is exactly `window` long; the last ends at the
    span's end and so runs `window` plus less than one stride (0.32 s). Starts
    are spread evenly on the stride grid, so every overlap is at least
    `overlap` seconds (rounded up to the grid) and none is much longer.
    """
    if not (0 <= overlap < window - STRIDE_SECONDS):
        raise InputError(
            f"window overlap must be from 0 s to under {window - STRIDE_SECONDS:.2f} s, got {overlap!r}"
        )
    if duration <= window + _EPS:
        return [Window(0, 0, duration, sample_rate)]
    total_frames = math.floor(duration * SYNC_FPS + _EPS)
    window_frames = round(window * SYNC_FPS)
    # The longest hop that keeps the asked overlap, on the stride grid.
    hop = (window_frames - math.ceil(overlap * SYNC_FPS - _EPS)) // SEGMENT_STRIDE * SEGMENT_STRIDE
    # The last window starts on the grid at or before `window` from the end, so it is at least
    # `window` long and reaches the span's end.
    last_strides = (total_frames - window_frames) // SEGMENT_STRIDE
    count = math.ceil(last_strides * SEGMENT_STRIDE / hop) + 1
    # Spread the starts evenly (in strides) rather than leaving one huge overlap at the end.
    starts = [round(k * last_strides / (count - 1)) * SEGMENT_STRIDE for k in range(count)]
    windows = []
    for k, start in enumerate(starts):
        length = window if k < count - 1 else duration - start / SYNC_FPS
        windows.append(Window(k, start, length, sample_rate))
    return windows


def join_windows(pieces: list[torch.Tensor], windows: list[Window], total_samples: int) -> torch.Tensor:
    """Overlap-add window audio (each (B, N_k)) into one (B, total_samples) track.

    Each window is first scaled (within 1/MAX_GAIN..MAX_GAIN) so its RMS over
    the overlap matches the already joined audio there: the model may render a
    window a little louder or softer, and a level jump is audible even where
    the fade hides the seam. Then an equal-power fade (cos out, sin in; their
    squares sum to one) crosses from one to the next, which keeps the loudness
    of uncorrelated material constant through the overlap and starts and ends
    each fade at full or zero weight, so no step (click) appears.
    """
    batch = pieces[0].shape[0]
    out = torch.zeros(batch, total_samples, dtype=torch.float32)
    end = 0  # samples written so far
    for piece, win in zip(pieces, windows, strict=True):
        piece = piece.float()[:, : total_samples - win.start_sample]
        start = win.start_sample
        overlap = max(0, min(end - start, piece.shape[1]))
        if overlap:
            have = out[:, start : start + overlap]
            new = piece[:, :overlap]
            gain = _rms(have) / _rms(new).clamp_min(1e-8)
            gain = torch.where(_rms(new) > 1e-6, gain, torch.ones_like(gain))
            piece = piece * gain.clamp(1 / MAX_GAIN, MAX_GAIN)[:, None]
            phase = (torch.arange(overlap, dtype=torch.float32) + 0.5) / overlap * (math.pi / 2)
            fade_in, fade_out = torch.sin(phase), torch.cos(phase)
            out[:, start : start + overlap] = have * fade_out + piece[:, :overlap] * fade_in
        out[:, start + overlap : start + piece.shape[1]] = piece[:, overlap:]
        end = max(end, start + piece.shape[1])
    return out


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean(dim=1).sqrt()


def draw_noise(
    latent_lens: Sequence[int], num_samples: int, seed: int, *, latent_dim: int
) -> list[torch.Tensor]:
    """The noise rule: per window of latent length L_w, noise (num_samples, L_w, C).

    Candidate k's noise comes from one CPU generator seeded with seed + k, which draws its
    windows' noise in window order. So the same seed gives the same noise on every device,
    any candidate can be reproduced alone (candidate k of seed s is candidate 0 of seed s + k),
    and a span of one window is drawn exactly as the first window of a longer one.
    Every caller (the pipeline's call, ComfyUI, the tests) gets its noise from here.
    """
    gens = [torch.Generator().manual_seed(seed + k) for k in range(num_samples)]
    return [torch.cat([torch.randn((1, n, latent_dim), generator=g) for g in gens]) for n in latent_lens]


def window_batches(windows: list[Window], size: int) -> list[list[Window]]:
    """Windows of equal length grouped into flow batches of at most `size` (one batch per length run)."""
    batches: list[list[Window]] = []
    for w in windows:
        if batches and len(batches[-1]) < size and batches[-1][0].duration == w.duration:
            batches[-1].append(w)
        else:
            batches.append([w])
    return batches


def resolve_span(
    video_duration: float, start: float, duration: float | None, *, max_duration: float
) -> float:
    """The seconds to sonify from `start`: as asked, or what is left of the video up to `max_duration`.

    The one span rule of every front end (`video_duration` is math.inf for sound from the
    prompt alone). Refuses a duration over `max_duration`, a start past the end, a duration
    running past it (by more than a frame) and spans shorter than one TextSynch segment,
    each with the fix in its message.
    """
    if duration is not None:
        check_duration(duration, max_duration)
    left = video_duration - start
    if left <= 0:
        raise InputError(
            f"start {start:.2f} s is at or past the end of the {video_duration:.2f} s video; "
            "pick a start inside the video"
        )
    if duration is None:
        duration = min(left, max_duration)
    elif duration > left + 1.0 / SYNC_FPS:
        raise InputError(
            f"duration {duration:.2f} s from start {start:.2f} s runs past the end of the "
            f"{video_duration:.2f} s video; use at most {left:.2f} s or leave it automatic"
        )
    duration = min(duration, left)
    if duration * SYNC_FPS + _EPS < SEGMENT_FRAMES:
        raise InputError(
            f"the span is {duration:.2f} s but SelVA needs at least {MIN_DURATION:.2f} s of video "
            f"(16 frames at {SYNC_FPS} fps); use a longer clip or an earlier start"
        )
    return duration
