"""Tiny synthetic media made with PyAV, for tests that need real files.

Every video frame is painted with its own index so a test can tell which
source frame a decoder picked: the index is a flat colour (red carries the low
four bits, green the high four, blue stays mid-grey), robust to lossy coding
and to scaling. A white block fills the top-left quarter when `marker=True`,
so rotation and flips can be checked too. `frame_index(rgb)` reads it back.

Keep sizes tiny (64x48, a few seconds): the machine is shared.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# container format and encoder per codec name accepted by make_video
_CODECS = {
    "h264": ("libx264", "mp4"),
    "vp9": ("libvpx-vp9", "webm"),
    "vp8": ("libvpx", "webm"),  # a codec MP4 cannot carry: forces re-encoding in mux
    "mpeg4": ("mpeg4", "mp4"),
    "hevc": ("libx265", "mp4"),
}
AUDIO_RATE = 48_000
TONE_HZ = 440.0


def frame_times(seconds: float, fps: int, vfr: bool = False) -> list[Fraction]:
    """Presentation times of the frames make_video writes, exactly.

    Constant rate: k / fps. VFR: the frame spacing alternates between half and
    one and a half nominal frames (so the mean rate is still `fps`).
    """
    n = round(seconds * fps)
    if not vfr:
        return [Fraction(k, fps) for k in range(n)]
    times, t = [], Fraction(0)
    for k in range(n):
        times.append(t)
        t += Fraction(1, 2 * fps) if k % 2 == 0 else Fraction(3, 2 * fps)
    return times


def frame_color(index: int) -> tuple[int, int, int]:
    """The flat RGB colour that encodes frame `index` (0..255)."""
    return (index % 16) * 16 + 8, (index // 16 % 16) * 16 + 8, 128


def frame_index(rgb: np.ndarray) -> int:
    """Read a frame index back from an (H, W, 3) or (3, H, W) uint8 picture.

    Looks at the bottom-right quarter only, which the marker never covers.
    """
    arr = np.asarray(rgb)
    if arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    h, w = arr.shape[:2]
    patch = arr[h // 2 + h // 8 :, w // 2 + w // 8 :].reshape(-1, 3).astype(np.float64)
    r, g = np.median(patch[:, 0]), np.median(patch[:, 1])
    return int(round((r - 8) / 16)) % 16 + 16 * (int(round((g - 8) / 16)) % 16)


def make_picture(index: int, width: int, height: int, marker: bool = False) -> np.ndarray:
    img = np.empty((height, width, 3), np.uint8)
    img[:] = frame_color(index)
    if marker:
        img[: height // 4, : width // 4] = 255
    return img


def make_video(
    path: str | Path,
    *,
    seconds: float = 2.0,
    fps: int = 25,
    size: tuple[int, int] = (64, 48),
    codec: str = "h264",
    audio: bool = False,
    rotation: int | None = None,
    vfr: bool = False,
    gop: int | None = None,
    bframes: int = 0,
    marker: bool = False,
    faststart: bool = False,
) -> Path:
    """Write a tiny video whose frame k shows `frame_color(k)`; returns the path.

    size is (width, height). rotation is PyAV's counter-clockwise display
    rotation written as the stream's display matrix (a phone's portrait clip is
    270). gop is the keyframe interval in frames (scene-cut keyframes are
    disabled for h264 so keyframes fall exactly every `gop` frames). audio adds
    a 440 Hz stereo AAC tone (mp4) or Opus (webm) as long as the video.
    """
    path = Path(path)
    encoder, fmt = _CODECS[codec]
    width, height = size
    times = frame_times(seconds, fps, vfr)
    # a time base fine enough for the VFR spacing (half frames) and exact for the CFR one
    time_base = Fraction(1, 2 * fps)
    with av.open(str(path), "w", format=fmt) as container:
        options: dict[str, str] = {}
        if encoder == "libx264":
            keyint = gop or 250
            options = {
                "crf": "4",
                "preset": "ultrafast" if bframes == 0 else "veryfast",
                "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes={bframes}",
            }
        elif encoder in ("libvpx-vp9", "libvpx"):
            options = {"deadline": "realtime", "cpu-used": "8", "crf": "4", "b": "0"}
        elif encoder == "libx265":
            options = {"preset": "ultrafast", "x265-params": "log-level=error"}
        stream = container.add_stream(encoder, rate=fps, options=options)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = time_base
        if encoder == "mpeg4":
            # fixed quantiser 2 (x FF_QP2LAMBDA): near-lossless, like ffmpeg's -q:v 2
            stream.codec_context.qscale = True
            stream.codec_context.global_quality = 2 * 118
        if gop and encoder != "libx264":
            stream.codec_context.gop_size = gop
        if encoder != "libx264":
            stream.codec_context.max_b_frames = bframes
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if faststart and fmt == "mp4":
            container.options["movflags"] = "faststart"

        astream = None
        if audio:
            acodec = "aac" if fmt == "mp4" else "libopus"
            arate = AUDIO_RATE
            astream = container.add_stream(acodec, rate=arate, layout="stereo")

        for k, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(make_picture(k, width, height, marker), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = int(t / time_base)
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())

        if astream is not None:
            _encode_tone(container, astream, math.ceil(seconds * AUDIO_RATE))
    return path


def make_moving_video(
    path: str | Path, *, seconds: float = 3.2, fps: int = 25, size: tuple[int, int] = (640, 360)
) -> Path:
    """An h264 clip of a drifting colour gradient with a bouncing disc and a sliding bar.

    Every frame differs from its neighbours everywhere, with edges and smooth ramps, so a
    one-frame shift or another resampling filter shows in every output picture.
    """
    path = Path(path)
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "12", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for k in range(round(seconds * fps)):
            phase = 2 * math.pi * k / (2 * fps)
            img = np.stack(
                [
                    127 + 120 * np.sin(xs / 37 + phase),
                    127 + 120 * np.cos(ys / 23 - 1.7 * phase),
                    (xs + ys + 9 * k) % 256,
                ],
                axis=-1,
            )
            cx, cy = width * (0.5 + 0.4 * math.sin(phase)), height * (0.5 + 0.4 * math.cos(1.3 * phase))
            img[(xs - cx) ** 2 + (ys - cy) ** 2 < (height / 6) ** 2] = (250, 250, 40)
            bar = int(k * 7) % width
            img[:, bar : bar + 12] = 0
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            frame.pts, frame.time_base = k, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def tone(n: int, rate: int = AUDIO_RATE, channels: int = 2, hz: float = TONE_HZ) -> np.ndarray:
    """(channels, n) float32 sine at 0.5 amplitude."""
    t = np.arange(n) / rate
    wave = (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return np.repeat(wave[None], channels, axis=0)


def _encode_tone(container: av.container.OutputContainer, astream: av.audio.AudioStream, n: int) -> None:
    samples = tone(n, astream.rate, 2)
    chunk = 1024
    for i in range(0, n, chunk):
        piece = np.ascontiguousarray(samples[:, i : i + chunk])
        frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout="stereo")
        frame.sample_rate = astream.rate
        frame.pts = i
        frame.time_base = Fraction(1, astream.rate)
        container.mux(astream.encode(frame))
    container.mux(astream.encode())


def make_audio_only(path: str | Path, *, seconds: float = 1.0) -> Path:
    """A tone with no video: AAC in .m4a/.mp4, PCM in .wav, FLAC in .flac."""
    path = Path(path)
    suffix = path.suffix.lower()
    fmt, codec = {".wav": ("wav", "pcm_s16le"), ".flac": ("flac", "flac")}.get(suffix, ("mp4", "aac"))
    with av.open(str(path), "w", format=fmt) as container:
        astream = container.add_stream(codec, rate=AUDIO_RATE, layout="stereo")
        _encode_tone(container, astream, round(seconds * AUDIO_RATE))
    return path


def make_image(path: str | Path, *, size: tuple[int, int] = (64, 48)) -> Path:
    """One PNG picture (frame 0's colour with the marker)."""
    path = Path(path)
    width, height = size
    with av.open(str(path), "w", format="image2", options={"update": "1"}) as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height = width, height
        stream.pix_fmt = "rgb24"
        frame = av.VideoFrame.from_ndarray(make_picture(0, width, height, marker=True), format="rgb24")
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def damage_audio(src: str | Path, dst: str | Path, *, after: float = 0.0) -> Path:
    """Copy a file with the payload of its audio packets from `after` seconds on zeroed, as a bad
    disk or a broken transfer would leave it: the container and the video stay intact, and the
    audio decoder rejects those packets (AAC refuses all-zero frames)."""
    data = bytearray(Path(src).read_bytes())
    with av.open(str(src)) as container:
        stream = container.streams.audio[0]
        for packet in container.demux(stream):
            if packet.size and packet.pts is not None and packet.pts * stream.time_base >= after:
                data[packet.pos : packet.pos + packet.size] = bytes(packet.size)
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def truncate(src: str | Path, dst: str | Path, fraction: float = 0.5) -> Path:
    """Copy the first `fraction` of a file's bytes, as an interrupted download would leave it."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)
