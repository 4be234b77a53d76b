"""Scores in the project and on the command line: `Take.score`, `selva.project_scores`,
`selva generate --score / --best-of N / --scorer` and `selva render --score`.

The tiny SelVA models (tests/tiny_hub.py, offline) generate; the tiny random CLAP
(tests/tiny_clap.py) scores, written into a Hub cache of its own and passed as a
local folder with --scorer. The session's tiny Hub has no CLAP under the default
repo id, which is how the missing-weights case is tested.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import av
import numpy as np
import pytest
from media_factory import make_video
from tiny_clap import write_tiny_clap

from selva import scoring, spec
from selva.cli import main
from selva.project import Project, Score, Sound, Take
from selva.project_scores import choose_best, score_project
from selva.render import draft_takes, read_take, render
from selva.spec import InputError

COMMON = ["--variant", "tiny_16k", "--device", "cpu", "--precision", "fp32", "--steps", "2"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("score_media") / "clip.mp4", seconds=1.0, audio=True)


@pytest.fixture(scope="module")
def clap_folder(tmp_path_factory, tiny_hub) -> Path:
    """The tiny CLAP as a local folder (the snapshot of a cache of its own)."""
    return write_tiny_clap(tmp_path_factory.mktemp("clap") / "hub")


@pytest.fixture(scope="module")
def scorer(clap_folder):
    return scoring.load_scorer(clap_folder, device="cpu")


def read_audio(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    return samples / 32768.0 if samples.dtype == np.int16 else samples


def expected_scores(scorer, takes: list[Path], prompt: str, negative: str = "", others=()) -> list[float]:
    waves = [read_take(t) for t in takes]
    scores = scorer.score_takes(waves, 16_000, prompt, others=others, negative_prompt=negative)
    return [s.score for s in scores]


# -- the project file -------------------------------------------------------------------------------


def test_a_score_round_trips_through_the_project_file(tmp_path):
    score = Score(agreement=0.31, leakage=0.12, score=0.25, checkpoint="laion/x", leaked_into="rain")
    takes = (Take(seed=1, score=score), Take(seed=2))
    project = Project(sounds=(Sound("dog barking", "rain", takes=takes, chosen=0),), duration=1.0)
    path = project.save(tmp_path / "p.selva.json")
    data = json.loads(path.read_text())
    assert data["version"] == 1
    assert data["sounds"][0]["takes"][0]["score"] == {
        "agreement": 0.31, "leakage": 0.12, "score": 0.25, "checkpoint": "laion/x", "leaked_into": "rain",
    }  # fmt: skip
    assert data["sounds"][0]["takes"][1]["score"] is None
    assert Project.load(path) == project

    # A file written before takes had scores (no "score" key) still loads: unscored.
    for take in data["sounds"][0]["takes"]:
        del take["score"]
    path.write_text(json.dumps(data))
    assert [t.score for t in Project.load(path).sounds[0].takes] == [None, None]


@pytest.mark.parametrize(
    ("score", "message"),
    [
        (dict(agreement=5.0, leakage=None, score=5.0, checkpoint="c"), "agreement must be a similarity"),
        (dict(agreement=0.1, leakage="x", score=0.1, checkpoint="c"), "leakage must be a similarity"),
        (dict(agreement=0.1, leakage=None, score=None, checkpoint="c"), "score must be a number"),
        (dict(agreement=0.1, leakage=None, score=0.1, checkpoint=""), "checkpoint must name"),
        (dict(agreement=0.1, leakage=None, score=0.1, checkpoint="c", colour=1), "misspells a field"),
        ([0.1], "a take's score is a JSON object or null"),
    ],
)
def test_a_bad_score_is_refused_with_the_take_named(tmp_path, score, message):
    project = Project(sounds=(Sound("rain", takes=(Take(seed=1),), chosen=0),), duration=1.0)
    data = project.to_dict()
    data["sounds"][0]["takes"][0]["score"] = score
    with pytest.raises(InputError, match=message):
        Project.from_dict(data)
    with pytest.raises(InputError, match="sound 1 take 1: score"):
        Take(seed=1, score=Score(0.1, None, float("nan"), "c")).checked("sound 1 take 1")


def test_score_project_measures_leakage_against_the_other_sounds(pipe, scorer, clip, tmp_path):
    project = Project(sounds=(Sound("dog barking"), Sound("car engine", "rain")), video=str(clip))
    rendered = render(pipe, draft_takes(project, seed=5, count=2, steps=2), tmp_path / "takes")
    scored = score_project(scorer, rendered)
    cases = [("dog barking", "", "car engine"), ("car engine", "rain", "dog barking")]
    for k, (prompt, negative, other) in enumerate(cases):
        takes = scored.sounds[k].takes
        waves = [rendered.audio[(k, t)] for t in range(2)]
        rate = rendered.sample_rate
        want = scorer.score_takes(waves, rate, prompt, others=[other], negative_prompt=negative)
        assert [t.score.score for t in takes] == [w.score for w in want]
        assert [t.score.leaked_into for t in takes] == [w.leaked_into for w in want]
        assert {t.score.leaked_into for t in takes} <= {other, negative}
    # Only the sounds asked for; choosing the best picks the highest score.
    only = score_project(scorer, rendered, sounds=[1])
    assert [t.score for t in only.sounds[0].takes] == [None, None]
    best = choose_best(scored)
    for sound in best.sounds:
        assert sound.take.score.score == max(t.score.score for t in sound.takes)


# -- the command line ----------------------------------------------------------------------------------


def test_best_of_3_keeps_the_best_scored_take_and_names_the_dropped_seeds(
    tiny_hub, clip, clap_folder, scorer, tmp_path, capsys
):
    out, saved = tmp_path / "out", tmp_path / "best.selva.json"
    argv = [
        "generate", str(clip), "--prompt", "dog barking", "--negative", "wind", "--seed", "7",
        "--best-of", "3", "--scorer", str(clap_folder), "--out", str(out), "--save-project", str(saved),
        "--sample-rate", "model", *COMMON,  # the model's rate: the kept file is compared with the raw take
    ]  # fmt: skip
    assert main(argv) == 0
    log = capsys.readouterr().err

    sound = Project.load(saved).sounds[0]
    assert [t.seed for t in sound.takes] == [7, 8, 9]  # every take kept in the project
    scores = expected_scores(scorer, [Path(t.audio) for t in sound.takes], "dog barking", "wind")
    assert [t.score.score for t in sound.takes] == pytest.approx(scores, abs=1e-6)
    best = int(np.argmax(scores))
    assert sound.chosen == best
    # Only the chosen take's files, under the names of a single take.
    assert sorted(p.name for p in out.iterdir()) == ["clip.flac", "clip.mp4", "clip_scores.json"]
    np.testing.assert_allclose(read_audio(out / "clip.flac"), read_take(sound.take.audio), atol=1e-4)

    dropped = [7 + k for k in range(3) if k != best]
    kept = re.search(r"best of 3 for 1\. 'dog barking': kept seed (\d+): score (-?[\d.]+)", log)
    assert kept is not None and int(kept[1]) == 7 + best
    assert float(kept[2]) == pytest.approx(scores[best], abs=1e-3)
    named = [int(s) for s in re.findall(r"seed (\d+) \(score -?[\d.]+\)", log.split("dropped", 1)[1])]
    assert named == dropped
    assert len(re.findall(r"'dog barking' seed \d+: score", log)) == 3  # one line per take

    data = json.loads((out / "clip_scores.json").read_text())
    takes = data["sounds"][0]["takes"]
    assert [t["seed"] for t in takes] == [7, 8, 9] and [t["chosen"] for t in takes].index(True) == best
    assert data["formula"] == f"score = agreement - {spec.LEAKAGE_WEIGHT:g} * max(0, leakage)"

    # `selva render --score` scores again into the file and beside the mix; the choice stays.
    render_argv = [
        "render",
        str(saved),
        "--score",
        "--scorer",
        str(clap_folder),
        "--out",
        str(tmp_path / "r"),
    ]
    assert main([*render_argv, *COMMON[:-2]]) == 0  # render has no --steps
    again = Project.load(saved).sounds[0]
    assert again.chosen == best and [t.score for t in again.takes] == [t.score for t in sound.takes]
    assert (tmp_path / "r" / "best_scores.json").is_file()


def test_best_of_with_stems_keeps_each_sounds_best_and_mixes_them(
    tiny_hub, clip, clap_folder, tmp_path, capsys
):
    out, saved = tmp_path / "out", tmp_path / "stems.selva.json"
    argv = [
        "generate", str(clip), "--prompt", "dog barking", "--prompt", "car engine", "--seed", "20",
        "--best-of", "2", "--scorer", str(clap_folder), "--out", str(out), "--save-project", str(saved),
        *COMMON,
    ]  # fmt: skip
    assert main(argv) == 0
    log = capsys.readouterr().err
    project = Project.load(saved)
    # Sound j's takes: seed + 2j + k.
    assert [[t.seed for t in s.takes] for s in project.sounds] == [[20, 21], [22, 23]]
    for sound, other in zip(project.sounds, ["car engine", "dog barking"], strict=True):
        assert sound.take.score.score == max(t.score.score for t in sound.takes)
        assert {t.score.leaked_into for t in sound.takes} == {other}
    assert (out / "clip_mix.flac").is_file() and (out / "clip_tracks.mp4").is_file()
    assert "best of 2 for 1. 'dog barking'" in log and "best of 2 for 2. 'car engine'" in log


def test_scoring_with_the_clap_weights_missing_offline_still_writes_every_output(
    tiny_hub, clip, tmp_path, capsys
):
    out, saved = tmp_path / "out", tmp_path / "p.selva.json"
    argv = [
        "generate", str(clip), "--prompt", "dog barking", "--samples", "2", "--score", "--out", str(out),
        "--save-project", str(saved), *COMMON,
    ]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["clip_1.flac", "clip_1.mp4", "clip_2.flac", "clip_2.mp4"]
    assert "warning: scoring is off for this run; the outputs are written unscored" in err
    assert spec.SCORER_CHECKPOINT in err and "HF_HUB_OFFLINE=1" in err and "model.safetensors" in err
    assert [t.score for t in Project.load(saved).sounds[0].takes] == [None, None]

    # --best-of without scores keeps the first take, and says so.
    argv = ["generate", str(clip), "--prompt", "rain", "--seed", "3", "--best-of", "2", "--out", str(out)]
    argv += COMMON
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "--best-of without scores keeps each sound's first take (seed 3)" in err
    assert (out / "clip.flac").is_file() and not (out / "clip_scores.json").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--best-of", "5"], "argument --best-of: must be a whole number from 2 to 4"),
        (["--best-of", "1"], "argument --best-of: must be a whole number from 2 to 4"),
        (["--best-of", "2", "--samples", "2"], "--best-of keeps one take per sound"),
        (["--scorer", "laion/other_clap"], "--scorer picks the CLAP for --score or --best-of"),
        (["--score", "--scorer", "not//a repo"], "argument --scorer: expected a Hub repo id"),
    ],
)
def test_score_options_are_checked_before_any_model_loads(clip, tmp_path, capsys, extra, message):
    # An unknown variant would fail at load: these fail first, with usage's exit code.
    argv = ["generate", str(clip), "--prompt", "rain", "--variant", "no_such_variant", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# -- what the app shows: a take card's line, the takes by score ---------------------------------------


def test_a_take_cards_line_and_the_takes_ordered_by_score_with_the_best_marked():
    from selva.project_scores import score_line, scored_takes, takes_by_score

    assert score_line(Score(0.3149, 0.1211, 0.2543, "c")) == "match 0.31 · leak 0.12 · score 0.25"
    assert score_line(Score(-0.05, None, -0.05, "c")) == "match -0.05 · leak - · score -0.05"
    takes = (
        Take(seed=1, score=Score(0.2, 0.1, 0.15, "c")),
        Take(seed=2),  # unscored: after the scored ones
        Take(seed=3, score=Score(0.4, 0.0, 0.4, "c")),
        Take(seed=4, score=Score(0.4, None, 0.4, "c")),  # equal to seed 3: the first of equals is best
    )
    sound = Sound("dog barking", takes=takes, chosen=0)
    assert [(i, t.seed, best) for i, t, best in takes_by_score(sound)] == [
        (2, 3, True), (3, 4, False), (0, 1, False), (1, 2, False),
    ]  # fmt: skip
    rows = scored_takes(Project(sounds=(sound,), duration=1.0))
    assert [(r.take, r.seed, r.best, r.chosen) for r in rows] == [
        (0, 1, False, True), (2, 3, True, False), (3, 4, False, False),
    ]  # fmt: skip
    assert takes_by_score(Sound("rain")) == []
