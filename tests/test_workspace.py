"""The app's workspace (selva/app/workspace_handlers.py): several sounds as one project, re-rolls, re-mixes,
the project file; its handlers called directly on the tiny pipeline (CPU, fp32)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from media_factory import make_video

from selva.app import handlers
from selva.app.workspace_handlers import (
    IN_THE_MIX,
    MAX_CANDIDATES,
    SHOWN,
    TAKE_CARD,
    USE_THIS_TAKE,
    Current,
    Workspace,
)
from selva.project import MAX_SOUNDS, Project
from selva.serving import PipelineSlot
from selva.spec import InputError

SETTINGS = [2, 4.5, 5, 0, 0, "tiny_16k", 1]  # steps, CFG, seed, duration (auto), start, variant, Candidates
# Section, label, per take slot: card, player, score line, "Use this take".
PER_SOUND = 2 + TAKE_CARD * MAX_CANDIDATES


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("workspace_media") / "clip.mp4", seconds=1.0, audio=True)


@pytest.fixture(scope="module")
def workspace(app_pipe) -> Workspace:
    return Workspace(handlers.Studio(PipelineSlot.wrap(app_pipe)))


def rows(*sounds: tuple[str, str], gains=None, pans=None, mutes=None, solos=None) -> list:
    """`row_inputs`' values: prompts, negatives, gains, pans, mutes, solos over MAX_SOUNDS rows."""
    pad = MAX_SOUNDS - len(sounds)
    return [
        *[p for p, _ in sounds], *[""] * pad,
        *[n for _, n in sounds], *[""] * pad,
        *(gains or [1.0] * MAX_SOUNDS), *(pans or [0.0] * MAX_SOUNDS),
        *(mutes or [False] * MAX_SOUNDS), *(solos or [False] * MAX_SOUNDS),
    ]  # fmt: skip


def mix_values(gains=(1.0,) * MAX_SOUNDS, pans=(0.0,) * MAX_SOUNDS, level=0.0) -> list:
    return [*gains, *pans, *[False] * MAX_SOUNDS, *[False] * MAX_SOUNDS, level]


def sections(values: list) -> list[dict]:
    """Each sound section's visibility update from `show`'s values."""
    return [values[5 + k * PER_SOUND] for k in range(MAX_SOUNDS)]


def cache_counts(pipe) -> tuple:
    caches = (pipe.prompt_cache, pipe.sync_cache)
    return tuple((c.hits, c.misses, len(c)) for c in caches)


@pytest.fixture(scope="module")
def first(workspace, clip) -> list:
    """Two sounds generated as one project (seed 5: sound 1 seed 5, sound 2 seed 6)."""
    return workspace.generate(str(clip), 2, rows(("dog barking", ""), ("car engine", "horn")), SETTINGS, 0.0)


def test_two_sounds_make_one_result_with_both(first):
    assert len(first) == SHOWN + 1 and first[-1] is None  # the restored project is used up
    current = first[0]
    assert isinstance(current, Current) and current.sample_rate == 16_000
    project = current.project
    assert [s.prompt for s in project.sounds] == ["dog barking", "car engine"]
    assert [s.take.seed for s in project.sounds] == [5, 6]
    assert all(Path(s.take.audio).is_file() for s in project.sounds)
    mix_video, info, project_file = first[2]["value"], *first[3:5]
    assert Path(mix_video).suffix == ".mp4" and Path(mix_video).is_file()
    assert "'dog barking' seed 5" in info and "'car engine' seed 6" in info
    assert project_file.endswith(".selva.json")
    assert [s["visible"] for s in sections(first)] == [True, True, False, False]


def test_rerolling_sound_2_leaves_sound_1_bit_for_bit(workspace, first, app_pipe):
    before = first[0].project
    kept = Path(before.sounds[0].take.audio).read_bytes()
    after = workspace.reroll(1, first[0], 2)
    project = after[0].project
    assert project.sounds[0].take.audio == before.sounds[0].take.audio
    assert Path(project.sounds[0].take.audio).read_bytes() == kept
    assert project.sounds[0].takes == before.sounds[0].takes
    sound = project.sounds[1]
    assert len(sound.takes) == 3 and sound.chosen == 1  # two new takes, the first of them in the mix
    assert sound.takes[2].seed == sound.takes[1].seed + 1
    assert not np.array_equal(
        np.load(sound.take.audio), np.load(before.sounds[1].take.audio)
    )  # another seed, another take


