"""selva/project.py and selva/render.py: the project file, its checks, and rendering it (the one road)."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from media_factory import make_video

from selva.cli import main
from selva.project import PROJECT_VERSION, Mix, Project, Sound, Take, take_seeds
from selva.render import draft_takes, mix_project, read_take, render
from selva.spec import GenerationRequest, InputError, MediaError


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("project_media") / "clip.mp4", seconds=1.0, audio=True)


def two_sounds(clip: Path) -> Project:
    project = Project(
        sounds=(Sound("dog barking", gain=1.0), Sound("car engine", "wind", gain=0.5)),
        video=str(clip),
        mix=Mix(original_audio_gain=0.25),
    )
    return draft_takes(project, seed=11, steps=2)


# -- the data --------------------------------------------------------------------------------------


def test_a_project_round_trips_through_its_file(tmp_path, clip):
    project = two_sounds(clip)
    path = project.save(tmp_path / "p.selva.json")
    data = json.loads(path.read_text())
    assert data["version"] == PROJECT_VERSION and len(data["sounds"]) == 2
    assert [t["seed"] for s in data["sounds"] for t in s["takes"]] == [11, 12]  # sound j: seed + j
    assert Project.load(path) == project
    assert not list(tmp_path.glob("*.part"))  # written then renamed


def test_candidates_and_stems_share_one_seed_rule():
    assert take_seeds(41, 3) == [41, 42, 43]
    one = draft_takes(Project(sounds=(Sound("rain"),), duration=2.0), seed=41, count=3)
    assert [t.seed for t in one.sounds[0].takes] == take_seeds(41, 3)
    assert {t.batch for t in one.sounds[0].takes} == {0} and one.sounds[0].chosen == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(version=99), "version 99 project file"),
        (lambda d: d.update(colour="red"), "unknown project fields: colour"),
        (lambda d: d["sounds"][0].update(pan=2), "sound 1: pan must be a number from -1 to 1"),
        (lambda d: d["sounds"][1].update(chosen=5), "sound 2: chosen take 5 is not one of its 1 takes"),
        (lambda d: d["sounds"][0]["takes"][0].update(steps=0), "sound 1 take 1: steps must be"),
        (lambda d: d.update(sounds=[]), "a project has 1 to 4 sounds"),
        (lambda d: d["sounds"][0].update(prompt=" "), "sound 1 needs a prompt"),
        (lambda d: d["mix"].update(original_audio_gain=99), "the mix: original_audio_gain must be"),
        (lambda d: d["sounds"][0].pop("prompt"), "missing or misspells a field"),
    ],
)
def test_a_bad_project_file_is_refused_with_the_field_named(tmp_path, clip, change, message):
    data = two_sounds(clip).to_dict()
    change(data)
    path = tmp_path / "bad.selva.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message):
        Project.load(path)


def test_unreadable_project_files_say_why(tmp_path):
    with pytest.raises(InputError, match="no such project file"):
        Project.load(tmp_path / "missing.selva.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(InputError, match="x.json is not a project file: line 1"):
        Project.load(tmp_path / "x.json")


def test_solo_and_mute_pick_the_audible_sounds():
    sounds = (Sound("a"), Sound("b", mute=True), Sound("c"))
    assert Project(sounds=sounds, duration=1.0).audible() == [0, 2]
    soloed = (Sound("a"), Sound("b", mute=True, solo=True), Sound("c"))
    assert Project(sounds=soloed, duration=1.0).audible() == [1]


# -- rendering ---------------------------------------------------------------------------------------


def test_render_makes_the_missing_takes_then_a_reload_reproduces_them_bit_for_bit(pipe, tmp_path, clip):
    rendered = render(pipe, two_sounds(clip), tmp_path / "takes")
    assert rendered.generated == [(0, 0), (1, 0)]
    assert rendered.project.duration == pytest.approx(1.0)
    for k in range(2):
        take = rendered.project.sounds[k].take
        np.testing.assert_array_equal(read_take(take.audio), rendered.take_audio(k))
    saved = rendered.project.save(tmp_path / "p.selva.json")

    # Loaded with its take files: nothing to generate, the same mix.
    again = render(pipe, Project.load(saved), tmp_path / "takes")
    assert again.generated == []
    np.testing.assert_array_equal(again.mix, rendered.mix)

    # Take files gone: generated again from the seeds, the same to the bit (CPU, fp32).
    for f in (tmp_path / "takes").iterdir():
        f.unlink()
    pipe.clear_caches()
    fresh = render(pipe, Project.load(saved), tmp_path / "takes2")
    assert fresh.generated == [(0, 0), (1, 0)]
    for k in range(2):
        np.testing.assert_array_equal(fresh.take_audio(k), rendered.take_audio(k))
    np.testing.assert_array_equal(fresh.mix, rendered.mix)


def test_rerolling_one_sound_leaves_the_others_chosen_take_byte_identical(pipe, tmp_path, clip):
    first = render(pipe, two_sounds(clip), tmp_path / "takes")
    kept = Path(first.project.sounds[0].take.audio).read_bytes()
    rerolled = draft_takes(first.project, seed=500, count=2, sounds=[1])
    second = render(pipe, rerolled, tmp_path / "takes")
    assert second.generated == [(1, 1), (1, 2)]  # sound 2's two new takes only
    assert [t.seed for t in second.project.sounds[1].takes] == [12, 500, 501]
    assert second.project.sounds[1].chosen == 1
    assert Path(second.project.sounds[0].take.audio).read_bytes() == kept
    np.testing.assert_array_equal(second.take_audio(0), first.take_audio(0))
    assert not np.array_equal(second.take_audio(1), first.take_audio(1))


def test_changing_gain_mute_or_the_original_level_remixes_without_the_model(pipe, tmp_path, clip):
    rendered = render(pipe, two_sounds(clip), tmp_path / "takes")
    project = rendered.project
    a, b = rendered.take_audio(0), rendered.take_audio(1)
    samples = a.shape[0]
    quiet = project.with_sound(0, replace(project.sounds[0], gain=0.25))
    quiet = replace(quiet, mix=Mix(original_audio_gain=0.0))
    mix, db = mix_project(quiet, rendered.audio, rendered.original, samples)
    expected = 0.25 * a + np.float32(0.5) * b
    peak = np.abs(expected).max()
    np.testing.assert_allclose(mix, expected / max(1.0, peak), rtol=1e-6, atol=1e-7)
    muted = quiet.with_sound(1, replace(quiet.sounds[1], mute=True))
    mix, _ = mix_project(muted, rendered.audio, rendered.original, samples)
    np.testing.assert_allclose(mix, np.float32(0.25) * a, rtol=1e-6)
    # Rendering the edited project runs no generation: every chosen take has its audio.
    assert render(pipe, muted, tmp_path / "takes").generated == []


def test_a_panned_sound_makes_the_mix_stereo_with_the_constant_power_law(pipe, tmp_path, clip):
    import av

    from selva.project_files import write_mix

    rendered = render(pipe, two_sounds(clip), tmp_path / "takes")
    a, b = rendered.take_audio(0), rendered.take_audio(1)
    project = replace(rendered.project, mix=Mix())
    left = project.with_sound(0, replace(project.sounds[0], pan=-1.0))
    left = left.with_sound(1, replace(left.sounds[1], mute=True))
    mix, _ = mix_project(left, rendered.audio, None, a.shape[0])
    assert mix.shape == (2, a.shape[0])
    np.testing.assert_array_equal(mix[1], 0.0)
    np.testing.assert_allclose(mix[0], a / max(1.0, np.abs(a).max()), rtol=1e-6, atol=1e-7)
    centre_right = left.with_sound(1, replace(left.sounds[1], mute=False, pan=0.5, gain=1.0))
    mix, _ = mix_project(replace(centre_right, sounds=centre_right.sounds[1:]), {(0, 0): b}, None, b.shape[0])
    theta = (0.5 + 1) * np.pi / 4  # equal power: cos^2 + sin^2 = 1
    peak = max(1.0, np.abs(b).max() * max(np.cos(theta), np.sin(theta)))
    np.testing.assert_allclose(mix[0], b * np.cos(theta) / peak, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(mix[1], b * np.sin(theta) / peak, rtol=1e-5, atol=1e-7)

    # The delivered files: a stereo mix, and sound 1's track panned as the user set it.
    panned = replace(rendered, project=left)
    panned.mix, _ = mix_project(left, rendered.audio, rendered.original, a.shape[0])
    files = write_mix(panned, tmp_path / "out", "clip")
    with av.open(str(files.mix_audio)) as f:
        assert f.streams.audio[0].channels == 2
    with av.open(str(files.tracks_video)) as f:
        assert [s.channels for s in f.streams.audio] == [2, 2, 1, 1]  # mix, sound 1, sound 2, original


def test_take_files_from_different_spans_are_refused(pipe, tmp_path, clip):
    rendered = render(pipe, two_sounds(clip), tmp_path / "takes")
    short = tmp_path / "short.npy"
    np.save(short, np.zeros(100, dtype=np.float32))
    sound = rendered.project.sounds[1]
    broken = rendered.project.with_sound(
        1, replace(sound, takes=(replace(sound.takes[0], audio=str(short)),))
    )
    with pytest.raises(MediaError, match="different lengths"):
        render(pipe, broken, tmp_path / "takes")


def test_one_project_gives_the_same_audio_through_the_service_and_the_command_line(
    pipe, tiny_hub, tmp_path, clip
):
    """The app's service, `selva generate --save-project`, `selva render` and a batch CSV row."""
    from selva.serving import GenerationService, PipelineSlot

    request = GenerationRequest(str(clip), "dog barking", "wind", steps=2, seed=7, num_samples=2)
    service = GenerationService(PipelineSlot.wrap(pipe))
    result = service.run(request)
    takes = result.project.sounds[0].takes
    expected = [read_take(t.audio) for t in takes]
    assert [t.seed for t in takes] == [7, 8]

    common = ["--variant", "tiny_16k", "--device", "cpu", "--precision", "fp32", "-q"]
    saved = tmp_path / "cli.selva.json"
    generate = [
        "generate", str(clip), "--prompt", "dog barking", "--negative", "wind", "--steps", "2", "--seed",
        "7", "--samples", "2", "--out", str(tmp_path / "out"), "--save-project", str(saved), *common,
    ]  # fmt: skip
    assert main(generate) == 0
    from_cli = Project.load(saved)
    for take, wave in zip(from_cli.sounds[0].takes, expected, strict=True):
        np.testing.assert_array_equal(read_take(take.audio), wave)

    # `selva render` of the saved file with its takes removed: the same audio again.
    for f in (tmp_path / "cli_takes").iterdir():
        f.unlink()
    assert main(["render", str(saved), "--out", str(tmp_path / "r"), *common]) == 0
    rerendered = Project.load(saved)
    for take, wave in zip(rerendered.sounds[0].takes, expected, strict=True):
        np.testing.assert_array_equal(read_take(take.audio), wave)
    assert (tmp_path / "r" / "cli_mix.flac").is_file() and (tmp_path / "r" / "cli_mix.mp4").is_file()

    # A batch CSV row with the same settings writes the same two takes (as WAV at the model's rate:
    # 16-bit samples of the takes themselves, not resampled).
    import av

    rows = tmp_path / "list.csv"
    rows.write_text(f"video,prompt,negative,seed\n{clip},dog barking,wind,7\n")
    out = str(tmp_path / "b")
    batch = ["batch", str(rows), "--steps", "2", "--samples", "2", "--format", "wav", "--out", out]
    batch += ["--sample-rate", "model"]
    assert main([*batch, *common]) == 0
    for k, wave in enumerate(expected, 1):
        with av.open(str(tmp_path / "b" / f"clip_{k}.wav")) as f:
            pcm = np.concatenate([fr.to_ndarray().reshape(-1) for fr in f.decode(audio=0)])
        np.testing.assert_array_equal(pcm, np.round(wave * 32767).astype(np.int16))


def test_render_refuses_the_original_soundtrack_without_a_video(pipe, tmp_path):
    project = Project(sounds=(Sound("rain"),), duration=1.0, mix=Mix(original_audio_gain=0.5))
    with pytest.raises(InputError, match="original soundtrack comes from a video"):
        render(pipe, project, None)


def test_several_sounds_from_the_prompts_alone_mix_without_a_video(pipe):
    project = Project(sounds=(Sound("rain"), Sound("thunder")), duration=1.0)
    rendered = render(pipe, draft_takes(project, seed=3, steps=2), None)
    assert rendered.mix.shape == (16000,) and rendered.original is None
    assert [s.take.audio for s in rendered.project.sounds] == [None, None]  # kept in memory only


def test_takes_without_audio_are_listed_as_missing():
    take = Take(seed=1)
    assert take.audio is None and Take(seed=1, audio="x.npy").audio == "x.npy"
