"""The PyAV layer under selva.media and selva.mux: opening, seeking, timing and writing files.

Times are seconds from the video stream's first frame (containers such as
MPEG-TS start their clocks elsewhere), and exact rationals inside: a frame's
time is its integer pts times the stream's time base. A frame counts as
reaching a time when it is within half a time-base tick of it, because
containers round timestamps (WebM to milliseconds: 1/30 s is 33).

Every failure is a `MediaError` whose message names the problem and the fix.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from selva.spec import MediaError

log = logging.getLogger(__name__)

FFMPEG_ERRORS = (av.FFmpegError, OSError, ValueError, UnicodeDecodeError)
_IMAGE_FORMATS = {"image2", "apng", "webp_pipe"}  # plus every "*_pipe" demuxer (png_pipe, jpeg_pipe...)
# Packets of a non-video stream decoded to tell a real soundtrack (or subtitles) from what FFmpeg
# makes of stray bytes: real streams give something within their first few packets.
_DECODE_PROBE_PACKETS = 16


def not_media(path: Path, reason: object) -> MediaError:
    """The error for a file FFmpeg cannot make sense of; `reason` says what was seen."""
    reason = ffmpeg_reason(reason)
    return MediaError(
        f"{path.name} is not a media file FFmpeg can read, or it is damaged or truncated ({reason}); "
        "if it plays elsewhere, convert it to MP4 (H.264)"
    )


def ffmpeg_reason(error: object) -> object:
    """FFmpeg's words for `error` without its errno and path ("Invalid data found when processing input").

    PyAV's str() reads "[Errno 1094995529] ...: '/tmp/x.mp4'": a number no user can act on, and
    the server's path to the file.
    """
    return getattr(error, "strerror", None) or error


def open_input(path: Path) -> av.container.InputContainer:
    """Open `path` for reading; a file FFmpeg cannot open is a MediaError, not an FFmpeg one."""
    try:
        return av.open(str(path), metadata_errors="ignore")
    except FFMPEG_ERRORS as e:
        raise not_media(path, e) from e


def video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    """The first real video stream of `container`, or a MediaError saying what the file holds instead."""
    # cover art in music files is a one-picture "video" stream marked attached_pic: not a video
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        raise _why_no_video(container, path)
    stream = streams[0]
    fmt = container.format.name
    if fmt.endswith("_pipe") or fmt in _IMAGE_FORMATS:
        raise MediaError(f"{path.name} is a still image ({fmt}); SelVA needs a video (at least 0.64 s)")
    if stream.codec_context is None:
        raise MediaError(
            f"{path.name} uses a video codec this FFmpeg build cannot decode; convert it to MP4 (H.264)"
        )
    return stream


def audio_stream(container: av.container.InputContainer) -> av.AudioStream | None:
    """The first audio stream this FFmpeg build can decode, if any."""
    return next((s for s in container.streams.audio if s.codec_context is not None), None)


def _why_no_video(container: av.container.InputContainer, path: Path) -> MediaError:
    # FFmpeg guesses a format from a few bytes, so random data often "opens" as an empty AVI, a
    # subtitle file or an audio stream; only a stream that decodes shows the file is real media.
    others = [s for s in container.streams if s.type in ("audio", "subtitle") and s.codec_context]
    if not container.streams:
        return not_media(path, f"{container.format.name} with no streams")
    decoded = _decoding(container, others)
    if not decoded:
        kinds = ", ".join(sorted({s.type for s in container.streams}))
        return not_media(path, f"{container.format.name} whose {kinds} does not decode")
    audio = [s for s in decoded if s.type == "audio"]
    if audio:
        return MediaError(
            f"{path.name} contains only audio ({audio[0].codec_context.name}); SelVA needs a video to "
            "follow: pick the video file itself"
        )
    return MediaError(f"{path.name} has no video stream; pick a video file (MP4, MOV, WebM, MKV)")


def _decoding(
    container: av.container.InputContainer, streams: list[av.stream.Stream]
) -> list[av.stream.Stream]:
    """Those of `streams` whose first packets decode to something, read from where the container is.

    Called on a freshly opened container: a seek to the start fails in some demuxers (FLV).
    """
    if not streams:
        return []
    decoded: dict[int, av.stream.Stream] = {}
    budget = _DECODE_PROBE_PACKETS * len(streams)
    try:
        for packet in container.demux(*streams):
            # a 0-byte packet is a stream's end: decoding it flushes what the decoder holds
            if packet.stream.index not in decoded and packet.decode():
                decoded[packet.stream.index] = packet.stream
                if any(s.type == "audio" for s in decoded.values()):
                    break  # an audio track is what decides the message
            budget -= 1
            if budget == 0:
                break
    except FFMPEG_ERRORS:
        pass  # what decoded before the error still counts
    return list(decoded.values())


def exact(x: float | Fraction) -> Fraction:
    """A float as the short fraction it was written as (0.1 -> 1/10, not 3602879701896397/2**55)."""
    return Fraction(x).limit_denominator(1_000_000)


def reaches(time: Fraction, target: Fraction, stream: av.VideoStream) -> bool:
    """Whether a frame at `time` is at or after `target`, give or take half a time-base tick."""
    return time + stream.time_base / 2 >= target


def seek(container: av.container.InputContainer, stream: av.stream.Stream, start: Fraction | None) -> None:
    """Seek to the keyframe at or before `start` (from the first frame), or to the very beginning."""
    try:
        if start is None:
            container.seek(0, backward=True)  # in AV_TIME_BASE: before any stream's first packet
        else:
            container.seek((stream.start_time or 0) + math.floor(start / stream.time_base), stream=stream)
    except av.FFmpegError:  # unseekable (no index): reading simply goes on from the start
        log.debug("cannot seek in %s; reading from where it is", container.name)


def frames_from(
    container: av.container.InputContainer, stream: av.VideoStream, start: Fraction, path: Path
) -> Iterator[tuple[Fraction, av.VideoFrame]]:
    """Decoded frames from the keyframe at or before `start`, with their times from the first frame."""
    t0 = stream.start_time or 0
    for attempt in range(2):
        # always seek, even to 0: the container may have been read before (mux plans, then copies)
        seek(container, stream, start if attempt == 0 else None)
        first, previous = True, None
        try:
            for frame in container.decode(stream):
                if frame.pts is None:  # rare (raw streams): step on by one nominal frame
                    time = (previous or Fraction(0)) + 1 / (stream.guessed_rate or 25)
                else:
                    time = Fraction(frame.pts - t0) * stream.time_base
                if first and attempt == 0 and not reaches(start, time, stream):
                    break  # the seek overshot (inexact index): start again from the beginning
                first, previous = False, time
                yield time, frame
            else:
                return
        except av.FFmpegError as e:
            raise MediaError(
                f"{path.name} cannot be decoded past {float(previous or 0):.2f} s ({e}); re-export it"
            ) from e


def waveform(audio: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N,) or (C, N) audio as float32 (C, N) in [-1, 1], C in {1, 2}."""
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().to("cpu", torch.float32).numpy()
    wave = np.asarray(audio, dtype=np.float32)
    if wave.ndim == 1:
        wave = wave[None]
    if wave.ndim != 2 or wave.shape[0] not in (1, 2) or wave.shape[1] == 0:
        raise MediaError(f"audio must be shaped (N,) or (C, N) with 1 or 2 channels, got {tuple(wave.shape)}")
    if not np.isfinite(wave).all():
        raise MediaError("audio contains NaN or infinite samples; the generation failed, run it again")
    return np.ascontiguousarray(np.clip(wave, -1.0, 1.0))


def channel_layout(channels: int) -> str:
    """FFmpeg's layout name for 1 or 2 channels."""
    return "mono" if channels == 1 else "stereo"


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Run write(tmp) on a hidden file beside `path`, then rename it into place; never leave the tmp.

    FFmpeg and OS errors inside `write` become a MediaError; a MediaError passes through as it is.
    """
    if not path.parent.is_dir():
        raise MediaError(f"cannot write {path}: the folder {path.parent} does not exist; create it first")
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.part"
    try:
        write(tmp)
        os.replace(tmp, path)
    except FFMPEG_ERRORS as e:
        raise MediaError(
            f"could not write {path.name} ({e}); check the folder is writable and has space"
        ) from e
    finally:
        tmp.unlink(missing_ok=True)
    return path
