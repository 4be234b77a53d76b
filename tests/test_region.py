"""selva/region.py: a region of a take re-rolled (latent inpainting, equal-power splice), tiny models."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from media_factory import make_video

from selva.bundle import bundle_names
from selva.cli import main
from selva.project import Edit, Project, Sound
from selva.region import check_region, fade_gains, render_with_edits, reroll_region, splice, widen
from selva.render import draft_takes, latent_file, read_take, render
from selva.spec import REGION_MAX_FADE, InputError

RATE, HOP = 16_000, 256  # tiny_16k: one latent frame is 512 samples, 32 ms
FRAME = 2 * HOP


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("region_media") / "clip.mp4", seconds=2.0, audio=True)


@pytest.fixture(scope="module")
def edited(pipe, clip, tmp_path_factory):
    """Seconds 0.5..1.0 of a rendered 2 s take re-rolled with seed 7; the takes in `folder`."""
    folder = tmp_path_factory.mktemp("region") / "takes"
    draft = draft_takes(Project(sounds=(Sound("dog barking"),), video=str(clip)), seed=3, steps=2)
    project = render(pipe, draft, folder).project
    return project, folder, reroll_region(pipe, project, 0, 0, 0.5, 1.0, seed=7, folder=folder)


def outside(wave: np.ndarray, region) -> np.ndarray:
    return np.r_[wave[: region.start_sample], wave[region.end_sample :]]


# -- the region and its fades (no model) -------------------------------------------------------------


def test_a_region_is_widened_to_latent_frames_with_equal_power_fades_inside_it():
    region = widen(0.5, 1.0, duration=2.0, sample_rate=RATE, hop_length=HOP)
    assert (region.start_frame, region.end_frame) == (15, 32)  # 0.48 s .. 1.024 s
    assert (region.start_sample, region.end_sample) == (15 * FRAME, 32 * FRAME)
    assert region.start == pytest.approx(0.48) and region.end == pytest.approx(1.024)
    fade = round(REGION_MAX_FADE * RATE)
    assert region.fade_in == region.fade_out == fade == 800
    keep, put = fade_gains(region)
    np.testing.assert_allclose(keep**2 + put**2, 1.0, atol=1e-6)  # equal power through the fades
    assert put[0] < 0.01 and put[fade - 1] > 0.99 and np.all(np.diff(put[:fade]) > 0)
    assert np.all(put[fade:-fade] == 1) and np.all(keep[fade:-fade] == 0)
    # splice: the take outside the region exactly, the new audio through the gains inside it
    a, b = region.start_sample, region.end_sample
    original, new = np.full(RATE * 2, 0.25, np.float32), np.full(b - a, -0.5)
    out = splice(original, new, region)
    assert np.array_equal(outside(out, region), outside(original, region))
    np.testing.assert_allclose(out[a:b], 0.25 * keep - 0.5 * put, atol=1e-7)


def test_no_fade_at_the_span_edges_and_short_regions_get_shorter_fades():
    whole = widen(0.0, 2.0, duration=2.0, sample_rate=RATE, hop_length=HOP)
    assert (whole.start_sample, whole.end_sample, whole.fade_in, whole.fade_out) == (0, 32000, 0, 0)
    short = widen(0.1, 0.135, duration=2.0, sample_rate=RATE, hop_length=HOP)  # inside frames 3-4
    assert (short.start_frame, short.end_frame) == (3, 5) and short.fade_in == short.fade_out == FRAME
    keep, put = fade_gains(short)
    np.testing.assert_allclose(keep**2 + put**2, 1.0, atol=1e-6)


@pytest.mark.parametrize(
    ("sound", "take", "start", "end", "prompt", "message"),
    [
        (0, 0, 1.0, 0.5, None, "end after it starts"),
        (0, 0, -0.1, 0.5, None, "start at 0 s or later"),
        (0, 0, 0.5, 2.5, None, "past the span's end at 2.000 s"),
        (0, 0, 0.5, 0.51, None, "the shortest is 1 latent frame"),
        (0, 0, float("nan"), 0.5, None, "must be a number"),
        (2, 0, 0.5, 1.0, None, "there is no sound 3: the project has 1"),
        (0, 4, 0.5, 1.0, None, "sound 1 has no take 5: it has 1"),
        (0, 0, 0.5, 1.0, " ", "the region's prompt is empty"),
    ],
)
def test_bad_regions_are_refused_before_any_model(sound, take, start, end, prompt, message):
    project = draft_takes(Project(sounds=(Sound("rain"),), duration=2.0), seed=1)
    with pytest.raises(InputError, match=message):
        check_region(project, sound, take, start, end, sample_rate=RATE, hop_length=HOP, prompt=prompt)


# -- the re-roll -------------------------------------------------------------------------------------


def test_a_reroll_changes_the_region_and_keeps_every_other_sample(edited):
    project, folder, result = edited
    region, original = result.region, result.rendered.audio[(0, 0)]
    assert result.take == 1 and result.seed == 7
    new = result.audio
    assert new.shape == original.shape and new.dtype == np.float32
    assert np.array_equal(outside(new, region), outside(original, region))  # bit for bit
    inner = slice(region.start_sample + region.fade_in, region.end_sample - region.fade_out)
    assert np.abs(new[inner] - original[inner]).max() > 1e-3  # the region is new audio
    assert np.abs(new).max() <= 1.0
    # Recorded in the project: a new chosen take, made from take 1, with the widened region.
    sound = result.rendered.project.sounds[0]
    assert sound.chosen == 1 and len(sound.takes) == 2
    take = sound.takes[1]
    assert take.seed == 7 and take.steps == 2 and take.edit == Edit(0, region.start, region.end, None)
    np.testing.assert_array_equal(read_take(take.audio), new)
    assert latent_file(take.audio).is_file() and latent_file(sound.takes[0].audio).is_file()


def test_a_reroll_is_reproducible_from_its_seed(pipe, edited, tmp_path):
    project, _, first = edited
    again = reroll_region(pipe, project, 0, 0, 0.5, 1.0, seed=7, folder=tmp_path / "again")
    np.testing.assert_array_equal(again.audio, first.audio)
    other = reroll_region(pipe, project, 0, 0, 0.5, 1.0, seed=8, folder=None)
    assert not np.array_equal(other.audio, first.audio)
    assert np.array_equal(outside(other.audio, other.region), outside(first.audio, first.region))
    # A prompt for the region alone: other audio there, recorded with the edit.
    prompted = reroll_region(pipe, project, 0, 0, 0.5, 1.0, seed=7, prompt="heavy rain", folder=None)
    assert not np.array_equal(prompted.audio, first.audio)
    assert np.array_equal(outside(prompted.audio, prompted.region), outside(first.audio, first.region))
    assert prompted.rendered.project.sounds[0].takes[1].edit.prompt == "heavy rain"


def test_without_latent_files_the_flow_runs_again_to_the_same_result(pipe, edited, tmp_path):
    project, folder, first = edited
    saved = first.rendered.project.save(tmp_path / "p.selva.json")
    for f in folder.glob("*.latent.npz"):
        f.unlink()
    pipe.clear_caches()
    # A take of a project file without latent files: its latents made again by its own flow.
    again = reroll_region(pipe, Project.load(saved), 0, 0, 0.5, 1.0, seed=7, folder=None)
    np.testing.assert_array_equal(again.audio, first.audio)
    # The edited take's files gone too: plain `render` says how to make it again...
    for f in folder.iterdir():
        if "region" in f.name:
            f.unlink()
    with pytest.raises(InputError, match="sound 1 take 2 is a region re-roll whose audio is gone"):
        render(pipe, Project.load(saved), tmp_path / "plain")
    # ...and `render_with_edits` (selva render's, the service's) makes it again from its edit entry.
    rendered = render_with_edits(pipe, Project.load(saved), tmp_path / "takes")
    assert rendered.generated == [(0, 1)]
    np.testing.assert_array_equal(rendered.take_audio(0), first.audio)


def test_a_long_span_runs_only_the_windows_the_region_touches(pipe, tmp_path):
    project = draft_takes(Project(sounds=(Sound("rain"),), duration=9.0), seed=5, steps=2)
    rendered = render(pipe, project, tmp_path / "takes")
    assert rendered.windows == 2  # 0-8 s and 0.96-9 s
    for (start, end), touched in (((0.2, 0.6), {0}), ((8.2, 8.9), {1}), ((4.0, 4.5), {0, 1})):
        seen: set[int] = set()

        def step_end(p, i, t, state, seen=seen):
            seen.add(state["window"])

        result = reroll_region(pipe, rendered.project, 0, 0, start, end, seed=9, folder=None,
                               callback_on_step_end=step_end)  # fmt: skip
        assert seen == touched
        original = rendered.take_audio(0)
        assert np.array_equal(outside(result.audio, result.region), outside(original, result.region))
        inner = slice(result.region.start_sample + 800, result.region.end_sample - 800)
        assert np.abs(result.audio[inner] - original[inner]).max() > 1e-3


# -- the command line ----------------------------------------------------------------------------------


COMMON = ["--variant", "tiny_16k", "--device", "cpu", "--precision", "fp32", "-q"]


def test_selva_edit_writes_the_edited_take_and_delivers_the_mix_and_bundle_again(tmp_path, clip, tiny_hub):
    saved = draft_takes(Project(sounds=(Sound("dog barking"),), video=str(clip)), seed=3, steps=2).save(
        tmp_path / "cli.selva.json"
    )
    out = tmp_path / "out"
    assert main(["render", str(saved), "--out", str(out), *COMMON]) == 0
    rendered = Project.load(saved)
    assert main(["edit", str(saved), "--sound", "1", "--region", "0.5", "1.0", "--seed", "7",
                 "--out", str(out), "--bundle", *COMMON]) == 0  # fmt: skip
    project = Project.load(saved)
    sound = project.sounds[0]
    assert len(sound.takes) == 2 and sound.chosen == 1
    assert sound.takes[1].edit == Edit(0, 0.48, 1.024, None) and sound.takes[1].seed == 7
    original, new = read_take(rendered.sounds[0].takes[0].audio), read_take(sound.takes[1].audio)
    region = widen(0.5, 1.0, duration=2.0, sample_rate=RATE, hop_length=HOP)
    assert np.array_equal(outside(new, region), outside(original, region))
    assert (out / "cli_mix.flac").is_file() and (out / "cli_mix.mp4").is_file()
    assert json.loads(saved.read_text())["sounds"][0]["takes"][1]["edit"]["source"] == 0
    # --bundle: the zip named for the edited take's seed, holding the files just delivered.
    with zipfile.ZipFile(out / "1-dog-barking_seed7.zip") as zf:
        assert zf.namelist() == bundle_names(project, video=True)
        assert zf.read("1-dog-barking_seed7_mix.mp4") == (out / "cli_mix.mp4").read_bytes()
        assert zf.read("1-dog-barking_seed7.selva.json") == saved.read_bytes()
    assert not list(out.glob("*.part*"))  # written whole, in place


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sound", "1", "--region", "1.0", "0.5"], "end after it starts"),
        (["--sound", "1", "--region", "0.5", "3"], "past the span's end"),
        (["--sound", "2", "--region", "0.5", "1"], "there is no sound 2"),
        (["--sound", "1", "--take", "3", "--region", "0.5", "1"], "sound 1 has no take 3"),
        (["--sound", "1", "--region", "0.5", "0.51"], "the shortest is 1 latent frame"),
        (["--sound", "1", "--region", "0.5", "1", "--seed", "-4"], "seed"),
    ],
)
def test_selva_edit_refuses_bad_inputs_before_loading(tmp_path, capsys, tiny_hub, args, message):
    project = draft_takes(Project(sounds=(Sound("rain"),), duration=2.0, variant="tiny_16k"), seed=1)
    saved = project.save(tmp_path / "p.selva.json")
    # no such weights folder: had a check let it through, loading would fail with another message
    code = main(["edit", str(saved), *args, "--weights-dir", str(tmp_path / "none"), "-q"])
    assert code == 2
    assert message in capsys.readouterr().err


# -- the API ---------------------------------------------------------------------------------------------


def test_the_service_rerolls_a_region_into_a_new_folder(pipe, edited):
    from selva.serving import GenerationService, PipelineSlot

    project, _, first = edited
    service = GenerationService(PipelineSlot.wrap(pipe))
    with pytest.raises(InputError, match="end after it starts"):
        service.reroll_region(project, 0, 0, 1.0, 0.5)
    result = service.reroll_region(project, 0, 0, 0.5, 1.0, seed=7)
    sound = result.project.sounds[0]
    assert sound.chosen == 1 and sound.takes[1].seed == 7 and sound.takes[1].edit.start == pytest.approx(0.48)
    np.testing.assert_array_equal(read_take(sound.takes[1].audio), first.audio)
    assert "re-rolled with seed 7 as take 2" in result.info and Path(result.mix_audio).is_file()
