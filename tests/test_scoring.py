"""selva.scoring: CLAP prompt agreement, leakage and ranking, on a tiny random CLAP in a Hub cache.

The tiny CLAP (tests/tiny_clap.py) sits in a Hugging Face cache under the
default scorer repo id and is loaded with HF_HUB_OFFLINE=1 through the same
`from_pretrained` calls production makes. Its window is 2 s (10 s for the real
checkpoints), so a 5 s take spans 3 windows.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from tiny_clap import WINDOW_SECONDS, tiny_clap_config, tiny_clap_files, write_tiny_clap
from tiny_hub import TinyHub, write_cached_file

from selva import scoring, spec
from selva.spec import InputError, WeightsError

RATE = 48_000  # CLAP's rate: audio at this rate is not resampled
REPO = spec.SCORER_CHECKPOINT


@pytest.fixture(scope="module")
def clap_hub(tmp_path_factory):
    """A Hub cache holding only the tiny CLAP under the default repo id, offline, for this module."""
    hub = TinyHub(root=tmp_path_factory.mktemp("clap_hub"), files={REPO: tiny_clap_files()}, variants={})
    write_tiny_clap(hub.cache_dir)
    mp = pytest.MonkeyPatch()
    hub.activate(mp, offline=True)
    yield hub
    mp.undo()


@pytest.fixture(scope="module")
def scorer(clap_hub):
    return scoring.load_scorer(device="cpu")


@pytest.fixture(scope="module")
def direct(clap_hub):
    """The tiny CLAP loaded on its own, for similarities computed straight from `ClapModel`."""
    from transformers import ClapModel, ClapProcessor

    folder = clap_hub.snapshot(REPO)
    return ClapModel.from_pretrained(folder).eval(), ClapProcessor.from_pretrained(folder)


def noise(seconds: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(round(seconds * rate))).astype(np.float32)


def direct_similarities(direct, audio: np.ndarray, prompts: list[str]) -> np.ndarray:
    """Per prompt: the cosine similarity from ClapModel's forward, averaged over equal windows."""
    model, processor = direct
    n_windows = int(np.ceil(audio.size / (WINDOW_SECONDS * RATE)))
    sims = []
    for piece in np.array_split(audio, n_windows):
        row = []
        for prompt in prompts:  # one prompt at a time: no padding in the text batch
            text = processor.tokenizer([prompt], return_tensors="pt")
            mel = processor.feature_extractor(piece, sampling_rate=RATE, return_tensors="pt")
            with torch.no_grad():
                out = model(
                    input_ids=text["input_ids"],
                    attention_mask=text["attention_mask"],
                    input_features=mel["input_features"],
                )
            row.append(float((out.audio_embeds @ out.text_embeds.T)[0, 0]))
        sims.append(row)
    return np.mean(sims, axis=0)


# -- the scores ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [1.5, 5.0])
def test_scores_are_clap_similarities(scorer, direct, seconds):
    audio = noise(seconds)
    prompt, negative, others = "dog barking", "rain", ["car engine", "birds"]
    got = scorer.score(audio, RATE, prompt, others=others, negative_prompt=negative)

    want = direct_similarities(direct, audio, [prompt, negative, *others])
    assert got.windows == int(np.ceil(seconds / WINDOW_SECONDS))
    assert got.agreement == pytest.approx(want[0], abs=1e-5)
    k = int(np.argmax(want[1:]))
    assert got.leaked_into == [negative, *others][k]
    assert got.leakage == pytest.approx(want[1 + k], abs=1e-5)
    assert got.score == pytest.approx(want[0] - spec.LEAKAGE_WEIGHT * max(0.0, want[1 + k]), abs=1e-5)
    assert got.checkpoint == REPO


def test_ranking_follows_the_formula(scorer):
    takes = [noise(3.0, seed=s) for s in range(4)]
    scores = scorer.score_takes(takes, RATE, "dog barking", others=["car engine"], negative_prompt="music")
    for s in scores:
        assert s.score == pytest.approx(s.agreement - spec.LEAKAGE_WEIGHT * max(0.0, s.leakage), abs=1e-12)
    ranked = scoring.rank_takes(scores)
    assert [r.rank for r in ranked] == [1, 2, 3, 4]
    assert [r.best for r in ranked] == [True, False, False, False]
    assert sorted(r.index for r in ranked) == [0, 1, 2, 3]
    assert [r.score for r in ranked] == sorted(scores, key=lambda s: -s.score)
    # Scored one by one, each take gets the same numbers as in the batch.
    alone = scorer.score(takes[2], RATE, "dog barking", others=["car engine"], negative_prompt="music")
    assert alone.score == pytest.approx(scores[2].score, abs=1e-6)

    heavier = scorer.score_takes(
        takes, RATE, "dog barking", others=["car engine"], negative_prompt="music", weight=2.0
    )
    for s in heavier:
        assert s.score == pytest.approx(s.agreement - 2.0 * max(0.0, s.leakage), abs=1e-12)


