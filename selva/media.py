"""Video in, audio out: probe a video, decode its frames small, write audio files (PyAV).

Times follow selva/containers.py: seconds from the video stream's first frame, exact
rationals inside, except where read_frames picks frames: there it does the reference
loader's float64 arithmetic (see `read_frames`). The mp4 with the new soundtrack is written
by selva/mux.py.

Rotation is PyAV's convention: the counter-clockwise degrees (0, 90, 180, 270)
the stored picture turns for display, from the stream's display matrix. A phone
held upright records landscape pictures with rotation 270.

Every failure is a `MediaError` whose message names the problem and the fix,
and no function leaves a partial file: output goes to a hidden temporary file
in the destination folder and is renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from selva import device_frames
from selva.containers import (
    atomic_write,
    audio_stream,
    channel_layout,
    exact,
    ffmpeg_reason,
    frames_from,
    not_media,
    open_input,
    seek,
    video_stream,
    waveform,
)
from selva.spec import MediaError

log = logging.getLogger(__name__)

MAX_SIDE = 8192  # 8K DCI; larger pictures are almost surely a broken header, and too slow anyway
_EPS = 1e-6  # same margin as selva.sequence, so frame counts agree with the sequence lengths
_SQUASH_BATCH_BYTES = 32 << 20  # full-size RGB pictures held before a resize: 5 at 1080p, 1 at 4K
_MIN_VIDEO_SECONDS = Fraction(1, 25)  # shorter than one 25 fps frame: no picture SelVA could use
_HASH_CHUNK = 1 << 20
_AUDIO_FORMATS = {".flac": ("flac", "flac"), ".wav": ("wav", "pcm_s16le")}


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` learns about a video without decoding more than its first frame."""

    path: Path
    duration: float  # seconds of the video stream, from its first frame to the end of its last
    fps: float  # mean frame rate
    width: int  # stored picture size, before rotation
    height: int
    rotation: int  # counter-clockwise display rotation: 0, 90, 180 or 270
    has_audio: bool
    video_codec: str
    size_bytes: int
    container: str  # FFmpeg demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    frames: int | None  # frame count when the container records it
    audio_codec: str | None = None
    audio_sample_rate: int | None = None

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as shown to a viewer, after rotation."""
        turned = self.rotation in (90, 270)
        return (self.height, self.width) if turned else (self.width, self.height)


# -- probing ------------------------------------------------------------------------------------


def probe(path: str | Path) -> VideoInfo:
    """Check that `path` is a readable video and describe it.

    Cheap checks run before any decoding: the file exists and is not empty,
    FFmpeg recognises the container, there is a video stream that is not a
    still image, the picture size is sane. Then the first frame is decoded
    (proving the stream decodes and giving the display matrix), and for files
    with an index the last frame's bytes must lie inside the file (catching
    interrupted downloads whose header promises more than is there).

    FFmpeg finds some format in most random data (an AVI with no streams, lyrics
    subtitles, a few milliseconds of CD+G graphics), so a file only counts as
    media when what it holds decodes: otherwise the error says it is not a media file.
    Without video, the message says what the file holds (audio only, subtitles only).

    Nothing is cached, so each call costs an open and a first-frame decode (~0.2 s at 1080p):
    probe a clip once and hand the result to `read_frames` and `mux` as `info=`.
    """
    path = Path(path)
    size = _check_file(path)
    with open_input(path) as container:
        stream = video_stream(container, path)
        tb = stream.time_base
        width, height = stream.codec_context.width, stream.codec_context.height
        if width <= 0 or height <= 0:
            raise not_media(path, f"its {stream.codec_context.name} video stream has no picture size")
        if max(width, height) > MAX_SIDE:
            raise MediaError(
                f"{path.name} is {width}x{height}, larger than 8K ({MAX_SIDE} px a side); "
                "downscale it (e.g. to 1920 px wide) and try again"
            )
        entries = stream.index_entries
        if len(entries) and entries[len(entries) - 1].pos + entries[len(entries) - 1].size > size:
            raise MediaError(
                f"{path.name} is truncated: its index points past the end of the file's {size} bytes; "
                "download or copy it again"
            )
        frames = stream.frames or None
        if frames == 1:
            raise MediaError(f"{path.name} holds a single picture; SelVA needs a video (at least 0.64 s)")
        rotation = _first_frame_rotation(container, stream, path)
        # Matroska/WebM and raw streams keep no stream duration: read the tail of the stream
        duration = Fraction(stream.duration) * tb if stream.duration else _demuxed_duration(container, stream)
        if duration <= 0:
            raise MediaError(f"{path.name} has a video stream with no frames; re-export it")
        if duration < _MIN_VIDEO_SECONDS:
            # what FFmpeg makes of a few stray bytes it takes for a headerless format (CD+G graphics)
            raise not_media(path, f"{container.format.name} video of {float(duration) * 1000:.0f} ms")
        # frames / duration where counted (true mean for VFR); FFmpeg's guess otherwise, as MPEG-TS
        # H.264 reports the field rate (50) as its average rate
        fps = Fraction(frames) / duration if frames else (stream.guessed_rate or stream.average_rate or 25)
        audio = audio_stream(container)
        return VideoInfo(
            path=path,
            duration=float(duration),
            fps=float(fps),
            width=width,
            height=height,
            rotation=rotation,
            has_audio=audio is not None,
            video_codec=stream.codec_context.name,
            size_bytes=size,
            container=container.format.name,
            frames=frames,
            audio_codec=audio.codec_context.name if audio is not None else None,
            audio_sample_rate=audio.codec_context.sample_rate if audio is not None else None,
        )


def info_for(path: Path, info: VideoInfo | None) -> VideoInfo:
    """`info` when the caller already probed `path` (opening it costs a first-frame decode), else a probe."""
    if info is None:
        return probe(path)
    if info.path != path and not _same_file(info.path, path):
        raise ValueError(f"info describes {info.path}, not {path}: pass what probe({path}) returned")
    return info


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # either is missing: the open that follows says so
        return False


def _check_file(path: Path) -> int:
    if not path.exists():
        raise MediaError(f"there is no file at {path}; check the path and that the file was uploaded")
    if not path.is_file():
        raise MediaError(f"{path} is a folder or a device, not a file; pick a video file")
    if not os.access(path, os.R_OK):
        raise MediaError(f"{path.name} cannot be read (permission denied); check the file's permissions")
    size = path.stat().st_size
    if size == 0:
        raise MediaError(f"{path.name} is empty (0 bytes); the upload or copy failed, try it again")
    return size


def _demuxed_duration(container: av.container.InputContainer, stream: av.VideoStream) -> Fraction:
    """End of the last packet minus the first frame's time, reading as little as possible."""
    t0 = stream.start_time or 0
    end = t0
    if container.duration:  # jump close to the end (the last keyframe before it), then demux the rest
        seek(container, stream, Fraction(container.duration, av.time_base))
    nominal = round(1 / ((stream.guessed_rate or 25) * stream.time_base))  # for packets without a duration
    for packet in container.demux(stream):
        if packet.pts is not None:
            end = max(end, packet.pts + (packet.duration or nominal))
    return Fraction(end - t0) * stream.time_base