def test_moving_a_gain_or_pan_remixes_without_the_model(workspace, first, app_pipe):
    current = first[0]
    counts = cache_counts(app_pipe)
    quiet = mix_values(gains=(0.5, 1.0, 1.0, 1.0))
    out = workspace.remix(current, *quiet)
    assert cache_counts(app_pipe) == counts  # no prompt encoded, no span decoded: no pipeline call
    project = out[0].project
    assert project.sounds[0].gain == 0.5
    assert [s.takes for s in project.sounds] == [s.takes for s in current.project.sounds]  # no new take
    panned = workspace.remix(out[0], *mix_values(pans=(0.0, -0.5, 0.0, 0.0)))
    assert cache_counts(app_pipe) == counts
    assert panned[0].project.sounds[1].pan == -0.5
    import av

    with av.open(panned[2]["value"]) as f:  # the mixed mp4's soundtrack turned stereo with the pan
        assert f.streams.audio[0].codec_context.channels == 2
    assert "re-mixed" in panned[3]


def test_project_download_and_upload_round_trip(workspace, first, app_pipe, tmp_path):
    project_file = first[4]
    saved = json.loads(Path(project_file).read_text(encoding="utf-8"))
    paths = [t["audio"] for s in saved["sounds"] for t in s["takes"]]
    assert paths and all(p.startswith("takes/") for p in paths)  # relative to the project file
    assert Project.load(project_file).sounds[0].take.audio == first[0].project.sounds[0].take.audio
    # An upload elsewhere (no take files beside it): the sounds, seeds and settings come back ...
    moved = tmp_path / "mine.selva.json"
    shutil.copy(project_file, moved)
    values = workspace.restore(str(moved))
    count, *rest = values
    assert count == 2
    prompts = rest[MAX_SOUNDS - 1 + 2 : MAX_SOUNDS - 1 + 2 + MAX_SOUNDS]
    assert prompts == ["dog barking", "car engine", "", ""]
    restored = values[-1]
    assert values[-9:-2] == [2, 4.5, 5, pytest.approx(1.0), 0.0, "tiny_16k", 1]  # steps ... Candidates
    assert all(t.audio is None for s in restored.sounds for t in s.takes)
    # ... and Generate renders the missing takes again, the same bit for bit.
    again = workspace.generate(
        first[0].project.video, 2, rows(("dog barking", ""), ("car engine", "horn")),
        [2, 4.5, 5, restored.duration, 0, "tiny_16k", 1], 0.0, restored,
    )  # fmt: skip
    for old, new in zip(first[0].project.sounds, again[0].project.sounds, strict=True):
        assert new.take.seed == old.take.seed
        assert np.array_equal(np.load(new.take.audio), np.load(old.take.audio))
    # A file in this server's outputs keeps its takes: Generate then runs no model at all.
    counts = cache_counts(app_pipe)
    values = workspace.restore(again[4])
    kept = workspace.generate(
        first[0].project.video, 2, rows(("dog barking", ""), ("car engine", "horn")),
        [2, 4.5, 5, values[-1].duration, 0, "tiny_16k", 1], 0.0, values[-1],
    )  # fmt: skip
    assert cache_counts(app_pipe) == counts
    assert [s.take.audio for s in kept[0].project.sounds] == [s.take.audio for s in again[0].project.sounds]


def test_an_empty_row_is_refused_with_what_to_do(workspace, clip):
    import gradio as gr

    with pytest.raises(gr.Error, match="Sound 2 has no prompt"):
        workspace.generate(str(clip), 2, rows(("dog barking", ""), ("", "")), SETTINGS, 0.0)


def take_cards(values: list, k: int) -> list[list]:
    """Sound k's take cards' values (card, player, score line, "Use this take") from `show`'s values."""
    base = 5 + k * PER_SOUND + 2
    return [values[base + t * TAKE_CARD : base + (t + 1) * TAKE_CARD] for t in range(MAX_CANDIDATES)]


