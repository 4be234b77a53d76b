"""Smoke test of benchmarks/bench.py on the tiny models, so the benchmark cannot rot.

It checks that the benchmark builds its random checkpoints in the real layouts,
loads them through the production code and reports every field; it never
checks timings (those are judged by running the benchmark at real size).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from tiny_hub import TINY_16K

ROOT = Path(__file__).resolve().parents[1]

STAGE_FIELDS = {"probe", "text", "flow", "flow_per_step", "vae", "vocoder", "total", "mux", "e2e"}
TOP_FIELDS = {
    "load_s",
    "peak_rss_after_load",
    "param_bytes",
    "param_bytes_by_component",
    "rss_over_params",
    "rss_after_first_run",
    "first",
    "reroll",
    "reroll_ratio",
    "mux_1080p",
    "targets",
}


@pytest.fixture(scope="module")
def bench():
    """benchmarks/bench.py as a module (benchmarks/ is not a package on sys.path under every runner)."""
    spec = importlib.util.spec_from_file_location("selva_bench", ROOT / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building the class
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def tiny_args(cache: Path, *extra: str) -> list[str]:
    # A 2 s clip (the shortest with two TextSynch segments), tiny frames, 2 steps: seconds, not minutes.
    return [
        "--variant", TINY_16K, "--cache-dir", str(cache), "--device", "cpu", "--dtype", "fp32",
        "--steps", "2", "--duration", "2", "--size", "96x64", "--mux-size", "320x180",
        "--mux-repeats", "2", "--warmup", "0", *extra,
    ]  # fmt: skip


def bench_json(capsys) -> dict:
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("BENCH_JSON ")]
    assert len(lines) == 1, out
    assert "| end to end" in out  # the table
    return json.loads(lines[0].removeprefix("BENCH_JSON "))


def test_bench_builds_loads_and_reports_every_field(bench, tiny_hub, tmp_path, capsys):
    # The builder runs in a child process, as in real runs, from the tiny variant's configs.
    assert bench.main(tiny_args(tmp_path)) == 0
    result = bench_json(capsys)

    assert result.keys() >= TOP_FIELDS
    assert result["weights"] == "random" and result["variant"] == TINY_16K
    assert STAGE_FIELDS | {"decode", "text_synch"} <= result["first"].keys()
    assert result["reroll"].keys() >= STAGE_FIELDS
    for row in (result["first"], result["reroll"]):
        assert row["audio_finite"] and row["mp4_bytes"] > 0
        assert all(row[k] is not None and row[k] >= 0 for k in STAGE_FIELDS)
    # The re-roll reuses the features: no decode, no TextSynch.
    assert not result["first"]["sync_cache_hit"] and result["reroll"]["sync_cache_hit"]
    assert result["reroll"]["decode"] is None and result["reroll"]["text_synch"] is None
    assert result["param_bytes"] == sum(result["param_bytes_by_component"].values()) > 0
    assert set(result["param_bytes_by_component"]) == {
        "t5",
        "clip",
        "text_synch",
        "generator",
        "vae",
        "vocoder",
    }
    assert result["mux_1080p"]["median_s"] > 0 and len(result["mux_1080p"]["runs_s"]) == 2
    # The 1080p mux target applies only to a 1080p clip; this one is smaller.
    assert result["targets"].keys() == {
        "reroll_ratio",
        "rss_over_params_bytes",
        "rss_after_first_run_over_params_bytes",
    }

    # The weights folder has the real layout and a marker, so a second run builds nothing.
    folder = tmp_path / TINY_16K
    for path in (
        "weights/generator_small_16k_sup_5.pth",
        "weights/video_enc_sup_5.pth",
        "ext_weights/v1-16.pth",
        "ext_weights/best_netG.pt",
        "flan-t5-base/model.safetensors",
        "flan-t5-base/tokenizer.json",
        "DFN5B-CLIP-ViT-H-14-384/open_clip_config.json",
        "DFN5B-CLIP-ViT-H-14-384/open_clip_pytorch_model.bin",
        bench.BUILT_MARKER,
    ):
        assert (folder / path).is_file(), path


def test_bench_on_given_weights_dir(bench, tiny_hub, tmp_path, capsys):
    # --weights-dir: the registered variant as is (MD5 sums checked), nothing built.
    weights = tiny_hub.write_weights_dir(tmp_path / "weights", TINY_16K)
    assert bench.main([*tiny_args(tmp_path / "cache"), "--weights-dir", str(weights)]) == 0
    result = bench_json(capsys)
    assert result["weights"] == "given"
    assert not (tmp_path / "cache" / TINY_16K).exists()
    assert result["reroll"]["sync_cache_hit"]


def test_vae_encoder_layout_matches_the_real_file(bench, fixtures_dir):
    """The encoder half the builder adds to v1-16/v1-44 has the real files' keys and shapes."""
    from selva.models.vae import VAE_PRESETS

    manifest = json.loads((fixtures_dir / "manifests.json").read_text())["files"]
    for rate, name in (("16k", "ext_weights/v1-16.pth"), ("44k", "ext_weights/v1-44.pth")):
        real = {k: tuple(v["shape"]) for k, v in manifest[name].items() if k.startswith("encoder.")}
        assert bench.vae_encoder_shapes(VAE_PRESETS[rate]) == real
