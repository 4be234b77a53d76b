"""selva.media: probe, read_frames, write_audio, mux, content_hash on tiny synthetic files."""

import dataclasses
import logging
import math
import os
import random
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from media_factory import (
    damage_audio,
    frame_index,
    frame_times,
    make_audio_only,
    make_image,
    make_moving_video,
    make_video,
    truncate,
)

import selva.mux as mux_module
from selva import delivery, media, tracks
from selva.mux import mux
from selva.spec import MediaError

SR = 16_000

# name -> make_video arguments; built once per session, on first use
SOURCES = {
    "h264_audio.mp4": dict(seconds=2, fps=25, audio=True, gop=10),
    "h264_8s.mp4": dict(seconds=8, fps=25, gop=50),
    "h264_10fps.mp4": dict(seconds=2, fps=10),
    "vfr.mp4": dict(seconds=2, fps=10, vfr=True),
    "bframes.mp4": dict(seconds=2, fps=25, bframes=2, gop=12),
    "rot90.mp4": dict(seconds=1, fps=25, rotation=90, marker=True, gop=10),
    "rot180.mp4": dict(seconds=1, fps=25, rotation=180, marker=True),
    "rot270.mp4": dict(seconds=1, fps=25, rotation=270, marker=True, gop=10),
    "vp9_audio.webm": dict(seconds=2, fps=25, codec="vp9", audio=True, gop=25),
    "vp8.webm": dict(seconds=1, fps=25, codec="vp8"),
    "mpeg4.mp4": dict(seconds=1, fps=25, codec="mpeg4"),
    "faststart.mp4": dict(seconds=2, fps=25, faststart=True),
    "one_frame.mp4": dict(seconds=0.04, fps=25),
    "too_big.mp4": dict(seconds=0.08, fps=25, size=(8200, 16)),
}


