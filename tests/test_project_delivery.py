"""Delivery on the project road: the mix's output rate and loudness target, through the command line.

`Mix.sample_rate` and `Mix.loudness` (selva/project.py) are honoured by the file
writers (selva/project_files.py); `--sample-rate` and `--loudness` set them on
`selva generate`, `selva batch` and `selva render`.
"""

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyloudnorm
import pytest
from media_factory import make_video

from selva.cli import main
from selva.project import Measured, Mix, Project, Sound
from selva.render import draft_takes, render
from selva.spec import InputError

MODEL = ["--variant", "tiny_16k", "--device", "cpu", "--precision", "fp32", "-q"]
COMMON = [*MODEL, "--steps", "2"]  # `selva generate`'s; a render takes the project's steps
SECONDS = 1.0  # the clip's length, and so the span every file covers


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("delivery_media") / "clip.mp4", seconds=SECONDS, audio=True)


def decoded(path: Path) -> tuple[int, np.ndarray]:
    """(rate, channels-first float samples in [-1, 1]) of a file's first audio stream, read with PyAV."""
    pieces = []
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.rate
        for frame in container.decode(stream):
            wave = frame.to_ndarray()
            if not frame.format.is_planar:  # interleaved: (1, N * C)
                wave = wave.reshape(-1, len(frame.layout.channels)).T
            if frame.format.name.startswith("s16"):
                wave = wave / 32768.0
            pieces.append(wave.astype(np.float32))
    return rate, np.concatenate(pieces, axis=1)


def audio_streams(path: Path) -> list[tuple[int, int]]:
    """(rate, samples) of every audio stream of an mp4: where its audio ends, from time 0.

    AAC codes 1024 samples a frame, after a frame of encoder priming placed
    before time 0 (the edit list skips it); the last packet's duration says how
    many of its samples are the span's, though a decoder hands out the whole
    frame. So the track's length is the end of its last packet, in 1/rate.
    """
    out = []
    with av.open(str(path)) as container:
        streams = list(container.streams.audio)
        ends = dict.fromkeys((s.index for s in streams), 0)
        for packet in container.demux(*streams):
            if packet.size:
                ends[packet.stream.index] = max(ends[packet.stream.index], packet.pts + packet.duration)
        for stream in streams:
            assert stream.time_base == Fraction(1, stream.rate) and stream.duration == ends[stream.index]
            out.append((stream.rate, ends[stream.index]))
    return out


def loudness(wave: np.ndarray, rate: int) -> float:
    """pyloudnorm's BS.1770 integrated loudness of a (C, N) wave."""
    return pyloudnorm.Meter(rate).integrated_loudness(wave.T.astype(np.float64))


def test_a_48k_delivery_has_exactly_duration_times_48000_samples(tiny_hub, clip, tmp_path):
    """48 kHz is the command line's default for every file; `--sample-rate model` keeps the model's."""
    out = tmp_path / "out"
    argv = ["generate", str(clip), "--prompt", "dog barking", "--seed", "5"]
    assert main([*argv, "--out", str(out), "--format", "wav", *COMMON]) == 0
    rate, wave = decoded(out / "clip.wav")
    assert rate == 48_000 and wave.shape[1] == round(SECONDS * 48_000)
    assert audio_streams(out / "clip.mp4") == [(48_000, round(SECONDS * 48_000))]

    saved = tmp_path / "p.selva.json"
    model = [*argv, "--sample-rate", "model", "--save-project", str(saved), "--out", str(tmp_path / "m")]
    assert main([*model, "--format", "wav", *COMMON]) == 0
    rate, wave = decoded(tmp_path / "m" / "clip.wav")
    assert rate == 16_000 and wave.shape[1] == round(SECONDS * 16_000)  # tiny_16k's own rate, as generated
    take = np.load(Project.load(saved).sounds[0].takes[0].audio)
    np.testing.assert_array_equal(np.round(wave[0] * 32768), np.round(take * 32767))  # its 16-bit samples
    assert json.loads(saved.read_text())["mix"]["sample_rate"] is None


def test_stems_at_48k_and_minus_23_lufs_measure_it_and_keep_the_true_peak_under_the_ceiling(
    tiny_hub, clip, tmp_path
):
    out = tmp_path / "out"
    argv = [
        "generate", str(clip), "--prompt", "dog barking", "--prompt", "car engine", "--seed", "11",
        "--keep-original-audio", "0.5", "--sample-rate", "48000", "--loudness", "-23",
    ]  # fmt: skip
    assert main([*argv, "--out", str(out), *COMMON]) == 0
    samples = round(SECONDS * 48_000)
    rate, mix = decoded(out / "clip_mix.flac")
    assert rate == 48_000 and mix.shape[1] == samples
    assert loudness(mix, rate) == pytest.approx(-23.0, abs=0.5)
    # no true peak above -1 dBTP: the 4x oversampled wave (FFmpeg's resampler, as selva.delivery's meter)
    from selva.delivery import true_peak

    assert true_peak(mix, rate) <= -1.0 + 0.05  # 16-bit FLAC rounding only
    for name in ("clip_1-dog-barking.flac", "clip_2-car-engine.flac"):
        assert decoded(out / name)[0] == 48_000 and decoded(out / name)[1].shape[1] == samples
    assert audio_streams(out / "clip_mix.mp4") == [(48_000, samples)]
    assert [r for r, _ in audio_streams(out / "clip_tracks.mp4")] == [48_000] * 4  # mix, 2 sounds, original
    assert {n for _, n in audio_streams(out / "clip_tracks.mp4")} == {samples}