def test_each_take_is_shown_once_with_its_seed_keep_and_use_this_seed(workspace, clip):
    """One sound, two candidates: two take cards side by side, each with its seed, Keep, Use this seed."""
    import gradio as gr

    values = workspace.generate(
        str(clip), 1, rows(("dog barking", "")), [2, 4.5, 11, 0, 0, "tiny_16k", 2], 0.0
    )  # fmt: skip
    current = values[0]
    cards = take_cards(values, 0)
    assert [c[0]["visible"] for c in cards] == [True, True, False, False]
    assert [c[1]["label"] for c in cards[:2]] == ["Take 1 · seed 11 (in the mix)", "Take 2 · seed 12"]
    assert [c[2]["visible"] for c in cards[:2]] == [False, False]  # not scored: no score line
    # Both cards keep the button, so their rows line up; on the chosen take it is disabled and says so.
    faces = [(c[3]["value"], c[3]["interactive"]) for c in cards[:2]]
    assert faces == [(IN_THE_MIX, False), (USE_THIS_TAKE, True)]
    assert all(c[3]["visible"] for c in cards[:2])
    assert all(Path(c[1]["value"]).suffix == ".flac" for c in cards[:2])

    kept, text, files = workspace.keep_take(0, 1, current, [])
    assert len(kept) == 1 and kept[0].seed == 12 and "dog barking · seed 12 · 1.00 s of clip.mp4" in text
    assert files["value"] == [current.players[(0, 1)]] and Path(files["value"][0]).is_file()
    again, _, _ = workspace.keep_take(0, 1, current, kept)
    assert again == kept  # one take, kept once
    assert workspace.take_seed(0, 1, current) == (12, 1)
    assert workspace.take_seed(0, 3, current) == (gr.update(), gr.update())  # an empty card: nothing


def test_remix_before_any_generate_changes_nothing(workspace):
    assert all(v == {"__type__": "update"} for v in workspace.remix(None, *mix_values()))


def test_the_bundle_holds_the_mix_the_tracks_each_sounds_take_and_the_project(first, tmp_path):
    import zipfile

    import av

    from selva.bundle import bundle_names, write_bundle
    from selva.delivery import resample
    from selva.render import read_take

    project, bundle = first[0].project, first[-2]  # the last of `show`'s values, then the restored project
    assert Path(bundle).name == "1-dog-barking_seed5+2-car-engine_seed6.zip"
    with zipfile.ZipFile(bundle) as zf:
        names = zf.namelist()
        assert names == bundle_names(project, video=True) == [
            "1-dog-barking_seed5+2-car-engine_seed6_mix.mp4",
            "1-dog-barking_seed5+2-car-engine_seed6_tracks.mp4",
            "1-dog-barking_seed5.flac", "1-dog-barking_seed5.wav",
            "2-car-engine_seed6.flac", "2-car-engine_seed6.wav",
            "1-dog-barking_seed5+2-car-engine_seed6.selva.json",
        ]  # fmt: skip
        assert zf.read(names[0]) == Path(first[2]["value"]).read_bytes()
        assert zf.read(names[-1]) == Path(first[4]).read_bytes()
        zf.extractall(tmp_path / "out")
    with av.open(str(tmp_path / "out" / names[1])) as f:  # the mix, one track per sound, the original
        assert len(f.streams.audio) == 4
    for k, sound in enumerate(project.sounds):
        # Delivered at 48 kHz (the default): the exact take resampled by the library, in 16 bits.
        exact = resample(read_take(sound.take.audio), 16_000, 48_000, duration=project.duration)
        for name in names[2 + 2 * k : 4 + 2 * k]:
            with av.open(str(tmp_path / "out" / name)) as f:
                stream = f.streams.audio[0]
                wave = np.concatenate([fr.to_ndarray().reshape(-1) for fr in f.decode(stream)])
                assert stream.rate == 48_000 and len(wave) == len(exact)
                scale = 32768.0 if wave.dtype == np.int16 else 1.0
                assert np.max(np.abs(wave / scale - exact)) < 2 / 32768

    # Whole or nothing: a take whose audio is gone stops the bundle, and no zip (nor a part) is left.
    from dataclasses import replace

    gone = project.with_sound(
        1, replace(project.sounds[1], takes=(replace(project.sounds[1].take, audio=None),))
    )
    target = tmp_path / "broken.zip"
    with pytest.raises(InputError, match="sound 2's chosen take has no audio"):
        write_bundle(target, gone, 16_000, project_file=first[4], mix_video=first[2]["value"],
                     tracks_video=first[2]["value"])  # fmt: skip
    assert list(tmp_path.glob("*broken*")) == [] and not any(
        p.name.startswith(".") for p in tmp_path.iterdir()
    )