def test_ranking_score_and_ties():
    assert scoring.ranking_score(0.4, None) == 0.4
    assert scoring.ranking_score(0.4, -0.3) == 0.4  # only positive leakage costs
    assert scoring.ranking_score(0.4, 0.2, weight=0.5) == pytest.approx(0.3)
    same = scoring.TakeScore(0.3, None, None, 0.3, 1, REPO)
    better = scoring.TakeScore(0.5, 0.1, "x", 0.45, 1, REPO)
    ranked = scoring.rank_takes([same, better, same])
    assert [(r.index, r.rank, r.best) for r in ranked] == [(1, 1, True), (0, 2, False), (2, 3, False)]
    assert scoring.rank_takes([]) == []
    assert better.to_dict() == {
        "agreement": 0.5,
        "leakage": 0.1,
        "leaked_into": "x",
        "score": 0.45,
        "windows": 1,
        "checkpoint": REPO,
    }


def test_no_rivals_means_no_leakage(scorer):
    audio = noise(1.0)
    alone = scorer.score(audio, RATE, "dog barking")
    assert alone.leakage is None and alone.leaked_into is None
    assert alone.score == alone.agreement
    # Blank prompts and copies of the take's own prompt are not rivals.
    same = scorer.score(audio, RATE, "dog barking", others=["", "  ", "dog barking"], negative_prompt=" ")
    assert same == alone


def test_audio_forms_and_rates(scorer):
    left, right = noise(2.5, seed=1), noise(2.5, seed=2)
    stereo = scorer.score(np.stack([left, right]), RATE, "rain")
    mono = scorer.score((left + right) / 2, RATE, "rain")
    assert stereo.agreement == pytest.approx(mono.agreement, abs=1e-6)
    assert scorer.score(torch.from_numpy(left), RATE, "rain") == scorer.score(left, RATE, "rain")
    # A 16 kHz take is resampled to the model's 48 kHz first.
    low = noise(2.5, rate=16_000, seed=3)
    assert scorer.score(low, 16_000, "rain") == scorer.score(
        scoring.resample(low, 16_000, RATE), RATE, "rain"
    )


def test_fusion_checkpoints_score_deterministically(clap_hub):
    """CLAP's fusion extractor flags a random clip as "longer" when none is; the scorer flags none."""
    import json

    from transformers import ClapFeatureExtractor, ClapModel, ClapProcessor

    config = tiny_clap_config(len(json.loads(tiny_clap_files()["vocab.json"])))
    config.audio_config.enable_fusion = True
    config.audio_config.fusion_type = "aff_2d"
    torch.manual_seed(0)
    processor = ClapProcessor.from_pretrained(clap_hub.snapshot(REPO))
    processor.feature_extractor = ClapFeatureExtractor(
        feature_size=16, max_length_s=WINDOW_SECONDS, truncation="fusion", padding="repeatpad"
    )
    fused = scoring.Scorer(ClapModel(config), processor, checkpoint="tiny-fusion")
    audio = noise(5.0)  # 3 windows: a random flag would pick one of them per call
    first = fused.score(audio, RATE, "dog barking", others=["rain"])
    assert all(fused.score(audio, RATE, "dog barking", others=["rain"]) == first for _ in range(4))


def test_resample_is_accurate():
    t16 = np.arange(16_000) / 16_000
    t48 = np.arange(48_000) / 48_000
    tone = np.sin(2 * np.pi * 440 * t16).astype(np.float32)
    up = scoring.resample(tone, 16_000, 48_000)
    assert up.shape == (48_000,) and up.dtype == np.float32
    inner = slice(1_000, -1_000)  # away from the filter's edges
    np.testing.assert_allclose(up[inner], np.sin(2 * np.pi * 440 * t48)[inner], atol=2e-3)
    assert np.array_equal(scoring.resample(tone, 16_000, 16_000), tone)
    # The length is the exact ratio, rounded: 4411 * 48000 / 44100 = 4801.09.
    assert scoring.resample(np.ones(4411, np.float32), 44_100, 48_000).shape == (4801,)
    assert scoring.resample(np.ones(4410, np.float32), 44_100, 48_000).shape == (4800,)