@pytest.fixture(scope="session")
def src(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media_src")

    def get(name: str) -> Path:
        path = folder / name
        if not path.exists():
            make_video(path, **SOURCES[name])
        return path

    return get


def indices(frames: torch.Tensor) -> list[int]:
    return [frame_index(f.numpy()) for f in frames]


def video_packets(path: Path) -> list[av.Packet]:
    with av.open(str(path)) as c:
        return [p for p in c.demux(c.streams.video[0]) if p.size]


def decoded_indices(path: Path) -> list[int]:
    with av.open(str(path)) as c:
        return [frame_index(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def stream_seconds(stream: av.stream.Stream) -> float:
    return float(stream.duration * stream.time_base)


def decode_audio(path: Path) -> tuple[np.ndarray, int]:
    with av.open(str(path)) as c:
        rate = c.streams.audio[0].rate
        return np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1), rate


def tone_fit(x: np.ndarray, rate: int, hz: float = 440.0) -> tuple[float, float]:
    """Amplitude and phase (radians) of the `hz` sine in x, by least squares against sin/cos."""
    t = np.arange(x.shape[-1]) / rate
    a = x @ np.sin(2 * np.pi * hz * t) * 2 / len(t)
    b = x @ np.cos(2 * np.pi * hz * t) * 2 / len(t)
    return float(np.hypot(a, b)), float(np.arctan2(b, a))


def silence(seconds: float, channels: int = 1) -> np.ndarray:
    return np.zeros((channels, round(seconds * SR)), np.float32)


# -- probe ----------------------------------------------------------------------------------------


def test_probe_h264_with_audio(src):
    path = src("h264_audio.mp4")
    info = media.probe(path)
    assert info.path == path
    assert info.duration == pytest.approx(2.0)
    assert info.fps == pytest.approx(25.0)
    assert (info.width, info.height, info.rotation) == (64, 48, 0)
    assert info.display_size == (64, 48)
    assert info.has_audio and info.audio_codec == "aac" and info.audio_sample_rate == 48_000
    assert info.video_codec == "h264"
    assert info.size_bytes == path.stat().st_size
    assert info.frames == 50
    assert "mp4" in info.container


def test_probe_webm_without_stream_duration(src):
    # Matroska keeps no per-stream duration: probe demuxes the tail instead
    info = media.probe(src("vp9_audio.webm"))
    assert info.video_codec == "vp9" and info.audio_codec == "opus"
    assert info.duration == pytest.approx(2.0, abs=0.001)
    assert info.frames is None


def test_probe_without_audio(src):
    info = media.probe(src("h264_10fps.mp4"))
    assert not info.has_audio and info.audio_codec is None
    assert info.fps == pytest.approx(10.0)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_probe_rotation(src, rotation):
    info = media.probe(src(f"rot{rotation}.mp4"))
    assert info.rotation == rotation
    assert info.display_size == ((48, 64) if rotation in (90, 270) else (64, 48))


def test_probe_odd_file_name(src, tmp_path):
    path = tmp_path / "clip with spaces é.mp4"
    path.write_bytes(src("h264_10fps.mp4").read_bytes())
    assert media.probe(str(path)).duration == pytest.approx(2.0)


SUBTITLES = "1\n00:00:00,000 --> 00:00:01,000\nA dog barks.\n\n2\n00:00:01,000 --> 00:00:02,000\nWind.\n"


@pytest.mark.parametrize(
    "case, problem, fix",
    [
        ("missing", "no file at", "check the path"),
        ("folder", "is a folder", "pick a video file"),
        ("empty", "empty (0 bytes)", "try it again"),
        ("garbage", "not a media file", "convert it to MP4"),
        ("truncated", "not a media file", "convert it to MP4"),
        ("truncated_faststart", "truncated", "download or copy it again"),
        ("audio_only", "only audio", "pick the video file"),
        ("subtitles_only", "has no video stream", "pick a video file"),
        ("image", "still image", "needs a video"),
        ("one_frame", "single picture", "needs a video"),
        ("too_big", "8200x16, larger than 8K", "downscale"),
    ],
)
def test_probe_errors(src, tmp_path, case, problem, fix):
    path = {
        "missing": lambda: tmp_path / "nope.mp4",
        "folder": lambda: tmp_path,
        "empty": lambda: (tmp_path / "empty.mp4", (tmp_path / "empty.mp4").write_bytes(b""))[0],
        "garbage": lambda: (tmp_path / "x.mp4", (tmp_path / "x.mp4").write_bytes(blob(7, 5000)))[0],
        "truncated": lambda: truncate(src("h264_audio.mp4"), tmp_path / "half.mp4"),
        "truncated_faststart": lambda: truncate(src("faststart.mp4"), tmp_path / "half.mp4"),
        "audio_only": lambda: make_audio_only(tmp_path / "a.m4a"),
        "subtitles_only": lambda: (tmp_path / "s.srt", (tmp_path / "s.srt").write_text(SUBTITLES))[0],
        "image": lambda: make_image(tmp_path / "still.png"),
        "one_frame": lambda: src("one_frame.mp4"),
        "too_big": lambda: src("too_big.mp4"),
    }[case]()
    with pytest.raises(MediaError) as err:
        media.probe(path)
    assert problem in str(err.value) and fix in str(err.value)


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """The paths av.open is asked to open from now on (writes included)."""
    paths, real_open = [], av.open

    def counting_open(file, *args, **kwargs):
        paths.append(Path(str(file)).name)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(av, "open", counting_open)
    return paths


def test_probe_opens_the_file_every_time(src, opened):
    # no cache: an edited file cannot be described by a stale result
    path = src("h264_10fps.mp4")
    opened.clear()
    assert media.probe(path) == media.probe(path)
    assert opened == [path.name, path.name]


def blob(seed: int, size: int, magic: bytes = b"") -> bytes:
    return magic + random.Random(seed).randbytes(size)


# Real container openings with random bytes after them, so FFmpeg's probes get past the magic.
MAGIC = {
    "none": b"",
    "mp4 ftyp box": b"\0\0\0\x18ftypisom\0\0\2\0isomiso2",
    "avi": b"RIFF\xa0\x0f\0\0AVI LIST",
    "wav": b"RIFF\xa0\x0f\0\0WAVEfmt ",
    "ogg": b"OggS\0\2" + bytes(8),
    "matroska EBML": b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01",
    "ID3 tag": b"ID3\3\0\0\0\0\0\0",
}


@pytest.mark.parametrize("magic", MAGIC.values(), ids=MAGIC.keys())
def test_probe_random_bytes_are_not_media(tmp_path, magic):
    # FFmpeg takes some of these for an empty AVI, lyrics subtitles, a few ms of CD+G karaoke
    # graphics or an audio stream; none of that decodes into real media
    path = tmp_path / "x.mp4"
    for size in (64, 1000, 5000):
        for seed in range(200):
            path.write_bytes(blob(seed, size, magic))
            with pytest.raises(MediaError) as err:
                media.probe(path)
            assert "is not a media file FFmpeg can read" in str(err.value), (seed, size, str(err.value))


# -- read_frames ----------------------------------------------------------------------------------


def test_read_frames_uses_the_info_it_is_given(src, opened):
    path = src("h264_8s.mp4")
    info = media.probe(path)
    opened.clear()
    frames = media.read_frames(path, start=1.0, duration=0.4, size=16, info=info)
    assert indices(frames) == reference_picks(frame_times(8, 25), start=1.0, fps=25, count=10)
    assert opened == [path.name]  # decoding only; probing would open it once more
    opened.clear()
    media.read_frames(path, start=1.0, duration=0.4, size=16)
    assert opened == [path.name, path.name]
    # the given description is believed, not checked against the file again
    short = dataclasses.replace(info, duration=1.0)
    with pytest.raises(MediaError, match=r"is 1\.00 s long"):
        media.read_frames(path, start=0.8, duration=0.4, info=short)


def test_read_frames_refuses_another_files_info(src):
    info = media.probe(src("h264_10fps.mp4"))
    with pytest.raises(ValueError, match="info describes"):
        media.read_frames(src("h264_8s.mp4"), duration=1.0, info=info)
    # the same file named another way is fine
    relative = Path(os.path.relpath(info.path))
    assert media.read_frames(relative, duration=0.2, size=8, info=info).shape == (5, 3, 8, 8)


def reference_picks(times: list[Fraction], *, start: float, fps: float, count: int) -> list[int]:
    """The source frame the reference loader takes for each output frame.

    It walks a float64 sum from `start` by 1 / fps and takes the first frame whose time (a
    double) is >= it; past the last frame, read_frames holds the last one.
    """
    picks, target = [], float(start)
    for _ in range(count):
        picks.append(next((i for i, t in enumerate(times) if float(t) >= target), len(times) - 1))
        target += 1 / fps
    return picks


def test_read_frames_eight_seconds_is_200_frames(src):
    frames = media.read_frames(src("h264_8s.mp4"), duration=8.0, fps=25, size=32)
    assert frames.shape == (200, 3, 32, 32) and frames.dtype == torch.uint8
    # 0.04 added up in doubles overshoots 6/25 and, from 18/25 on, every k/25: there the next
    # frame is taken, as the reference does; the sum passes the last frame (7.96 s), which is held
    expected = [*range(6), 7, *range(7, 18), *range(19, 200), 199]
    assert indices(frames) == expected
    assert expected == reference_picks(frame_times(8, 25), start=0, fps=25, count=200)


def test_read_frames_default_size_and_span(src):
    frames = media.read_frames(src("h264_8s.mp4"), start=6.0, duration=1.0)
    assert frames.shape == (25, 3, 224, 224)
    assert indices(frames) == reference_picks(frame_times(8, 25), start=6.0, fps=25, count=25)


def test_read_frames_seeks_to_start_mid_gop(src):
    # start 1.24 s = frame 31, inside the GOP that starts at frame 0 (gop 50)
    frames = media.read_frames(src("h264_8s.mp4"), start=1.24, duration=0.4, size=16)
    assert indices(frames)[0] == 31
    assert indices(frames) == reference_picks(frame_times(8, 25), start=1.24, fps=25, count=10)


@pytest.mark.parametrize("name, vfr", [("h264_10fps.mp4", False), ("vfr.mp4", True)])
def test_read_frames_picks_first_frame_at_or_after_each_target(src, name, vfr):
    times = frame_times(2, 10, vfr)
    start, duration = 0.1, 1.6
    frames = media.read_frames(src(name), start=start, duration=duration, fps=25, size=16)
    expected = reference_picks(times, start=start, fps=25, count=math.floor(25 * duration))
    assert indices(frames) == expected
    assert len(set(expected)) < len(expected)  # the slower source repeats frames


def squash(rgb: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) uint8 as the reference's v2.Resize((size, size), BICUBIC)
    does it on a uint8 tensor on the CPU: torch's antialiased bicubic on the uint8 pixels."""
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)[0]


def reference_sync_frames(path: Path, duration: float) -> tuple[torch.Tensor, list[int]]:
    """The reference demo's sync frames (load_video: read_frames at 25 fps, then the resize) and,
    for each, the index of the source frame it came from; written out here from its rules."""
    frames, picks, next_time = [], [], 0.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for index, frame in enumerate(f for p in container.demux(stream) for f in p.decode()):
            if frame.time < 0 or frame.time > duration:
                continue
            picture = None
            while frame.time >= next_time:
                picture = squash(frame.to_ndarray(format="rgb24"), 224) if picture is None else picture
                frames.append(picture)
                picks.append(index)
                next_time += 1 / 25.0
    return torch.stack(frames)[: int(25 * duration)], picks[: int(25 * duration)]


def test_read_frames_match_the_reference_loader(tmp_path):
    path = make_moving_video(tmp_path / "moving.mp4", seconds=3.2, size=(640, 360))
    expected, picks = reference_sync_frames(path, 3.0)
    ours = media.read_frames(path, duration=3.0)
    assert ours.shape == expected.shape == (75, 3, 224, 224)
    assert picks[17:20] == [17, 19, 20]  # the reference's float sum skips a frame, and so must we
    diff = (ours.int() - expected.int()).abs()
    assert diff.max() <= 2, diff.flatten(1).max(1).values
    # the same source frames: each of ours is the reference's pick, and far from the frames around it
    with av.open(str(path)) as container:
        pictures = [squash(f.to_ndarray(format="rgb24"), 224).int() for f in container.decode(video=0)]
    for k, frame in enumerate(ours.int()):
        around = range(max(picks[k] - 3, 0), min(picks[k] + 4, len(pictures)))
        distance = {j: int((pictures[j] - frame).abs().max()) for j in around}
        assert min(distance, key=distance.get) == picks[k]
        assert sorted(distance.values())[1] > 64, (k, distance)


def test_the_reference_squash_is_torchvisions():
    from torchvision.transforms import v2  # requirements-dev.txt pins the build open_clip needs
    rgb = np.random.default_rng(0).integers(0, 256, (90, 160, 3), dtype=np.uint8)
    resize = v2.Resize((24, 24), interpolation=v2.InterpolationMode.BICUBIC)
    assert torch.equal(squash(rgb, 24), resize(torch.from_numpy(rgb).permute(2, 0, 1)))


def test_read_frames_at_a_lower_rate(src):
    # 8 fps from 25 fps: frame k is the first source frame at or after k / 8 s
    frames = media.read_frames(src("h264_8s.mp4"), start=7.0, duration=1.0, fps=8, size=16)
    assert indices(frames) == [175 + math.ceil(k * 25 / 8) for k in range(8)]


def test_read_frames_webm(src):
    frames = media.read_frames(src("vp9_audio.webm"), start=0.3, duration=1.0, size=16)
    assert indices(frames) == list(range(8, 33))  # 0.3 s = frame 7.5: the first at or after is 8


def test_read_frames_holds_last_frame_until_the_end(src):
    # 10 fps: the last frame (1.9 s) is on screen until 2.0 s, so 25 fps targets up to 1.96 s get it
    frames = media.read_frames(src("h264_10fps.mp4"), start=1.0, duration=1.0, fps=25, size=16)
    assert indices(frames)[-3:] == [19, 19, 19]


@pytest.mark.parametrize(
    "rotation, corner",
    # the white marker is in the stored picture's top-left; display turns it counter-clockwise
    [(90, (1, 0)), (180, (1, 1)), (270, (0, 1))],
)
def test_read_frames_honours_rotation(src, rotation, corner):
    frames = media.read_frames(src(f"rot{rotation}.mp4"), duration=0.2, size=16)
    luma = frames[0].float().mean(0)
    quadrants = [[luma[r * 8 : r * 8 + 8, c * 8 : c * 8 + 8].mean() for c in range(2)] for r in range(2)]
    brightest = max(((r, c) for r in range(2) for c in range(2)), key=lambda rc: quadrants[rc[0]][rc[1]])
    assert brightest == corner


def test_read_frames_past_the_end(src):
    with pytest.raises(MediaError, match=r"is 2\.00 s long.*shorter span or an earlier start"):
        media.read_frames(src("h264_10fps.mp4"), start=1.5, duration=1.0)


def test_read_frames_bad_arguments(src):
    with pytest.raises(MediaError, match="duration and fps > 0"):
        media.read_frames(src("h264_10fps.mp4"), duration=0)
    with pytest.raises(MediaError, match="shorter than one frame"):
        media.read_frames(src("h264_10fps.mp4"), duration=0.01)


# -- mux ------------------------------------------------------------------------------------------


def test_mux_copies_video_bit_exact(src, tmp_path):
    source = src("h264_audio.mp4")
    out = mux(source, silence(2.0), SR, tmp_path / "out.mp4", duration=2.0)
    with av.open(str(out)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        video, audio = c.streams.video[0], c.streams.audio[0]
        assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
        assert audio.rate == SR  # AAC takes 16 kHz as it is
        assert stream_seconds(video) == pytest.approx(2.0, abs=0.04)
        assert stream_seconds(audio) == pytest.approx(2.0, abs=0.04)
        assert audio.start_time == 0 and video.start_time == 0
    assert [bytes(p) for p in video_packets(out)] == [bytes(p) for p in video_packets(source)]


def test_mux_copies_from_a_keyframe(src, tmp_path, caplog):
    source = src("h264_audio.mp4")  # keyframes every 10 frames: 0.4 s is frame 10
    with caplog.at_level(logging.INFO, logger="selva.mux"):
        out = mux(source, silence(1.2), SR, tmp_path / "out.mp4", start=0.4, duration=1.2)
    assert "copying 30 video packets" in caplog.text
    assert [bytes(p) for p in video_packets(out)] == [bytes(p) for p in video_packets(source)[10:40]]
    assert decoded_indices(out) == list(range(10, 40))


def test_mux_reencodes_a_mid_gop_span(src, tmp_path, caplog):
    source = src("h264_audio.mp4")
    with caplog.at_level(logging.INFO, logger="selva.mux"):
        out = mux(source, silence(1.0), SR, tmp_path / "out.mp4", start=0.52, duration=1.0)
    assert "re-encoding" in caplog.text
    assert decoded_indices(out) == list(range(13, 38))
    with av.open(str(out)) as c:
        assert [s.codec_context.name for s in c.streams] == ["h264", "aac"]
        assert c.streams.video[0].start_time == 0 and c.streams.audio[0].start_time == 0
        assert stream_seconds(c.streams.video[0]) == pytest.approx(1.0, abs=0.04)
        assert stream_seconds(c.streams.audio[0]) == pytest.approx(1.0, abs=0.04)


def test_mux_reencodes_when_bframes_cross_the_end(src, tmp_path, caplog):
    # frames 0-20 (0.84 s): frame 20 decodes after frame 22, which lies outside the span
    with caplog.at_level(logging.INFO, logger="selva.mux"):
        out = mux(src("bframes.mp4"), silence(0.84), SR, tmp_path / "a.mp4", duration=0.84)
    assert "re-encoding" in caplog.text
    assert decoded_indices(out) == list(range(21))
    # the closed GOP at frame 12 copies cleanly when the span ends on one
    out = mux(src("bframes.mp4"), silence(0.48), SR, tmp_path / "b.mp4", start=0.48, duration=0.48)
    assert [bytes(p) for p in video_packets(out)] == [
        bytes(p) for p in video_packets(src("bframes.mp4"))[12:24]
    ]


def test_mux_vp9_copies_into_mp4_and_vp8_is_reencoded(src, tmp_path):
    out = mux(src("vp9_audio.webm"), silence(2.0), SR, tmp_path / "vp9.mp4", duration=2.0)
    assert [bytes(p) for p in video_packets(out)] == [bytes(p) for p in video_packets(src("vp9_audio.webm"))]
    out = mux(src("vp8.webm"), silence(1.0), SR, tmp_path / "vp8.mp4", duration=1.0)
    with av.open(str(out)) as c:
        assert [s.codec_context.name for s in c.streams] == ["h264", "aac"]
        assert c.streams.video[0].start_time == 0 and c.streams.audio[0].start_time == 0
    assert decoded_indices(out) == list(range(25))


def test_mux_mpeg4_is_copied(src, tmp_path):
    out = mux(src("mpeg4.mp4"), silence(1.0), SR, tmp_path / "out.mp4", duration=1.0)
    assert [bytes(p) for p in video_packets(out)] == [bytes(p) for p in video_packets(src("mpeg4.mp4"))]


@pytest.mark.parametrize("start", [0.0, 0.2])  # a copy, then a mid-GOP re-encode
def test_mux_keeps_rotation(src, tmp_path, start):
    out = mux(src("rot270.mp4"), silence(0.6), SR, tmp_path / "out.mp4", start=start, duration=0.6)
    assert media.probe(out).rotation == 270


def test_mux_vfr_span(src, tmp_path):
    out = mux(src("vfr.mp4"), silence(1.9), SR, tmp_path / "out.mp4", duration=1.9)
    assert decoded_indices(out) == list(range(20))
    with av.open(str(out)) as c:
        # the last frame lasts 0.1 s, so the picture ends within one (slow) frame of the sound
        assert abs(stream_seconds(c.streams.video[0]) - stream_seconds(c.streams.audio[0])) <= 0.1


def test_mux_uses_the_info_it_is_given(src, tmp_path, opened):
    source = src("h264_audio.mp4")
    info = media.probe(source)
    opened.clear()
    mux(source, silence(1.0), SR, tmp_path / "a.mp4", duration=1.0, info=info)
    assert opened.count(source.name) == 2  # plan the copy, then copy; probing would open it once more
    opened.clear()
    mux(source, silence(1.0), SR, tmp_path / "b.mp4", duration=1.0)
    assert opened.count(source.name) == 3
    short = dataclasses.replace(info, duration=0.5)
    with pytest.raises(MediaError, match=r"is 0\.50 s long"):
        mux(source, silence(1.0), SR, tmp_path / "c.mp4", duration=1.0, info=short)


def test_mux_fits_audio_to_the_span(src, tmp_path):
    # longer audio is cut, stereo stays stereo, a rate AAC lacks is converted
    wave = torch.zeros(2, 3 * 12_345)
    out = mux(src("h264_10fps.mp4"), wave, 12_345, tmp_path / "out.mp4", duration=1.0)
    with av.open(str(out)) as c:
        audio = c.streams.audio[0]
        assert audio.rate == 16_000 and audio.layout.nb_channels == 2
        assert stream_seconds(audio) == pytest.approx(1.0, abs=0.1)
    # shorter audio is padded with silence
    out = mux(src("h264_10fps.mp4"), silence(0.5), SR, tmp_path / "pad.mp4", duration=1.0)
    with av.open(str(out)) as c:
        assert stream_seconds(c.streams.audio[0]) == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("start", [0.0, 0.52])
def test_mux_mixes_the_original_sound(src, tmp_path, start):
    source = src("h264_audio.mp4")  # a 440 Hz tone at 0.5 from t = 0
    out = mux(
        source, silence(1.0), SR, tmp_path / "mix.mp4", start=start, duration=1.0, original_audio_gain=0.5
    )
    with av.open(str(out)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
    x, rate = decode_audio(out)
    skip = 800
    amplitude, phase = tone_fit(x[0, skip : skip + 12_000], rate)
    assert amplitude == pytest.approx(0.25, abs=0.02)
    # the tone keeps its phase: the original sound is placed at the span's start, sample-exact
    want = 2 * np.pi * 440 * (start + skip / rate)
    assert abs((phase - want + np.pi) % (2 * np.pi) - np.pi) < 0.1
    # without the gain the original is replaced
    out = mux(source, silence(1.0), SR, tmp_path / "new.mp4", start=start, duration=1.0)
    assert np.abs(decode_audio(out)[0]).max() < 0.01


def test_mux_mix_from_webm(src, tmp_path):
    out = mux(
        src("vp9_audio.webm"),
        silence(1.0, 2),
        SR,
        tmp_path / "m.mp4",
        start=0.3,
        duration=1.0,
        original_audio_gain=1,
    )
    amplitude, _ = tone_fit(decode_audio(out)[0][0, 800:12_800], SR)
    assert amplitude == pytest.approx(0.5, abs=0.05)


def test_mux_takes_delivered_stereo_at_48k(src, tmp_path):
    # the model's 16 kHz tone, panned hard left and resampled to 48 kHz, stays left at 48 kHz
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)).astype(np.float32)
    wave = delivery.resample(delivery.pan(tone, -1.0), SR, 48_000)
    out = mux(src("h264_10fps.mp4"), wave, 48_000, tmp_path / "stereo.mp4", duration=1.0)
    with av.open(str(out)) as c:
        audio = c.streams.audio[0]
        assert audio.rate == 48_000 and audio.layout.nb_channels == 2
        assert stream_seconds(audio) == pytest.approx(1.0, abs=0.05)
    x, rate = decode_audio(out)
    assert rate == 48_000
    assert tone_fit(x[0, 2_400:38_400], rate)[0] == pytest.approx(0.5, abs=0.02)
    assert np.abs(x[1]).max() < 1e-3


def test_write_multitrack_keeps_stereo_tracks_at_48k(src, tmp_path):
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)).astype(np.float32)
    right = delivery.resample(delivery.pan(tone, 1.0), SR, 48_000)
    centre = delivery.resample(tone, SR, 48_000)
    mixed = mux(src("h264_10fps.mp4"), right, 48_000, tmp_path / "mix.mp4", duration=1.0)
    out = tracks.write_multitrack(mixed, [("right", right), ("mono", centre)], 48_000, tmp_path / "t.mp4")
    with av.open(str(out)) as c:
        layout = [(s.rate, s.layout.nb_channels, s.metadata.get("handler_name")) for s in c.streams.audio]
    assert layout == [(48_000, 2, "mix"), (48_000, 2, "right"), (48_000, 1, "mono")]
    with av.open(str(out)) as c:
        x = np.concatenate([f.to_ndarray() for f in c.decode(c.streams.audio[1])], axis=1)
    assert np.abs(x[0]).max() < 1e-3
    assert tone_fit(x[1, 2_400:38_400], 48_000)[0] == pytest.approx(0.5, abs=0.02)
    with pytest.raises(MediaError, match="track 'bad' must be mono"):
        tracks.write_multitrack(mixed, [("bad", np.zeros((3, 10)))], 48_000, tmp_path / "bad.mp4")
    assert not (tmp_path / "bad.mp4").exists()