def _first_frame_rotation(container: av.container.InputContainer, stream: av.VideoStream, path: Path) -> int:
    # FFmpeg 7+ copies the stream's display matrix onto every decoded frame; PyAV 18 reads it
    # from frames (VideoFrame.rotation), not from streams, so decode one.
    try:
        for frame in container.decode(stream):
            return int(frame.rotation) % 360
    except av.FFmpegError as e:
        raise MediaError(
            f"{path.name}'s video stream cannot be decoded ({ffmpeg_reason(e)}); re-export it as MP4"
        ) from e
    raise MediaError(f"{path.name}'s video stream yields no pictures; the file is damaged, re-export it")


# -- decoding -----------------------------------------------------------------------------------


def read_frames(
    path: str | Path,
    *,
    start: float = 0.0,
    duration: float,
    fps: float = 25,
    size: int = 224,
    info: VideoInfo | None = None,
    skip: int = 0,
) -> torch.Tensor:
    """Frames of [start, start + duration] at `fps`, squashed to size x size, as uint8 (T, 3, size, size).

    The frames the reference SelVA loader gives (its demo's `load_video`), turned upright:

    - T = floor(fps * duration) (with the 1e-6 margin of selva.sequence, so 8.00 s at 25 fps is 200).
    - Output frame k is the first decoded frame whose time is >= target k, compared in float64
      as the reference does: target 0 is `start`, each next one adds 1 / fps to a running sum.
      That sum drifts above k / fps (at 25 fps from k = 18 on), so where a source frame falls
      exactly on a target, the next frame is taken. Slower sources repeat frames; variable
      frame rates are followed.
    - Pictures are converted to RGB at full size by PyAV and squashed with torch's antialiased
      bicubic resize on uint8, which is what torchvision's `v2.Resize((size, size), BICUBIC)`
      runs on a uint8 tensor on the CPU; then they are rotated upright (the reference ignores
      rotation). Only one full-size picture is held at a time.

    Past the last frame, the last frame stays on screen until the stream's end (the reference
    returns fewer frames there); a span beyond that raises a MediaError giving the video's
    length. `info` is what `probe(path)` returned, when the caller has it: the file is then not
    probed again. `skip` leaves out the span's first frames but keeps their place in the running
    sum, so a span read in pieces gets exactly the frames one read of it gets.
    """
    blocks = list(_frames(path, start=start, duration=duration, fps=fps, size=size, info=info, skip=skip))
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks)


