"""Put generated audio on a span of a video: an mp4 with the video copied (or re-encoded) and AAC sound.

Times follow selva/containers.py and rotation selva/media.py.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from selva.containers import (
    FFMPEG_ERRORS,
    atomic_write,
    audio_stream,
    channel_layout,
    exact,
    frames_from,
    open_input,
    reaches,
    seek,
    video_stream,
    waveform,
)
from selva.media import VideoInfo, info_for
from selva.spec import MediaError

log = logging.getLogger(__name__)

_OUT_SUFFIXES = {".mp4", ".m4v", ".mov"}
_AAC_BIT_RATE = 192_000
_X264_OPTIONS = {"crf": "18", "preset": "fast"}  # visually lossless for a one-off span


def mux(
    video_path: str | Path,
    audio: torch.Tensor | np.ndarray,
    sample_rate: int,
    out_path: str | Path,
    *,
    start: float = 0.0,
    duration: float,
    original_audio_gain: float | None = None,
    info: VideoInfo | None = None,
) -> Path:
    """Write an mp4 of the video's [start, start + duration] span with `audio` as its soundtrack.

    The video stream is copied packet for packet (no quality loss, no encoding time) when the
    span starts on a keyframe, the packets inside it form an unbroken run in decoding order and
    MP4 can carry the codec (H.264, HEVC, MPEG-4, VP9, AV1...). Otherwise (a span starting
    mid-GOP, VP8, Theora...) just that span is re-encoded with libx264 (crf 18, yuv420p).
    The display matrix goes along either way. Audio (N,) or (C, N) in [-1, 1] is cut or padded
    with silence to the span, encoded as AAC (resampled only where AAC lacks the rate) and starts
    with the first frame. original_audio_gain mixes the video's own soundtrack, at that linear
    gain, under the new audio (None or 0: replace it; ignored when the video has none).
    `info` is what `probe(video_path)` returned, when the caller has it: the file is then not
    probed again (it is still opened to plan the copy and to copy).
    Returns `out_path`; on any failure nothing is left there (an existing file stays as it was).
    """
    video_path, out_path = Path(video_path), Path(out_path)
    if out_path.suffix.lower() not in _OUT_SUFFIXES:
        raise MediaError(f"mux writes MP4: name the output .mp4 instead of {out_path.name}")
    if not (duration > 0 and start >= 0):
        raise MediaError(
            f"cannot mux start={start}, duration={duration}: start must be >= 0 and duration > 0"
        )
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise MediaError(f"sample_rate must be a positive whole number of Hz, got {sample_rate}")
    gain = float(original_audio_gain or 0.0)
    if not (math.isfinite(gain) and gain >= 0):
        raise MediaError(
            f"original_audio_gain must be a finite number >= 0 (or None), got {original_audio_gain}"
        )
    sample_rate = int(sample_rate)
    info = info_for(video_path, info)
    start_q, end_q = exact(start), exact(start) + exact(duration)
    if end_q > exact(info.duration) + 1 / exact(info.fps):  # one frame of slack for rounding
        raise MediaError(
            f"{video_path.name} is {info.duration:.2f} s long; the span {start:.2f}-{float(end_q):.2f} s "
            "runs past its end: choose a shorter duration or an earlier start"
        )
    wave = waveform(audio)
    n = round(duration * sample_rate)
    wave = np.pad(wave[:, :n], ((0, 0), (0, max(0, n - wave.shape[1]))))  # the span decides the length
    if gain and info.has_audio:
        wave = np.clip(wave + gain * _original_audio(video_path, start_q, wave, sample_rate), -1.0, 1.0)

    def write(tmp: Path, plan: set[int] | None) -> None:
        options = {"movflags": "+faststart"}  # index first: browsers play it while it loads
        with open_input(video_path) as src, av.open(str(tmp), "w", format="mp4", options=options) as dst:
            vs = src.streams.video[video_stream(src, video_path).index]
            if plan is not None:
                video = _copied(src, vs, dst, plan, start_q)
            else:
                video = _reencoded(src, vs, dst, start_q, end_q, info.rotation, video_path)
            # The fast coder is ~4x quicker than FFmpeg's default and transparent at this bit rate.
            rate, layout = _aac_rate(sample_rate), channel_layout(wave.shape[0])
            astream = dst.add_stream("aac", rate=rate, layout=layout, options={"aac_coder": "fast"})
            astream.bit_rate = _AAC_BIT_RATE
            _interleave(dst, video, _aac_packets(astream, wave, sample_rate))

    def write_copy_or_encode(tmp: Path) -> None:
        plan = _copy_plan(video_path, start_q, end_q)
        if plan is not None:
            log.info("%s: copying %d video packets", video_path.name, len(plan))
            try:
                return write(tmp, plan)
            except av.FFmpegError as e:  # MP4 should take the stream but the muxer refused it
                log.warning("%s: stream copy failed (%s); re-encoding the span instead", video_path.name, e)
                tmp.unlink(missing_ok=True)
        log.info("%s: re-encoding the span with libx264", video_path.name)
        write(tmp, None)

    return atomic_write(out_path, write_copy_or_encode)


@functools.cache
def _mp4_codecs() -> frozenset[str]:
    with av.open(os.devnull, "w", format="mp4") as container:
        return frozenset(container.supported_codecs)


def _aac_rate(sample_rate: int) -> int:
    """`sample_rate` if AAC has it (16 kHz and 44.1 kHz do), else the next rate up it has."""
    rates = av.codec.Codec("aac", "w").audio_rates or (48_000,)
    higher = [r for r in rates if r >= sample_rate]
    return sample_rate if sample_rate in rates else min(higher, default=max(rates))


def _packets_from(
    container: av.container.InputContainer, stream: av.VideoStream, start: Fraction
) -> Iterator[tuple[Fraction, Fraction | None, av.Packet]]:
    """(pts time, dts time, packet) from the keyframe at or before `start`; times from the first frame."""
    t0 = stream.start_time or 0
    for attempt in range(2):
        seek(container, stream, start if attempt == 0 else None)
        first = True
        for packet in container.demux(stream):
            if packet.size == 0:  # the demuxer's end-of-stream marker
                continue
            if packet.pts is None:
                raise av.FFmpegError(0, "packet without pts")  # cannot be placed: encode instead
            time = Fraction(packet.pts - t0) * stream.time_base
            if first and attempt == 0 and not reaches(start, time, stream):
                break  # the seek overshot (inexact index): start again from the beginning
            first = False
            dts = None if packet.dts is None else Fraction(packet.dts - t0) * stream.time_base
            yield time, dts, packet
        else:
            return


def _copy_plan(path: Path, start: Fraction, end: Fraction) -> set[int] | None:
    """The pts of the packets to copy, or None when a copy cannot give exactly [start, end)."""
    with open_input(path) as src:
        vs = src.streams.video[video_stream(src, path).index]
        if vs.codec_context.name not in _mp4_codecs():
            return None
        chosen: set[int] = set()
        gap = False
        try:
            for time, dts, packet in _packets_from(src, vs, start):
                if reaches(time, start, vs) and not reaches(time, end, vs):
                    if (not chosen and not packet.is_keyframe) or gap:
                        return None  # a mid-GOP start, or a frame needing a reference outside the span
                    chosen.add(packet.pts)
                elif chosen:
                    gap = True
                if dts is not None and reaches(dts, end, vs):
                    break  # later packets decode later and show later still: all past the end
        except av.FFmpegError:
            return None
        return chosen or None


def _copied(
    src: av.container.InputContainer,
    vs: av.VideoStream,
    dst: av.container.OutputContainer,
    plan: set[int],
    start: Fraction,
) -> Iterator[av.Packet]:
    out = dst.add_stream_from_template(vs)  # also carries the display matrix (coded side data)

    def packets() -> Iterator[av.Packet]:
        shift, left = min(plan), len(plan)
        for _, _, packet in _packets_from(src, vs, start):
            if packet.pts in plan:
                packet.pts -= shift
                if packet.dts is not None:
                    packet.dts -= shift
                packet.stream = out
                yield packet
                left -= 1
                if left == 0:
                    return
        raise MediaError(f"{src.name} changed while it was being copied; try again")

    return packets()


def _reencoded(
    src: av.container.InputContainer,
    vs: av.VideoStream,
    dst: av.container.OutputContainer,
    start: Fraction,
    end: Fraction,
    rotation: int,
    path: Path,
) -> Iterator[av.Packet]:
    out = dst.add_stream("libx264", rate=vs.guessed_rate or 25, options=dict(_X264_OPTIONS))
    # yuv420p needs even sides; the source's time base keeps its timestamps (VFR stays VFR)
    out.width, out.height = max(2, vs.codec_context.width // 2 * 2), max(2, vs.codec_context.height // 2 * 2)
    out.pix_fmt = "yuv420p"
    out.codec_context.time_base = vs.time_base
    if rotation:
        out.set_display_rotation(rotation)

    def packets() -> Iterator[av.Packet]:
        shift = None
        for time, frame in frames_from(src, vs, start, path):
            if not reaches(time, start, vs):
                continue
            if reaches(time, end, vs):
                break
            shift = frame.pts if shift is None else shift
            picture = frame.reformat(width=out.width, height=out.height, format="yuv420p")
            picture.pts, picture.time_base = frame.pts - shift, vs.time_base
            yield from out.encode(picture)
        if shift is None:
            raise MediaError(
                f"{path.name} has no frames from {float(start):.2f} to {float(end):.2f} s; pick another span"
            )
        yield from out.encode()

    return packets()


def _aac_packets(stream: av.AudioStream, wave: np.ndarray, sample_rate: int) -> list[av.Packet]:
    # one frame in: PyAV's encoder cuts it into AAC's 1024-sample frames and converts the rate
    frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout=channel_layout(wave.shape[0]))
    frame.sample_rate, frame.pts, frame.time_base = sample_rate, 0, Fraction(1, sample_rate)
    return stream.encode(frame) + stream.encode()


def _interleave(
    dst: av.container.OutputContainer, video: Iterator[av.Packet], audio: list[av.Packet]
) -> None:
    """Mux in decoding-time order, so a player streaming the file finds sound and picture together."""
    pending = iter(audio)
    next_audio = next(pending, None)
    for packet in video:
        when = (packet.dts if packet.dts is not None else packet.pts) * packet.time_base
        while next_audio is not None and next_audio.dts * next_audio.time_base <= when:
            dst.mux(next_audio)
            next_audio = next(pending, None)
        dst.mux(packet)
    while next_audio is not None:
        dst.mux(next_audio)
        next_audio = next(pending, None)


def _original_audio(path: Path, start: Fraction, like: np.ndarray, sample_rate: int) -> np.ndarray:
    """The video's own soundtrack over the span, as float32 shaped like `like`, at `sample_rate`.

    Other channel counts are averaged to mono (then copied to both channels for stereo).

    Decoding starts a little before the span; the first decoded frame's timestamp places the
    (assumed gap-free) resampled samples, so WebM's millisecond timestamps cost up to ~1 ms of sync.
    A soundtrack that fails to decode is a MediaError: mixing half of it would pass unnoticed.
    """
    channels, n = like.shape
    out = np.zeros_like(like)
    offset, chunks, filled = None, [], 0
    reached = float(start)  # the end of the last frame decoded, for the error message
    with open_input(path) as container:
        vs = container.streams.video[video_stream(container, path).index]
        stream = audio_stream(container)
        if stream is None:  # the file changed since it was probed
            return out
        # audio and video share the container clock: place samples relative to the first video frame
        v0 = Fraction(vs.start_time or 0) * vs.time_base
        try:
            resampler = av.AudioResampler(format="fltp", rate=sample_rate)  # channels are matched below
            container.seek(max(0, math.floor((start + v0) / stream.time_base) - 1), stream=stream)
            for frame in container.decode(stream):
                if frame.pts is not None:
                    time = Fraction(frame.pts) * stream.time_base - v0
                    reached = float(time) + frame.samples / frame.sample_rate
                    if offset is None:
                        offset = round((time - start) * sample_rate)
                for piece in resampler.resample(frame):
                    chunks.append(piece.to_ndarray())
                    filled += piece.samples
                if offset is not None and offset + filled >= n:
                    break
            chunks.extend(piece.to_ndarray() for piece in resampler.resample(None))
        except FFMPEG_ERRORS as e:
            codec = stream.codec_context.name
            raise MediaError(
                f"{path.name}'s own soundtrack ({codec}) is damaged: it fails to decode near "
                f"{max(reached, 0.0):.2f} s ({e}); mix without it (original audio gain 0 / no "
                "--keep-original-audio), or repair the file by re-encoding its audio"
            ) from e
    if not chunks or offset is None:
        return out
    samples = np.concatenate(chunks, axis=1)[:, max(0, -offset) :]  # drop what precedes the span
    if samples.shape[0] != channels:  # plain average, not FFmpeg's -3 dB downmix: keeps the level
        samples = np.broadcast_to(samples.mean(axis=0, keepdims=True), (channels, samples.shape[1]))
    placed = samples[:, : n - max(0, offset)]
    out[:, max(0, offset) : max(0, offset) + placed.shape[1]] = placed
    return out