@pytest.mark.parametrize("after", [0.0, 1.0])
def test_mux_with_a_damaged_original_soundtrack(src, tmp_path, after):
    source = damage_audio(src("h264_audio.mp4"), tmp_path / "damaged.mp4", after=after)
    assert media.probe(source).has_audio  # the damage shows only once the audio is decoded
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous result")
    with pytest.raises(MediaError) as err:
        mux(source, silence(2.0), SR, out, duration=2.0, original_audio_gain=0.5)
    message = str(err.value)
    assert "soundtrack (aac) is damaged" in message and f"near {after:.2f} s" in message
    assert "mix without it" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.mp4", "out.mp4"]
    assert out.read_bytes() == b"previous result"
    # replacing the sound needs none of it
    mux(source, silence(2.0), SR, out, duration=2.0)
    assert decoded_indices(out) == list(range(50))


def test_mux_errors(src, tmp_path):
    source = src("h264_10fps.mp4")
    with pytest.raises(MediaError, match=r"is 2\.00 s long.*shorter duration or an earlier start"):
        mux(source, silence(1.0), SR, tmp_path / "o.mp4", start=1.5, duration=1.0)
    with pytest.raises(MediaError, match=r"name the output \.mp4"):
        mux(source, silence(1.0), SR, tmp_path / "o.mkv", duration=1.0)
    with pytest.raises(MediaError, match="does not exist; create it first"):
        mux(source, silence(1.0), SR, tmp_path / "no" / "o.mp4", duration=1.0)
    with pytest.raises(MediaError, match="NaN"):
        mux(source, np.full(SR, np.nan, np.float32), SR, tmp_path / "o.mp4", duration=1.0)
    with pytest.raises(MediaError, match="1 or 2 channels"):
        mux(source, np.zeros((3, SR), np.float32), SR, tmp_path / "o.mp4", duration=1.0)
    with pytest.raises(MediaError, match="original_audio_gain"):
        mux(source, silence(1.0), SR, tmp_path / "o.mp4", duration=1.0, original_audio_gain=-1)
    with pytest.raises(MediaError, match="only audio"):
        mux(make_audio_only(tmp_path / "a.m4a"), silence(1.0), SR, tmp_path / "o.mp4", duration=1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.m4a"]


def test_mux_failure_leaves_no_partial_file(src, tmp_path, monkeypatch):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous result")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mux_module, "_aac_packets", full_disk)
    with pytest.raises(MediaError, match="could not write out.mp4.*has space"):
        mux(src("h264_10fps.mp4"), silence(1.0), SR, out, duration=1.0)
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
    assert out.read_bytes() == b"previous result"


def test_modules_import_downwards():
    # mux builds on media, both on containers: importing one never loads a module above it
    code = (
        "import sys\n"
        "import selva.containers\n"
        "assert 'selva.media' not in sys.modules and 'selva.mux' not in sys.modules\n"
        "import selva.media\n"
        "assert 'selva.mux' not in sys.modules\n"
        "import selva.mux\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# -- write_audio ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix, codec", [(".flac", "flac"), (".wav", "pcm_s16le")])
@pytest.mark.parametrize("channels", [1, 2])
def test_write_audio_round_trip(tmp_path, suffix, codec, channels):
    rng = np.random.default_rng(0)
    wave = rng.uniform(-0.9, 0.9, (channels, 22_050)).astype(np.float32)
    audio = torch.from_numpy(wave[0]) if channels == 1 else wave  # (N,) tensor or (C, N) array
    path = media.write_audio(tmp_path / f"out{suffix}", audio, 22_050)
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        assert stream.codec_context.name == codec and stream.rate == 22_050
        back = np.concatenate([f.to_ndarray() for f in c.decode(stream)], axis=1)
    back = back.reshape(-1, channels).T if back.shape[0] == 1 else back  # packed s16 comes interleaved
    assert back.shape == (channels, 22_050)
    np.testing.assert_allclose(back / 32768, wave, atol=2 / 32768)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"out{suffix}"]


