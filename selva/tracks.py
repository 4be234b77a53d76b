"""Multi-track mp4s for video editors, and the video's own soundtrack as a waveform.

`write_multitrack` takes an mp4 that `selva.mux.mux` already wrote (the span's
video, copied or re-encoded, and the mix as AAC) and remuxes it with one more
AAC track per stem: its packets are copied as they are, so the picture is the
one `mux` settled on and nothing in `mux` itself needs to know about tracks.
Players and editors see the mix as the default track and the others by title.

`original_audio` decodes the video's soundtrack over a span, so the stems
layer can mix it (and show it as a track) with the same numbers it writes.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from selva.spec import MediaError

_AAC_BIT_RATE = 192_000
_LAYOUTS = {1: "mono", 2: "stereo"}


def original_audio(video: str | Path, start: float, duration: float, sample_rate: int) -> np.ndarray | None:
    """The video's first audio stream over [start, start + duration] as mono float32 (N,), or None.

    Times count from the first video frame (as `mux` places the new audio), so
    the original lines up with the generated sound; a stream that starts late
    or ends early is padded with silence.
    """
    n = round(duration * sample_rate)
    try:
        with av.open(str(video)) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            vs = container.streams.video[0] if container.streams.video else None
            v0 = Fraction(vs.start_time or 0) * vs.time_base if vs is not None else Fraction(0)
            begin = Fraction(start).limit_denominator(10**6) + v0
            # Seek a little before the span; the first frame's pts places the samples exactly.
            container.seek(max(0, math.floor(begin / stream.time_base) - 1), stream=stream)
            resampler = av.AudioResampler(format="fltp", layout="mono", rate=sample_rate)
            offset: int | None = None
            chunks: list[np.ndarray] = []
            filled = 0
            for frame in container.decode(stream):
                if offset is None and frame.pts is not None:
                    offset = round((Fraction(frame.pts) * stream.time_base - begin) * sample_rate)
                for piece in resampler.resample(frame):
                    chunks.append(piece.to_ndarray()[0])
                    filled += piece.samples
                if offset is not None and offset + filled >= n:
                    break
            chunks.extend(piece.to_ndarray()[0] for piece in resampler.resample(None))
    except av.FFmpegError as e:
        raise MediaError(f"cannot read the soundtrack of {Path(video).name} ({e})") from e
    out = np.zeros(n, dtype=np.float32)
    if not chunks or offset is None:
        return out
    samples = np.concatenate(chunks)[max(0, -offset) :]  # drop what precedes the span
    at = max(0, offset)
    placed = samples[: max(0, n - at)]
    out[at : at + placed.size] = placed
    return out


def write_multitrack(
    mixed_mp4: str | Path,
    tracks: Sequence[tuple[str, np.ndarray]],
    sample_rate: int,
    out_path: str | Path,
    *,
    mix_title: str = "mix",
) -> Path:
    """Copy `mixed_mp4` (video + one audio track) to `out_path` with one AAC track per (title, wave).

    The existing audio track is titled `mix_title` and stays the default; the
    added ones are not default, so a player plays the mix and an editor lists
    every track by its title (stream `title` and handler name). Waves are float
    in [-1, 1], mono (N,) or stereo (2, N) (a sound as the user panned it), at
    `sample_rate` (any rate AAC has: the model's, or 48 kHz for delivery).
    Nothing is left at `out_path` on failure.
    """
    mixed_mp4, out_path = Path(mixed_mp4), Path(out_path)
    tmp = out_path.parent / f".{out_path.name}.{uuid.uuid4().hex[:8]}.part"
    try:
        with (
            av.open(str(mixed_mp4)) as src,
            av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as dst,
        ):
            copied: list[av.Packet] = []
            mapping = {}
            for stream in (*src.streams.video, *src.streams.audio):
                out = dst.add_stream_from_template(stream)
                if stream.type == "audio":
                    _label(out, mix_title, default=True)
                mapping[stream.index] = out
            for packet in src.demux(*src.streams.video, *src.streams.audio):
                if packet.size == 0 or packet.dts is None:
                    continue  # end-of-stream markers
                packet.stream = mapping[packet.stream.index]
                copied.append(packet)
            for title, wave in tracks:
                samples = _channels(wave, title)
                layout = _LAYOUTS[samples.shape[0]]
                stream = dst.add_stream("aac", rate=sample_rate, layout=layout, options={"aac_coder": "fast"})
                stream.bit_rate = _AAC_BIT_RATE
                _label(stream, title, default=False)
                copied += _encode(stream, samples, sample_rate)
            # Decoding-time order across all tracks, so a streaming player finds them together.
            copied.sort(key=lambda p: p.dts * p.time_base)
            for packet in copied:
                dst.mux(packet)
        os.replace(tmp, out_path)
    except av.FFmpegError as e:
        raise MediaError(f"could not write {out_path.name} ({e}); check the folder is writable") from e
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def _label(stream: av.stream.Stream, title: str, *, default: bool) -> None:
    # mp4 stores `title` in udta and `handler_name` in hdlr; editors show one or the other.
    title = title.strip() or "untitled"
    stream.metadata["title"] = title
    stream.metadata["handler_name"] = title
    stream.metadata["language"] = "und"
    stream.disposition = av.stream.Disposition.default if default else av.stream.Disposition(0)


def _channels(wave: np.ndarray, title: str) -> np.ndarray:
    """(C, N) float32 in [-1, 1] from mono (N,) or (1 or 2, N)."""
    samples = np.asarray(wave, dtype=np.float32)
    samples = samples[None] if samples.ndim == 1 else samples
    if samples.ndim != 2 or samples.shape[0] not in _LAYOUTS or samples.shape[1] == 0:
        raise MediaError(f"track {title!r} must be mono (N,) or stereo (2, N) audio, got {np.shape(wave)}")
    return np.ascontiguousarray(np.clip(samples, -1.0, 1.0))


def _encode(stream: av.AudioStream, samples: np.ndarray, sample_rate: int) -> list[av.Packet]:
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=_LAYOUTS[samples.shape[0]])
    frame.sample_rate, frame.pts, frame.time_base = sample_rate, 0, Fraction(1, sample_rate)
    return stream.encode(frame) + stream.encode()
