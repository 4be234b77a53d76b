"""Decoded pictures squashed to TextSynch's frames on the device that will read them.

`selva.media` converts and resizes on the CPU: full-size RGB from PyAV, then
torch's antialiased bicubic resize on uint8 (what torchvision's `v2.Resize`
runs there), level-exact with the reference loader. On an H200's host, 8 s at
360p took 0.23 s to read of which h264 decoding was 0.06 s: the rest is RGB
conversion and this resize, work a GPU does in milliseconds.

Torch's uint8 kernel for this resize exists only on the CPU, and the float32
one differs from it by up to 7 levels at sharp edges (the uint8 kernel rounds
and clamps between its horizontal and vertical passes) and by one level in
places elsewhere (its weights are fixed-point). So off the CPU the uint8
kernel's arithmetic is done in int32 tensor operations: the same filter weights
(torch's own, read off by resizing an identity matrix), quantised to int16 with
the same precision rule, the same rounding offset, shift and clamp, pass by
pass. The frames are then the CPU path's level for level (tests/test_frame_feed.py
checks this against `media.read_frames` on clips).

`selva.media.iter_frames(..., device=...)` decodes with this resize: PyAV's RGB
pictures go up as uint8 in batches and are squashed there, the GPU's kernels
running while the host decodes the next batch. `wanted(device)` is the one
switch: on off the CPU, off on it (where `media`'s own path stays level-exact
with the reference loader); `SELVA_DEVICE_FRAMES=0` or `=1` overrides it.

    frames = torch.from_numpy(rgb).to("cuda", non_blocking=True)  # uint8 (T, H, W, 3)
    small = squash_frames(frames, 224, rotation=info.rotation)    # uint8 (T, 3, 224, 224) on cuda
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

# Pictures per pass: 32 at 1080p is 800 MB of int32 pixels, whatever T is.
CHUNK_FRAMES = 32
_MAX_PRECISION = 22  # the uint8 kernel's weights use at most this many fraction bits
DEVICE_FRAMES_ENV = "SELVA_DEVICE_FRAMES"  # "1": squash on the model's device, "0": on the CPU


def wanted(device: torch.device | str) -> bool:
    """Whether frames for `device` are squashed there: yes off the CPU, unless `SELVA_DEVICE_FRAMES` says."""
    setting = os.environ.get(DEVICE_FRAMES_ENV, "").strip()
    if setting in ("0", "1"):
        return setting == "1"
    if setting:
        raise ValueError(f"{DEVICE_FRAMES_ENV} is 0 or 1 (or unset: on off the CPU), not {setting!r}")
    return torch.device(device).type != "cpu"


def squash_frames(
    frames: torch.Tensor,
    size: int,
    *,
    rotation: int = 0,
    chunk: int = CHUNK_FRAMES,
    fixed_point: bool | None = None,
) -> torch.Tensor:
    """uint8 RGB pictures (T, H, W, 3) on any device -> uint8 (T, 3, size, size) there, turned upright.

    `rotation` is the counter-clockwise display rotation (`VideoInfo.rotation`).
    On the CPU this is `selva.media`'s own uint8 resize; elsewhere the same
    arithmetic in int32 (`squash_frames_fixed_point`), with the same result.
    `fixed_point=True` takes the int32 path on the CPU too (CPU tensors standing in for a GPU's).
    """
    _check(frames, size, rotation)
    if fixed_point is None:
        fixed_point = frames.device.type != "cpu"
    if not fixed_point:
        # (T, 3, H, W) view of channels-last pixels: the layout torch's uint8 kernel takes, as in media
        small = F.interpolate(
            frames.permute(0, 3, 1, 2), size=(size, size), mode="bicubic", align_corners=False, antialias=True
        )
    else:
        small = squash_frames_fixed_point(frames, size, chunk=chunk)
    return torch.rot90(small, k=rotation // 90, dims=(2, 3)) if rotation else small  # counter-clockwise


def squash_frames_fixed_point(frames: torch.Tensor, size: int, *, chunk: int = CHUNK_FRAMES) -> torch.Tensor:
    """The resize behind `squash_frames` off the CPU: uint8 (T, H, W, 3) -> (T, 3, size, size).

    Runs on any device (the pictures'), `chunk` pictures at a time: across, then down, as the
    uint8 kernel does, each pass skipped where that side keeps its length.
    """
    _check(frames, size, 0)
    out = torch.empty((len(frames), 3, size, size), dtype=torch.uint8, device=frames.device)
    for first in range(0, len(frames), chunk):
        part = frames[first : first + chunk].permute(0, 3, 1, 2).to(torch.int32)  # (n, 3, H, W)
        wide = _resize_last(part, size)  # (n, 3, H, size)
        out[first : first + chunk] = _resize_last(wide.transpose(2, 3), size).transpose(2, 3)
    return out


def _resize_last(pixels: torch.Tensor, length: int) -> torch.Tensor:
    """int32 pixels (..., n) resized to (..., length) along the last dimension, as levels 0-255."""
    if pixels.shape[-1] == length:
        return pixels
    index, weight, precision = _fixed_point_weights(pixels.shape[-1], length)
    index, weight = index.to(pixels.device), weight.to(pixels.device)
    acc = torch.full(
        (*pixels.shape[:-1], length), 1 << (precision - 1), dtype=torch.int32, device=pixels.device
    )
    for tap in range(
        index.shape[1]
    ):  # a tap at a time: the taps' products at once would be taps x the output
        acc += weight[:, tap] * pixels[..., index[:, tap]]
    return (acc >> precision).clamp_(0, 255)  # >> floors, as the kernel's arithmetic shift does


@functools.lru_cache(maxsize=16)
def _fixed_point_weights(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(input index (n_out, taps), int16-range weight (n_out, taps), fraction bits) of one pass."""
    # Torch's own antialiased bicubic weights: resizing the identity gives w[j, i], input i's share in j.
    eye = torch.eye(n_in, dtype=torch.float64).view(1, 1, n_in, n_in)
    w = F.interpolate(eye, size=(n_in, n_out), mode="bicubic", align_corners=False, antialias=True)[0, 0].T
    nonzero = w != 0
    first = nonzero.to(torch.int8).argmax(dim=1)
    last = n_in - 1 - nonzero.flip(1).to(torch.int8).argmax(dim=1)
    taps = int((last - first).max()) + 1
    span = first[:, None] + torch.arange(taps)  # (n_out, taps)
    index = span.clamp(max=n_in - 1)
    weight = torch.gather(w, 1, index) * (span <= last[:, None])
    # As many fraction bits as keep the largest weight within int16, rounded half away from zero.
    top = weight.max().item()
    precision = 0
    while precision < _MAX_PRECISION and int(0.5 + top * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weight * (1 << precision)
    rounded = torch.where(scaled < 0, scaled - 0.5, scaled + 0.5).trunc()
    return index, rounded.to(torch.int32), precision


def _check(frames: torch.Tensor, size: int, rotation: int) -> None:
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 RGB pictures (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}"
        )
    if size < 1:
        raise ValueError(f"frames are squashed to at least 1 x 1, not {size}")
    if rotation % 90:
        raise ValueError(f"rotation is a multiple of 90 degrees, not {rotation}")