def _frames(
    path: str | Path,
    *,
    start: float,
    duration: float,
    fps: float,
    size: int,
    info: VideoInfo | None,
    skip: int,
    block: int | None = None,
    device: torch.device | None = None,
) -> Iterator[torch.Tensor]:
    """Checks the span, then decodes it lazily in blocks (one block of everything by default)."""
    if not (duration > 0 and fps > 0 and start >= 0 and 1 <= size <= MAX_SIDE):
        raise MediaError(
            f"cannot read frames with start={start}, duration={duration}, fps={fps}, size={size}: "
            "start must be >= 0, duration and fps > 0, size between 1 and 8192"
        )
    path = Path(path)
    info = info_for(path, info)
    count = math.floor(fps * duration + _EPS)
    if count == 0:
        raise MediaError(f"a {duration} s span is shorter than one frame at {fps} fps; ask for a longer span")
    if not 0 <= skip < count:
        raise MediaError(f"cannot skip {skip} of the span's {count} frames")
    targets = target_times(start, fps, count)[skip:]
    count = len(targets)
    if targets[-1] >= info.duration:
        raise MediaError(
            f"{path.name} is {info.duration:.2f} s long, so it has no picture at {targets[-1]:.2f} s "
            f"for the span {start:.2f}-{start + duration:.2f} s; choose a shorter span or an earlier start"
        )

    return _decode_blocks(path, info, targets, size, block or count, device)


def iter_frames(
    path: str | Path,
    *,
    start: float = 0.0,
    duration: float,
    fps: float = 25,
    size: int = 224,
    info: VideoInfo | None = None,
    skip: int = 0,
    block: int,
    device: torch.device | str | None = None,
) -> Iterator[torch.Tensor]:
    """`read_frames`' frames in consecutive uint8 blocks of `block` frames (the last may be shorter).

    One decoder pass over the span; each block is yielded as soon as its last frame is squashed,
    so a consumer can work on it while the next one decodes, and only one block is held here.
    Bad arguments and spans past the video's end raise here, before anything is decoded.

    `device` (None: the CPU path above) squashes on that device instead: the full-size RGB
    pictures go up as uint8 and `selva.device_frames` resizes them there, so the blocks live
    on `device`. Off the CPU its kernels run while the next pictures decode; the frames are
    the CPU path's (`device_frames` does the same fixed-point arithmetic).
    """
    if block < 1:
        raise MediaError(f"frames come in blocks of at least 1, not {block}")
    span = {"start": start, "duration": duration, "fps": fps, "size": size, "info": info, "skip": skip}
    return _frames(path, **span, block=block, device=None if device is None else torch.device(device))