def test_history_keeps_small_settings_and_restores_them(workspace, first, tmp_path):
    import gradio as gr

    from selva.app import history

    stored, listing = history.remember([], first[0])
    assert len(stored) == 1 and listing["value"] == 0
    assert "dog barking (seed 5); car engine (seed 6) · clip.mp4" in stored[0]["label"]
    assert len(json.dumps(stored)) < 2000  # settings only: no audio, no take files
    assert all(t["audio"] is None for s in stored[0]["project"]["sounds"] for t in s["takes"])
    remixed = workspace.remix(first[0], *mix_values(gains=(0.5, 1.0, 1.0, 1.0)))[0]
    stored, _ = history.remember(stored, remixed)  # the same result re-mixed: its entry is replaced
    assert len(stored) == 1 and stored[0]["project"]["sounds"][0]["gain"] == 0.5

    clip_root = Path(first[0].project.video).parent
    values = history.restore(stored, 0, [clip_root])
    *restored, video = values
    assert restored[0] == 2 and video["value"] == str(Path(first[0].project.video).resolve())
    prompts = restored[MAX_SOUNDS + 2 : 2 * MAX_SOUNDS + 2]
    assert prompts == ["dog barking", "car engine", "", ""]
    assert restored[-9:-2] == [2, 4.5, 5, pytest.approx(1.0), 0.0, "tiny_16k", 1]  # steps ... Candidates
    # A path the server does not hold (or one a browser made up) is not put back.
    assert history.restore(stored, 0, [tmp_path])[-1] == gr.update()
    with pytest.raises(gr.Error, match="Pick an earlier result"):
        history.restore(stored, 3, [tmp_path])


# -- scores on the take cards (CLAP) ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def clap(tmp_path_factory, tiny_hub) -> str:
    from tiny_clap import write_tiny_clap

    return str(write_tiny_clap(tmp_path_factory.mktemp("clap") / "hub"))


def test_scored_takes_show_their_line_best_first_and_the_choice_stays(app_pipe, clip, clap):
    from selva.project_scores import best_take, score_line

    scoring = Workspace(handlers.Studio(PipelineSlot.wrap(app_pipe), scorer=clap))
    values = scoring.generate(
        str(clip), 2, rows(("dog barking", ""), ("car engine", "")), [2, 4.5, 31, 0, 0, "tiny_16k", 3], 0.0,
        score=True,
    )  # fmt: skip
    current = values[0]
    for k, sound in enumerate(current.project.sounds):
        assert sound.chosen == 0 and all(t.score is not None for t in sound.takes)  # the choice: not moved
        best = best_take(sound.takes)
        order = sorted(range(3), key=lambda i: (-sound.takes[i].score.score, i))
        assert order[0] == best
        cards = take_cards(values, k)[:3]
        seeds = [sound.takes[i].seed for i in order]
        assert [int(c[1]["label"].split("seed ")[1].split()[0]) for c in cards] == seeds  # best first
        assert "★ best match" in cards[0][1]["label"]
        assert not any("★" in c[1]["label"] for c in cards[1:])
        assert [c[2]["value"] for c in cards] == [score_line(sound.takes[i].score) for i in order]
        assert all(c[2]["visible"] for c in cards)
        in_mix = order.index(0)  # "Use this take" disabled on the chosen one only, wherever it sits
        assert [c[3]["interactive"] for c in cards] == [i != in_mix for i in range(3)]
        assert [c[3]["value"] == IN_THE_MIX for c in cards] == [i == in_mix for i in range(3)]
    # "Use this take" on the first card (the best) puts that very take in the mix.
    best_seed = current.project.sounds[0].takes[best_take(current.project.sounds[0].takes)].seed
    used = scoring.use_take(0, 0, current, *mix_values())
    assert used[0].project.sounds[0].take.seed == best_seed


