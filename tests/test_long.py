"""Whole videos (overlapping 8 s windows joined by a crossfade) and sound from the prompt alone."""

import math

import av
import pytest
import torch
from media_factory import make_video

from selva import cli, media
from selva.frame_feed import FrameFeed
from selva.sequence import SEGMENT_STRIDE, SYNC_FPS, SequenceLengths
from selva.serving import ProgressReport
from selva.spec import CancelToken, GenerationCancelled, GenerationRequest, InputError, MediaError
from selva.windows import STRIDE_SECONDS, Window, draw_noise, join_windows, plan_windows

SR = 16000


# -- the window plan --------------------------------------------------------------------------------


@pytest.mark.parametrize("duration", [8.5, 12.0, 29.97, 30.0, 600.0])
@pytest.mark.parametrize("overlap", [0.0, 1.0, 2.5])
def test_windows_sit_on_the_stride_grid_overlap_and_cover_the_span(duration, overlap):
    windows = plan_windows(duration, SR, overlap=overlap)
    assert len(windows) > 1
    assert windows[0].start_frame == 0
    for w in windows:
        assert w.start_frame % SEGMENT_STRIDE == 0  # sync slices align with TextSynch's segments
        assert w.start_sample == round(w.start * SR)
    for w in windows[:-1]:
        assert w.duration == 8.0
    last = windows[-1]
    assert 8.0 <= last.duration < 8.0 + STRIDE_SECONDS
    assert last.start + last.duration == pytest.approx(duration)
    assert last.start_sample + last.num_samples == round(duration * SR)  # exact total sample count
    for a, b in zip(windows, windows[1:], strict=False):
        assert a.start + a.duration - b.start >= overlap - 1e-9


def test_a_span_of_one_window_is_one_window():
    assert plan_windows(8.0, SR) == [Window(0, 0, 8.0, SR)]
    assert plan_windows(3.0, SR) == [Window(0, 0, 3.0, SR)]
    with pytest.raises(InputError, match="window overlap"):
        plan_windows(30.0, SR, overlap=7.9)


def test_each_window_takes_its_own_contiguous_slice_of_the_span_sync_tokens():
    whole = SequenceLengths.from_duration(29.97, sample_rate=SR, hop_length=256)
    windows = plan_windows(29.97, SR)
    for w in windows:
        own = SequenceLengths.from_duration(w.duration, sample_rate=SR, hop_length=256)
        cut = w.sync_slice
        assert cut.stop - cut.start == own.sync_len
        assert cut.start == w.start_frame // SEGMENT_STRIDE * 8
    assert windows[-1].sync_slice.stop == whole.sync_len  # the last window ends on the last token


def test_one_noise_rule_for_windows_and_candidates():
    first, second = draw_noise([250, 260], 2, seed=5, latent_dim=20)
    assert first.shape == (2, 250, 20) and second.shape == (2, 260, 20)
    (alone,) = draw_noise([250], 1, seed=6, latent_dim=20)
    assert torch.equal(alone[0], first[1])  # candidate 1 of seed 5 is candidate 0 of seed 6
    (one_window,) = draw_noise([250], 2, seed=5, latent_dim=20)
    assert torch.equal(one_window, first)  # a span of one window is the first window of a longer one
    assert not torch.equal(second[:, :250], first)  # each window draws fresh noise


# -- the crossfade ----------------------------------------------------------------------------------


def _noise(seconds: float, seed: int, level: float = 0.3) -> torch.Tensor:
    return level * torch.randn(1, round(seconds * SR), generator=torch.Generator().manual_seed(seed))


def _block_rms(x: torch.Tensor, block: int = 1600) -> torch.Tensor:
    n = x.shape[1] // block * block
    return x[0, :n].view(-1, block).pow(2).mean(dim=1).sqrt()


def test_the_crossfade_keeps_the_power_of_stationary_noise_through_the_seam():
    windows = plan_windows(14.0, SR, overlap=2.0)
    assert len(windows) == 2
    pieces = [_noise(w.duration, seed=k) for k, w in enumerate(windows)]
    joined = join_windows(pieces, windows, round(14.0 * SR))
    rms = _block_rms(joined)
    assert (rms / 0.3 - 1).abs().max() < 0.08  # within a few % everywhere, the seam included
    # No click: the largest sample-to-sample jump around the seam is no larger than elsewhere.
    seam = slice(windows[1].start_sample - 800, windows[0].num_samples + 800)
    jumps = joined[0].diff().abs()
    around = jumps[seam].max()
    rest = torch.cat([jumps[: seam.start], jumps[seam.stop :]]).max()
    assert around <= rest


