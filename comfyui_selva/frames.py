"""ComfyUI IMAGE frames -> the 25 fps, 224 px uint8 frames TextSynch was trained on.

A ComfyUI IMAGE is a float tensor (T, H, W, C) in [0, 1], frames evenly spaced
at some rate. Sync features must come from 25 fps: fed a 30 fps clip as if it
were 25 fps, the features would describe a clip 20 % longer, slowed down, and
the audio would drift off the picture.

Resampling is by time, with `selva.media.read_frames`'s rule: output frame k
shows the first source frame whose time i / fps is at or after k / 25, and past
the last source frame that frame stays on screen until the clip ends (n / fps).
Exact rationals keep ties (30 fps frame 6 and 25 fps frame 5, both at 0.2 s)
from going either way by rounding.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction

import torch
import torch.nn.functional as F

from selva.media import target_times
from selva.sequence import SYNC_FPS, SYNC_SIZE

from .stages import InputError

# Source frames resized at once: bounds the float32 copies of full-size pictures (16 at 1080p is 400 MB).
RESIZE_CHUNK = 16


def check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(
            f"images must be a ComfyUI IMAGE batch shaped [frames, height, width, channels] with 1, 3 or "
            f"4 channels, got {shape}; connect the images output of a video loader"
        )
    if images.shape[0] == 0:
        raise InputError("images holds no frames; check the video loader's frame cap and skip settings")


def check_fps(fps: float) -> float:
    # numbers.Real: other packs hand rates over as numpy floats or Fractions
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not math.isfinite(fps) or fps <= 0:
        raise InputError(f"fps must be a positive number of frames per second, got {fps!r}")
    return float(fps)


def exact(x: float) -> Fraction:
    """A rate as the short fraction it stands for (29.97 -> 2997/100), as selva.media reads times."""
    return Fraction(x).limit_denominator(1_000_000)


def clip_seconds(num_frames: int, fps: float) -> float:
    """How long `num_frames` evenly spaced frames last: the last one stays up for 1 / fps."""
    return float(num_frames / exact(fps))


def source_indices(num_frames: int, fps: float, count: int, rate: int = SYNC_FPS) -> list[int]:
    """Which source frame each of `count` output frames at `rate` shows (see the module notes)."""
    # The same float64 rule as selva.media.read_frames: a running sum of 1 / rate as the target
    # times, and the first source frame whose time j / fps reaches each.
    fps = float(fps)
    out, j = [], 0
    for t in target_times(0.0, rate, count):
        while j < num_frames - 1 and j / fps < t:
            j += 1
        out.append(j)
    return out


def to_sync_frames(images: torch.Tensor, indices: list[int], size: int = SYNC_SIZE) -> torch.Tensor:
    """The chosen frames of an IMAGE batch as uint8 (len(indices), 3, size, size) on the CPU.

    Squashed to a square (the aspect ratio is not kept, as in training) with an
    antialiased bicubic filter; pictures already at that size are only rounded
    to uint8. A frame repeated in `indices` is resized once.
    """
    unique, inverse = torch.tensor(indices, dtype=torch.long).unique(sorted=True, return_inverse=True)
    resized = torch.empty((len(unique), 3, size, size), dtype=torch.uint8)
    for start in range(0, len(unique), RESIZE_CHUNK):
        picked = unique[start : start + RESIZE_CHUNK].to(images.device)
        chunk = images.index_select(0, picked)[..., :3].float()  # (n, H, W, C<=3)
        chunk = chunk.expand(-1, -1, -1, 3).permute(0, 3, 1, 2)  # grey expands to RGB: (n, 3, H, W)
        if chunk.shape[-2:] != (size, size):
            chunk = F.interpolate(
                chunk, size=(size, size), mode="bicubic", align_corners=False, antialias=True
            )
        resized[start : start + len(picked)] = chunk.mul(255).round_().clamp_(0, 255).to("cpu", torch.uint8)
    return resized[inverse]