def _decode_blocks(
    path: Path, info: VideoInfo, targets: list[float], size: int, block: int, device: torch.device | None
) -> Iterator[torch.Tensor]:
    count = len(targets)
    squash = _Squasher(count, size, info.rotation, block, device)
    k, last, last_end = 0, None, 0.0
    with open_input(path) as container:
        stream = container.streams.video[video_stream(container, path).index]
        stream.thread_type = "AUTO"  # frame threads: decoding dominates this function
        nominal = 1 / exact(info.fps)
        for time, frame in frames_from(container, stream, exact(targets[0]), path):
            # the double nearest the exact time: PyAV's frame.time (pts * num / den in doubles), as
            # the reference compares it, when the stream starts at 0
            seconds = float(time)
            last = frame
            last_end = float(time + (Fraction(frame.duration or 0) * stream.time_base or nominal))
            if seconds >= targets[k]:
                first = k
                while k < count and seconds >= targets[k]:
                    k += 1
                squash.add(frame, first, k)
                yield from squash.take()
                if k == count:
                    return
    # the stream ended: its last picture stays on screen until that frame's end
    if last is not None and targets[k] < last_end:
        first = k
        while k < count and targets[k] < last_end:
            k += 1
        squash.add(last, first, k)
        yield from squash.take()
    if k < count:
        raise MediaError(
            f"{path.name} stops at {last_end:.2f} s although it says it lasts {info.duration:.2f} s "
            "(a truncated or damaged file?); re-export it or choose an earlier span"
        )


def target_times(start: float, fps: float, count: int) -> list[float]:
    """The times read_frames picks frames for: the reference loader's running float64 sum."""
    step, times, t = 1 / fps, [], float(start)
    for _ in range(count):
        times.append(t)
        t += step
    return times