def test_without_clap_the_result_still_shows_with_a_warning(app_pipe, clip):
    # A checkpoint no test loads: scorers stay resident per process, and test_scoring.py keeps a
    # tiny CLAP under the default id.
    studio = handlers.Studio(PipelineSlot.wrap(app_pipe), scorer="laion/clap-htsat-unfused")
    with pytest.warns(UserWarning, match="The takes are not scored: not scored: "):
        values = Workspace(studio).generate(
            str(clip), 1, rows(("dog barking", "")), [2, 4.5, 3, 0, 0, "tiny_16k", 2], 0.0, score=True
        )
    cards = take_cards(values, 0)
    assert [c[0]["visible"] for c in cards] == [True, True, False, False]
    assert not cards[0][2]["visible"] and "★" not in cards[0][1]["label"]
    assert "Scores: not scored" in values[3]


# -- delivery: the output sample rate and the loudness target ----------------------------------------------


def audio_rate(path: str) -> int:
    import av

    with av.open(path) as f:
        return f.streams.audio[0].rate


def test_delivery_is_48khz_by_default_or_the_models_rate_at_a_loudness_target(workspace, first, clip):
    assert audio_rate(first[2]["value"]) == 48_000  # the default: what video editors expect
    assert first[0].project.mix.sample_rate == 48_000
    values = workspace.generate(
        str(clip), 2, rows(("dog barking", ""), ("car engine", "horn")), SETTINGS, 0.0,
        sample_rate="model", loudness="-23 LUFS (EBU R128 broadcast)",
    )  # fmt: skip
    assert audio_rate(values[2]["value"]) == 16_000  # tiny_16k's own rate
    assert values[0].project.mix.loudness == -23.0
    assert "LUFS" in values[3]  # the measured loudness is in the info line
    # A re-roll keeps the page's delivery settings too.
    rerolled = workspace.reroll(0, values[0], 1, sample_rate="model", loudness="off")
    assert audio_rate(rerolled[2]["value"]) == 16_000 and rerolled[0].project.mix.loudness is None


# -- region re-roll ---------------------------------------------------------------------------------------


def test_a_region_reroll_keeps_the_rest_of_the_take_and_the_other_sound(workspace, first):
    from selva.app.region_controls import reroll_region
    from selva.render import read_take

    before = first[0].project
    other = Path(before.sounds[1].take.audio).read_bytes()
    values = reroll_region(workspace, 0, first[0], 0.3, 0.6, "", 77)
    assert len(values) == SHOWN
    project = values[0].project
    sound = project.sounds[0]
    edited = sound.takes[-1]
    assert sound.chosen == len(sound.takes) - 1 == len(before.sounds[0].takes)  # appended, chosen
    assert edited.seed == 77 and edited.edit.source == before.sounds[0].chosen
    assert edited.edit.start <= 0.3 and edited.edit.end >= 0.6  # widened to whole latent frames
    assert f"sound 1: {edited.edit.start:.3f}-{edited.edit.end:.3f} s re-rolled with seed 77" in values[3]
    old, new = read_take(before.sounds[0].take.audio), read_take(edited.audio)
    a, b = round(edited.edit.start * 16_000), round(edited.edit.end * 16_000)
    assert np.array_equal(new[..., :a], old[..., :a]) and np.array_equal(new[..., b:], old[..., b:])
    assert not np.array_equal(new[..., a:b], old[..., a:b])  # the region itself is new
    assert Path(project.sounds[1].take.audio).read_bytes() == other  # sound 2: bit for bit
    cards = take_cards(values, 0)  # the edited take on a card, in the mix
    assert any(c[0]["visible"] and "seed 77 (in the mix)" in c[1]["label"] for c in cards)


def test_a_bad_region_is_a_titled_error_before_any_model_runs(workspace, first, app_pipe):
    import gradio as gr

    from selva.app.region_controls import reroll_region

    counts = cache_counts(app_pipe)
    with pytest.raises(gr.Error) as bad:
        reroll_region(workspace, 0, first[0], 0.6, 0.3)
    assert bad.value.title != "Error" and "region" in bad.value.message
    with pytest.raises(gr.Error, match="Start and End"):
        reroll_region(workspace, 1, first[0], None, 0.5)
    with pytest.raises(gr.Error, match="Generate first"):
        reroll_region(workspace, 0, None, 0.1, 0.5)
    # The seed box is text: blank draws a new seed; anything else must be a whole number in range.
    for typed in ("x", "1.5", "-3"):
        with pytest.raises(gr.Error, match="Region seed must be a whole number"):
            reroll_region(workspace, 0, first[0], 0.3, 0.6, "", typed)
    assert cache_counts(app_pipe) == counts