def test_windows_are_equal_and_cover_the_take():
    pieces = scoring.windows(np.arange(25), 10)
    assert [p.size for p in pieces] == [9, 8, 8]
    assert np.array_equal(np.concatenate(pieces), np.arange(25))
    assert len(scoring.windows(np.arange(10), 10)) == 1


@pytest.mark.parametrize(
    ("audio", "rate", "prompt", "needle"),
    [
        (np.zeros(0, np.float32), RATE, "rain", "not empty"),
        (np.zeros((2, 2, 8), np.float32), RATE, "rain", "channels"),
        (np.zeros((4800, 2), np.float32), RATE, "rain", "transpose"),
        (np.array([0.0, np.nan], np.float32), RATE, "rain", "NaN"),
        (np.zeros(100, np.float32), 0, "rain", "sample_rate"),
        (np.zeros(100, np.float32), RATE, "  ", "prompt is empty"),
        (np.zeros(100, np.float32), RATE, "x" * (spec.MAX_PROMPT_CHARS + 1), "prompt"),
    ],
)
def test_bad_inputs_are_input_errors(scorer, audio, rate, prompt, needle):
    with pytest.raises(InputError, match=needle):
        scorer.score(audio, rate, prompt)


def test_others_must_be_a_list(scorer):
    with pytest.raises(InputError, match="list of prompts"):
        scorer.score(noise(0.5), RATE, "rain", others="car engine")


# -- loading ------------------------------------------------------------------------------------------


def test_the_scorer_stays_resident(scorer, clap_hub):
    assert scoring.load_scorer(device="cpu") is scorer
    assert scoring.load_scorer(REPO, device="cpu") is scorer
    assert scorer.sample_rate == RATE and scorer.window_samples == WINDOW_SECONDS * RATE


def test_a_local_folder_is_a_checkpoint(scorer, clap_hub):
    other = scoring.load_scorer(clap_hub.snapshot(REPO), device="cpu")
    assert other is not scorer
    audio = noise(1.0)
    assert other.score(audio, RATE, "rain").agreement == scorer.score(audio, RATE, "rain").agreement


def test_missing_weights_offline_name_the_files(clap_hub):
    with pytest.raises(WeightsError) as info:
        scoring.load_scorer("laion/clap-htsat-unfused", device="cpu")
    message = str(info.value)
    assert "laion/clap-htsat-unfused" in message and "HF_HUB_OFFLINE=1" in message
    for path, _alt, _ in scoring.CLAP_FILES:
        assert path in message
    assert "model.safetensors or pytorch_model.bin" in message
    assert "generation itself does not need them" in message


def test_partly_cached_weights_name_only_the_missing_files(clap_hub):
    repo = "laion/larger_clap_music"
    files = {p: c for p, c in tiny_clap_files().items() if p not in ("model.safetensors", "vocab.json")}
    for path, content in files.items():
        write_cached_file(clap_hub.cache_dir, repo, path, content)
    with pytest.raises(WeightsError, match="2 of its files") as info:
        scoring.load_scorer(repo, device="cpu")
    listed = [line.strip() for line in str(info.value).splitlines() if line.startswith("  - ")]
    assert [line.split(" (")[0] for line in listed] == [
        "- model.safetensors or pytorch_model.bin",
        "- vocab.json",
    ]


def test_a_damaged_cached_file_is_a_weights_error(clap_hub):
    repo = "laion/clap-htsat-fused"
    for path, content in tiny_clap_files().items():
        write_cached_file(clap_hub.cache_dir, repo, path, content)
    clap_hub.corrupt(repo, "model.safetensors")
    with pytest.raises(WeightsError, match="model.safetensors") as info:
        scoring.load_scorer(repo, device="cpu")
    assert "could not be fetched or read (the generation itself is not affected)" in str(info.value)


def test_online_the_files_are_fetched_and_verified(clap_hub, monkeypatch):
    repo = "laion/larger_clap_music_and_speech"  # not cached yet: served by the fake Hub
    clap_hub.files[repo] = tiny_clap_files()
    try:
        clap_hub.serve(monkeypatch)
        fetched = scoring.load_scorer(repo, device="cpu")
    finally:
        del clap_hub.files[repo]
    assert {(r, p) for r, p, _ in clap_hub.calls if r == repo} == {
        (repo, path) for path, _, _ in scoring.CLAP_FILES
    }
    assert (clap_hub.snapshot(repo) / "model.safetensors").is_file()
    audio = noise(1.0)
    assert fetched.score(audio, RATE, "rain").agreement == pytest.approx(
        scoring.load_scorer(device="cpu").score(audio, RATE, "rain").agreement, abs=1e-6
    )


def test_importing_scoring_loads_no_torch():
    code = "import sys, selva.scoring; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