def test_a_louder_window_is_matched_to_the_one_before_within_bounds():
    windows = plan_windows(14.0, SR, overlap=2.0)
    quiet, loud = _noise(windows[0].duration, 0), _noise(windows[1].duration, 1, level=0.45)
    joined = join_windows([quiet, loud], windows, round(14.0 * SR))
    after = joined[:, windows[0].num_samples :]
    assert after.pow(2).mean().sqrt().item() == pytest.approx(0.3, rel=0.05)
    # A window of near silence is not blown up to match: the gain is bounded by 2.
    faint = _noise(windows[1].duration, 1, level=0.01)
    joined = join_windows([quiet, faint], windows, round(14.0 * SR))
    assert joined[:, windows[0].num_samples :].pow(2).mean().sqrt().item() == pytest.approx(0.02, rel=0.05)


def test_one_window_passes_through_untouched():
    piece = _noise(3.0, 0)
    assert torch.equal(join_windows([piece], plan_windows(3.0, SR), piece.shape[1]), piece)


# -- the pipeline -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip30s(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("long") / "clip30.mp4", seconds=30.0, size=(64, 48), gop=25)


def test_chunked_text_synch_equals_one_pass(pipe, tmp_path):
    clip = make_video(tmp_path / "c.mp4", seconds=3.0, size=(64, 48))
    lengths = SequenceLengths.from_duration(3.0, sample_rate=SR, hop_length=256)
    prompt = pipe.encode_prompt("dog barking")
    info = media.probe(clip)
    with FrameFeed(info, start=0.0, lengths=lengths, chunk_segments=lengths.sync_segments) as frames:
        whole = pipe.encode_span(frames, [prompt])[0]
    with FrameFeed(info, start=0.0, lengths=lengths, chunk_segments=2) as frames:
        chunked = pipe.encode_span(frames, [prompt])[0]
    one_pass = pipe.encode_video(
        media.read_frames(clip, duration=3.0).unsqueeze(0), prompt.t5, prompt.t5_mask
    )
    torch.testing.assert_close(whole, one_pass, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


def test_a_30_second_clip_runs_in_windows_with_progress_and_reuses_its_sync_features(pipe, clip30s):
    states, shown = [], []

    def on_step(p, i, t, state):
        states.append({k: v for k, v in state.items() if k != "latents"})

    out = pipe(clip30s, "dog barking", steps=2, seed=3, callback_on_step_end=on_step)
    assert out.duration == pytest.approx(30.0, abs=1 / SYNC_FPS)  # the whole clip, automatically
    assert out.audio.shape == (1, round(out.duration * SR))
    assert out.windows == len(plan_windows(out.duration, SR)) > 1
    assert out.audio.abs().max() <= 1 and torch.isfinite(out.audio).all()
    # Equal windows run as one batch, the longer last one on its own: two flow passes of 2 steps.
    assert [(s["pass"], s["window"], s["window_count"]) for s in states] == [
        (0, 0, out.windows - 1),
        (0, 0, out.windows - 1),
        (1, out.windows - 1, 1),
        (1, out.windows - 1, 1),
    ]
    report = ProgressReport(lambda fraction, desc: shown.append((fraction, desc)), steps=2)
    for i, state in zip([0, 1, 0, 1], states, strict=True):
        report.step(pipe, i, 0.0, state)
    n = out.windows
    assert [d for _, d in shown] == [
        f"Generating: windows 1-{n - 1}/{n}, step 1/2",
        f"Generating: windows 1-{n - 1}/{n}, step 2/2",
        f"Generating: window {n}/{n}, step 1/2",
        f"Generating: window {n}/{n}, step 2/2",
    ]
    assert [f for f, _ in shown] == sorted(f for f, _ in shown)

    again = pipe(clip30s, "dog barking", steps=2, seed=4)  # a re-roll: no decode, no TextSynch
    assert "decode" not in again.timings and "text_synch" not in again.timings
    assert again.audio.shape == out.audio.shape and not torch.equal(again.audio, out.audio)


def test_cancel_stops_between_window_passes(pipe, clip30s):
    token = CancelToken()
    seen = []

    def on_step(p, i, t, state):
        seen.append((state["pass"], i))
        if state["pass"] == 0 and i == 1:
            token.cancel()

    with pytest.raises(GenerationCancelled):
        pipe(clip30s, "dog barking", steps=2, seed=3, callback_on_step_end=on_step, cancel=token)
    assert seen == [(0, 0), (0, 1)]  # the second pass never started


def test_a_shorter_span_of_a_long_clip_can_still_be_asked(pipe, clip30s):
    out = pipe(clip30s, "dog barking", steps=1, seed=0, start=20.0, duration=5.0)
    assert out.windows == 1 and out.audio.shape == (1, 5 * SR)


# -- sound from the prompt alone ------------------------------------------------------------------


def test_sound_from_the_prompt_alone(pipe, tmp_path):
    out = pipe(None, "rain", duration=10, steps=2, seed=1)
    assert out.video is None and out.windows == 2
    assert out.audio.shape == (1, 10 * SR) and torch.isfinite(out.audio).all()
    assert out.save_audio(tmp_path / "rain.flac").is_file()
    with pytest.raises(MediaError, match="prompt alone"):
        out.save_video(tmp_path / "rain.mp4")
    with pytest.raises(InputError, match="give a duration"):
        pipe(None, "rain")
    with pytest.raises(InputError, match="Duration above 0"):
        GenerationRequest.from_form(None, "rain", duration=0)
    assert GenerationRequest.from_form(None, "rain", duration=4).video is None


def _seconds(path) -> float:
    with av.open(str(path)) as f:
        stream = f.streams.audio[0]
        return sum(frame.samples for frame in f.decode(stream)) / stream.rate


def test_the_cli_makes_sound_from_the_prompt_alone(tiny_hub, tmp_path):
    out = tmp_path / "x.flac"
    argv = ["generate", "--prompt", "rain", "--duration", "3", "--out", str(out)]
    code = cli.main([*argv, "--variant", "tiny_16k", "--device", "cpu", "--steps", "2", "--seed", "1", "-q"])
    assert code == 0 and out.is_file()
    assert math.isclose(_seconds(out), 3.0, abs_tol=1 / SR)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.flac"]  # no mp4 without a video
    assert cli.main(["generate", "--prompt", "rain", "--out", str(tmp_path), "-q"]) == 2  # needs --duration


# -- a whole 30 s clip through the command line (issue #12) ---------------------------------------

TINY_CPU = ["--variant", "tiny_16k", "--device", "cpu", "--precision", "fp32", "--steps", "1", "-q"]


def _stream_seconds(path, kind: str) -> float:
    """How long a file's first `kind` stream plays, read back with PyAV: samples over the rate for
    audio, the last frame's end for video."""
    with av.open(str(path)) as f:
        stream = f.streams.audio[0] if kind == "audio" else f.streams.video[0]
        if kind == "audio":
            return sum(frame.samples for frame in f.decode(stream)) / stream.rate
        start = stream.start_time or 0
        times = [frame.pts for frame in f.decode(stream)]
        return float((max(times) - start) * stream.time_base + 1 / stream.average_rate)


def test_a_30_second_clip_through_the_cli_keeps_its_length(tiny_hub, clip30s, tmp_path):
    video_seconds = _stream_seconds(clip30s, "video")
    assert video_seconds == pytest.approx(30.0, abs=1e-6)
    argv = ["generate", str(clip30s), "--prompt", "dog barking", "--seed", "3", "--out", str(tmp_path)]
    assert cli.main([*argv, *TINY_CPU]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip30.flac", "clip30.mp4"]
    one_frame = 1 / SYNC_FPS
    assert abs(_seconds(tmp_path / "clip30.flac") - video_seconds) <= one_frame
    assert abs(_stream_seconds(tmp_path / "clip30.mp4", "audio") - video_seconds) <= one_frame
    assert abs(_stream_seconds(tmp_path / "clip30.mp4", "video") - video_seconds) <= one_frame


def test_30_seconds_from_the_prompt_alone_through_the_cli(tiny_hub, tmp_path):
    out = tmp_path / "rain.flac"
    argv = ["generate", "--prompt", "rain", "--duration", "30", "--seed", "1", "--out", str(out)]
    assert cli.main([*argv, *TINY_CPU]) == 0
    with av.open(str(out)) as f:
        stream = f.streams.audio[0]
        assert stream.rate == 48_000  # the delivered rate (tiny_16k makes 16 kHz)
        assert sum(frame.samples for frame in f.decode(stream)) == 30 * 48_000  # exactly, not about