def test_write_audio_clips_and_accepts_bfloat16(tmp_path):
    path = media.write_audio(tmp_path / "loud.wav", torch.full((1000,), 3.0, dtype=torch.bfloat16), 16_000)
    with av.open(str(path)) as c:
        assert np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1).max() == 32767


def test_write_audio_errors(tmp_path):
    wave = np.zeros(100, np.float32)
    with pytest.raises(MediaError, match=r"use a \.flac or \.wav"):
        media.write_audio(tmp_path / "a.mp3", wave, SR)
    with pytest.raises(MediaError, match="positive whole number"):
        media.write_audio(tmp_path / "a.wav", wave, 0)
    with pytest.raises(MediaError, match=r"\(N,\) or \(C, N\)"):
        media.write_audio(tmp_path / "a.wav", np.zeros((1, 1, 5)), SR)
    with pytest.raises(MediaError, match="NaN"):
        media.write_audio(tmp_path / "a.wav", np.array([0.0, np.inf]), SR)
    with pytest.raises(MediaError, match="does not exist; create it first"):
        media.write_audio(tmp_path / "missing" / "a.wav", wave, SR)
    assert list(tmp_path.iterdir()) == []


def test_write_audio_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    original = av.open

    def open_then_fail(path, mode="r", **kwargs):
        container = original(path, mode, **kwargs)
        if mode == "w":
            Path(path).write_bytes(b"half a file")
            container.close()
            raise av.FFmpegError(5, "Input/output error")
        return container

    monkeypatch.setattr(av, "open", open_then_fail)
    with pytest.raises(MediaError, match="could not write a.flac"):
        media.write_audio(tmp_path / "a.flac", np.zeros(100, np.float32), SR)
    assert list(tmp_path.iterdir()) == []


# -- content_hash ---------------------------------------------------------------------------------


def test_content_hash(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(random.Random(7).randbytes(3 << 20))
    b = tmp_path / "copy.bin"
    b.write_bytes(a.read_bytes())
    os.utime(b, (0, 0))  # the modification time does not matter
    assert media.content_hash(a) == media.content_hash(b)
    assert len(media.content_hash(a)) == 32
    data = bytearray(a.read_bytes())
    data[-1] ^= 1
    b.write_bytes(bytes(data))
    assert media.content_hash(a) != media.content_hash(b)
    b.write_bytes(a.read_bytes()[:-1])
    assert media.content_hash(a) != media.content_hash(b)
    with pytest.raises(MediaError, match="no file at"):
        media.content_hash(tmp_path / "nope.mp4")
