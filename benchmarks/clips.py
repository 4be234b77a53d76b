"""Synthetic phone-like clips for the benchmark: h264 + AAC mp4s of moving, noisy content, cached."""

from __future__ import annotations

import math
import os
from pathlib import Path


def ensure_clip(folder: Path, *, width: int, height: int, fps: int, duration: float, bitrate: int) -> Path:
    """An h264 + AAC mp4 of moving, noisy content (cached); noise keeps the bitrate realistic."""
    path = folder / f"clip_{width}x{height}_{fps}fps_{duration:g}s_{bitrate // 1000}k.mp4"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.mp4")
        make_clip(tmp, width=width, height=height, fps=fps, duration=duration, bitrate=bitrate)
        os.replace(tmp, path)
    return path


def make_clip(path: Path, *, width: int, height: int, fps: int, duration: float, bitrate: int) -> None:
    """Encode a clip like a phone's: h264 yuv420p, a keyframe a second, 48 kHz stereo AAC, interleaved."""
    from fractions import Fraction

    import av
    import numpy as np

    rng = np.random.default_rng(0)
    n_frames = round(duration * fps)
    sample_rate, audio_chunk = 48_000, 1024
    ys, xs = np.mgrid[0:height, 0:width]
    background = np.stack(
        [(xs * 255 // max(width - 1, 1)), (ys * 255 // max(height - 1, 1)), np.full_like(xs, 96)], axis=-1
    ).astype(np.int16)
    side = max(height // 4, 8)
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.bit_rate = bitrate
        video.codec_context.gop_size = fps
        video.options = {"preset": "veryfast"}
        audio = container.add_stream("aac", rate=sample_rate, layout="stereo")
        audio_pts = 0
        for i in range(n_frames + 1):
            if i < n_frames:
                img = background + rng.integers(-24, 25, size=background.shape, dtype=np.int16)
                x = int((width - side) * (0.5 + 0.5 * math.sin(2 * math.pi * i / (2 * fps))))
                y = int((height - side) * i / max(n_frames - 1, 1))
                img[y : y + side, x : x + side] = (250, 240, 40)
                frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, fps)
                packets = video.encode(frame)
            else:
                packets = video.encode(None)  # flush
            container.mux(packets)
            # Audio up to this video time, so the streams interleave as in a camera file.
            until = min((i + 1) / fps, duration) * sample_rate if i < n_frames else duration * sample_rate
            while audio_pts < until:
                t = (audio_pts + np.arange(audio_chunk)) / sample_rate
                tone = 0.2 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(audio_chunk)
                samples = np.stack([tone, tone]).astype(np.float32)
                aframe = av.AudioFrame.from_ndarray(samples, format="fltp", layout="stereo")
                aframe.sample_rate, aframe.pts = sample_rate, audio_pts
                container.mux(audio.encode(aframe))
                audio_pts += audio_chunk
        container.mux(audio.encode(None))