class _Squasher:
    """Squashes decoded frames to size x size (full-size RGB from PyAV, torch's antialiased bicubic on
    uint8), turned upright, into consecutive blocks of `block` output frames; `take()` hands over the
    blocks completed so far.

    Pictures wait in batches of up to _SQUASH_BATCH_BYTES of RGB: resized one at a time between
    decoded frames, torch's worker threads and FFmpeg's decoder threads kept waking each other
    (on 2 cores, 8 s at 25 fps cost 1.09 s of CPU instead of 0.83 s at 360p, 4.2 s instead of
    3.5 s at 1080p). A batch gives the same pictures as one at a time. A batch is also resized
    as soon as it holds a block's last frame, so no finished block waits for the next batch.

    With a `device`, a batch goes up as uint8 and `selva.device_frames` squashes it there (its
    kernels queued, so a GPU works on one batch while the next decodes); blocks live on `device`.
    """

    def __init__(self, count: int, size: int, rotation: int, block: int, device: torch.device | None) -> None:
        self.count, self.size, self.rotation, self.block = count, size, rotation, block
        self.device = device
        self.offset = 0  # the span index of self.out[0]
        self.out = self._new_block()
        self.ready: list[torch.Tensor] = []
        self.pending: list[tuple[int, int]] = []  # (first, end) of each picture in self.pictures
        self.pictures: np.ndarray | None = None  # (n, H, W, 3) RGB, reused by every batch
        self.bytes = 0

    def _new_block(self) -> torch.Tensor:
        n = min(self.block, self.count - self.offset)
        return torch.empty((n, 3, self.size, self.size), dtype=torch.uint8, device=self.device)

    def add(self, frame: av.VideoFrame, first: int, end: int) -> None:
        """Output frames first..end-1 (span indices) show `frame`."""
        # One swscale thread: its default, a thread per CPU for every picture, made decoding plus
        # conversion of 8 s at 360p take 0.32 s instead of 0.06 s for decoding alone on a 16-CPU GPU
        # host; on 2 cores one thread is also the fastest. The pixels are the same.
        rgb = frame.to_ndarray(format="rgb24", threads=1)  # (H, W, 3)
        if self.pictures is None or self.pictures.shape[1:] != rgb.shape:
            if self.pending:  # the picture size changed mid-span: resize what came before first
                self._flush()
            # One batch buffer for the whole span: a fresh one per batch costs a page fault for
            # every 4 KB of it (np.stack of 40 pictures at 360p took 0.15 s of 0.55 s on 2 cores).
            capacity = max(1, -(-_SQUASH_BATCH_BYTES // rgb.nbytes))
            self.pictures = np.empty((capacity, *rgb.shape), dtype=np.uint8)
        self.pictures[len(self.pending)] = rgb
        self.pending.append((first, end))
        self.bytes += rgb.nbytes
        full = len(self.pending) == len(self.pictures)
        if full or self.bytes >= _SQUASH_BATCH_BYTES or end >= self.offset + len(self.out):
            self._flush()

    def take(self) -> list[torch.Tensor]:
        ready, self.ready = self.ready, []
        return ready

    def _flush(self) -> None:
        # (N, 3, H, W) view of (N, H, W, 3) pixels: channels-last, the layout torch's uint8 kernels take
        pictures = torch.from_numpy(self.pictures[: len(self.pending)])  # (N, H, W, 3)
        if self.device is not None:
            # A copy from pageable memory has left the buffer when .to returns: it can be refilled.
            small = device_frames.squash_frames(
                pictures.to(self.device), self.size, rotation=self.rotation, fixed_point=True
            )
        else:
            # (N, 3, H, W) view of (N, H, W, 3) pixels: channels-last, the layout torch's uint8 kernels take
            batch = pictures.permute(0, 3, 1, 2)
            small = F.interpolate(
                batch, size=(self.size, self.size), mode="bicubic", align_corners=False, antialias=True
            )
            if self.rotation:
                small = torch.rot90(small, k=self.rotation // 90, dims=(2, 3))  # counter-clockwise
        for picture, (first, end) in zip(small, self.pending, strict=True):
            while first < end:  # a held picture may run on into the next block
                stop = min(end, self.offset + len(self.out))
                self.out[first - self.offset : stop - self.offset] = picture
                first = stop
                if stop == self.offset + len(self.out):
                    self.ready.append(self.out)
                    self.offset = stop
                    if self.offset < self.count:
                        self.out = self._new_block()
        self.pending, self.bytes = [], 0


# -- audio --------------------------------------------------------------------------------------


def write_audio(path: str | Path, audio: torch.Tensor | np.ndarray, sample_rate: int) -> Path:
    """Write (N,) or (C, N) float audio in [-1, 1] as 16-bit FLAC or WAV, picked by the suffix."""
    path = Path(path)
    if path.suffix.lower() not in _AUDIO_FORMATS:
        raise MediaError(f"cannot write audio as {path.name}: use a .flac or .wav file name")
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise MediaError(f"sample_rate must be a positive whole number of Hz, got {sample_rate}")
    fmt, codec = _AUDIO_FORMATS[path.suffix.lower()]
    wave = waveform(audio)
    pcm = np.round(wave.T * 32767).astype(np.int16).reshape(1, -1)  # packed s16: samples interleaved

    def write(tmp: Path) -> None:
        with av.open(str(tmp), "w", format=fmt) as container:
            stream = container.add_stream(codec, rate=int(sample_rate), layout=channel_layout(wave.shape[0]))
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout=channel_layout(wave.shape[0]))
            frame.sample_rate, frame.pts = int(sample_rate), 0
            container.mux(stream.encode(frame))
            container.mux(stream.encode())

    return atomic_write(path, write)


def content_hash(path: str | Path) -> str:
    """A fast key for caching: blake2b-128 of the size, the first MiB and the last MiB, in hex.

    Reads at most 2 MiB, so it is instant for any video. It ignores the file's name and
    modification time (a copy hashes the same) but also any edit confined to the middle of a
    file larger than 2 MiB that keeps its size, which re-encoding or trimming never does.
    """
    path = Path(path)
    size = _check_file(path)
    digest = hashlib.blake2b(digest_size=16, person=b"selva-media-v1")
    digest.update(size.to_bytes(8, "little"))
    with path.open("rb") as f:
        digest.update(f.read(_HASH_CHUNK))
        if size > _HASH_CHUNK:
            f.seek(max(_HASH_CHUNK, size - _HASH_CHUNK))
            digest.update(f.read(_HASH_CHUNK))
    return digest.hexdigest()


__all__ = ["MAX_SIDE", "VideoInfo", "content_hash", "info_for", "probe", "read_frames", "write_audio"]