def test_the_project_file_round_trips_the_settings_and_the_measurement(tiny_hub, clip, tmp_path):
    saved = tmp_path / "dog.selva.json"
    argv = ["generate", str(clip), "--prompt", "dog barking", "--seed", "3", "--loudness", "-16"]
    assert main([*argv, "--sample-rate", "48000", "--save-project", str(saved), "--out", str(tmp_path / "a"),
                 *COMMON]) == 0  # fmt: skip
    data = json.loads(saved.read_text())
    assert data["version"] == 1
    assert data["mix"]["sample_rate"] == 48_000 and data["mix"]["loudness"] == -16.0
    measured = data["mix"]["measured"]
    assert measured["integrated_lufs"] == pytest.approx(-16.0, abs=0.5) and measured["true_peak_dbtp"] <= -1.0
    project = Project.load(saved)
    assert project.mix.measured == Measured(**measured)
    assert Project.load(project.save(tmp_path / "again.selva.json")) == project

    # `selva render` keeps the project's settings unless told otherwise, and measures anew.
    assert main(["render", str(saved), "--out", str(tmp_path / "b"), *MODEL]) == 0
    assert decoded(tmp_path / "b" / "dog_mix.flac")[0] == 48_000
    assert main(["render", str(saved), "--sample-rate", "model", "--loudness", "-23",
                 "--out", str(tmp_path / "c"), *MODEL]) == 0  # fmt: skip
    rate, mix = decoded(tmp_path / "c" / "dog_mix.flac")
    assert rate == 16_000 and mix.shape[1] == round(SECONDS * 16_000)
    again = Project.load(saved)
    assert again.mix.sample_rate is None and again.mix.loudness == -23.0
    assert again.mix.measured.integrated_lufs == pytest.approx(loudness(mix, rate), abs=0.1)


def test_an_old_project_file_reads_with_no_delivery_settings(tmp_path, clip):
    project = draft_takes(Project(sounds=(Sound("rain"),), video=str(clip)), seed=1)
    data = project.to_dict()
    for key in ("loudness", "sample_rate", "measured"):
        del data["mix"][key]
    assert Project.from_dict(data).mix == Mix()


@pytest.mark.parametrize(
    ("mix", "message"),
    [
        ({"sample_rate": 44_100}, "sample_rate must be null \\(the model's rate\\) or 48000, got 44100"),
        ({"sample_rate": "model"}, "sample_rate must be null"),
        ({"loudness": -20}, "loudness target must be one of off, -23, -16, -14"),
        ({"loudness": "-23"}, "give a number"),
        ({"measured": {"integrated_lufs": "loud"}}, "measured integrated_lufs must be a number or null"),
    ],
)
def test_bad_delivery_settings_in_a_project_file_are_named(tmp_path, clip, mix, message):
    data = draft_takes(Project(sounds=(Sound("rain"),), video=str(clip)), seed=1).to_dict()
    data["mix"].update(mix)
    with pytest.raises(InputError, match=message):
        Project.from_dict(data)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--sample-rate", "44100"], "argument --sample-rate: choose one of 48000, model, got 44100"),
        (["--loudness", "-20"], "argument --loudness: must be one of off, -23, -16, -14"),
    ],
)
def test_bad_delivery_options_fail_before_any_model_loads(tmp_path, capsys, option, message):
    # No tiny hub here: a model load would fail with a weights error (exit 3), not a usage error.
    for command in (["generate", "--prompt", "rain", "--duration", "1"], ["batch", str(tmp_path)],
                    ["render", str(tmp_path / "p.selva.json")]):  # fmt: skip
        assert main([*command, *option]) == 2
        assert message in capsys.readouterr().err


def test_a_render_measures_anew_and_the_info_line_says_what_was_delivered(pipe, clip, tmp_path):
    from selva.progress import project_info
    from selva.project_files import write_mix

    project = draft_takes(
        Project(sounds=(Sound("dog barking"),), video=str(clip), mix=Mix(loudness=-23.0, sample_rate=48_000,
                measured=Measured(-5.0, 0.0))),
        seed=2, steps=2,
    )  # fmt: skip
    rendered = render(pipe, project, None)
    assert rendered.project.mix.measured is None  # the old file's reading is not this mix's
    write_mix(rendered, tmp_path, "clip")
    measured = rendered.project.mix.measured
    assert measured.integrated_lufs == pytest.approx(-23.0, abs=0.5) and measured.true_peak_dbtp <= -1.0
    info = project_info(rendered)
    assert "delivered at 48 kHz" in info and f"measured {measured.integrated_lufs:.1f} LUFS" in info
    assert "target -23 LUFS, true peak under -1 dBTP" in info
