"""Smoke test of the benchmark (benchmarks/bench.py) on the tiny models, so it cannot rot.

It checks that the benchmark builds its random checkpoints in the real layouts
(benchmarks/build_weights.py), loads them through the production code and
reports every field, at 16 kHz and at 44.1 kHz (BigVGAN v2 with its config.json);
and, on the `meta` device, that the real-size T5, CLIP text tower and BigVGAN v2
the builder derives have the real shapes. It never checks timings (those are judged by
running the benchmark at real size).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import pytest
from tiny_hub import TINY_16K, TINY_44K

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
def benchmarks_importable():
    # The repo root is on sys.path under `python -m pytest` but not under the bare `pytest` script.
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(ROOT))
        yield


@pytest.fixture(scope="module")
def bench(benchmarks_importable):
    return importlib.import_module("benchmarks.bench")


@pytest.fixture(scope="module")
def builder(benchmarks_importable):
    return importlib.import_module("benchmarks.build_weights")


def tiny_args(cache: Path, *extra: str, variant: str = TINY_16K) -> list[str]:
    # A 2 s clip (the shortest with two TextSynch segments), tiny frames, 2 steps: seconds, not minutes.
    return [
        "--variant", variant, "--cache-dir", str(cache), "--device", "cpu", "--dtype", "fp32",
        "--steps", "2", "--duration", "2", "--size", "96x64", "--mux-size", "320x180",
        "--mux-repeats", "2", "--warmup", "0", *extra,
    ]  # fmt: skip


def bench_json(capsys) -> dict:
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("BENCH_JSON ")]
    assert len(lines) == 1, out
    assert "| end to end" in out  # the table
    return json.loads(lines[0].removeprefix("BENCH_JSON "))


# Each variant's own files in the real layout; the rest is shared by all of them.
LAYOUTS = {
    TINY_16K: ("weights/generator_small_16k_sup_5.pth", "ext_weights/v1-16.pth", "ext_weights/best_netG.pt"),
    TINY_44K: (
        "weights/generator_small_44k_sup_5.pth",
        "ext_weights/v1-44.pth",
        "bigvgan_v2_44khz_128band_512x/config.json",
        "bigvgan_v2_44khz_128band_512x/bigvgan_generator.pt",
    ),
}
SHARED_LAYOUT = (
    "weights/video_enc_sup_5.pth",
    "flan-t5-base/model.safetensors",
    "flan-t5-base/tokenizer.json",
    "DFN5B-CLIP-ViT-H-14-384/open_clip_config.json",
    "DFN5B-CLIP-ViT-H-14-384/open_clip_pytorch_model.bin",
)


@pytest.mark.parametrize(
    "variant, build_flags",
    [
        # In a child process, as in real runs.
        pytest.param(TINY_16K, [], id="16k"),
        # 44.1 kHz writes BigVGAN v2's config.json too; in this process, the other code path.
        pytest.param(TINY_44K, ["--build-in-process"], id="44k"),
    ],
)
def test_bench_builds_loads_and_reports_every_field(
    bench, builder, tiny_hub, tmp_path, capsys, variant, build_flags
):
    assert bench.main(tiny_args(tmp_path, *build_flags, variant=variant)) == 0
    result = bench_json(capsys)

    assert result.keys() >= TOP_FIELDS
    assert result["weights"] == "random" and result["variant"] == variant
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
    folder = tmp_path / variant
    for path in (*LAYOUTS[variant], *SHARED_LAYOUT, builder.BUILT_MARKER):
        assert (folder / path).is_file(), path
    spec = builder.BuildSpec(builder.bench_variant(variant), folder, clip_visual=True)
    assert builder.is_built(spec)
    assert not builder.is_built(dataclasses.replace(spec, clip_visual=False))


def test_bench_on_given_weights_dir(bench, tiny_hub, tmp_path, capsys):
    # --weights-dir: the known variant as is (MD5 sums checked), nothing built.
    weights = tiny_hub.write_weights_dir(tmp_path / "weights", TINY_16K)
    assert bench.main([*tiny_args(tmp_path / "cache"), "--weights-dir", str(weights)]) == 0
    result = bench_json(capsys)
    assert result["weights"] == "given"
    assert not (tmp_path / "cache" / TINY_16K).exists()
    assert result["reroll"]["sync_cache_hit"]


def test_bench_runs_each_of_several_lengths_in_its_own_process(bench, tiny_hub, tmp_path, capsys):
    # --duration 2 (from tiny_args) and 3: a child each, so each peak RSS is that length's alone.
    assert bench.main([*tiny_args(tmp_path), "--duration", "3"]) == 0
    out = capsys.readouterr().out
    results = [json.loads(line.removeprefix("BENCH_JSON ")) for line in out.splitlines()
               if line.startswith("BENCH_JSON ")]  # fmt: skip
    assert [r["clip"]["duration"] for r in results] == [2.0, 3.0]
    for r in results:
        assert r["variant"] == TINY_16K and r["first"]["audio_seconds"] == r["clip"]["duration"]
    # Each child starts bare: nothing of a pipeline is resident before it loads one.
    assert all(r["rss_before_load"] < r["peak_rss_after_load"] for r in results)
    table = out[out.index("per length (a process each)") :].splitlines()[1:3]
    assert [float(row.split()[0]) for row in table] == [2.0, 3.0]


def test_vae_encoder_layout_matches_the_real_file(builder, fixtures_dir):
    """The encoder half the builder adds to v1-16/v1-44 has the real files' keys and shapes."""
    from selva.models.vae import VAE_PRESETS

    manifest = json.loads((fixtures_dir / "manifests.json").read_text())["files"]
    for rate, name in (("16k", "ext_weights/v1-16.pth"), ("44k", "ext_weights/v1-44.pth")):
        real = {k: tuple(v["shape"]) for k, v in manifest[name].items() if k.startswith("encoder.")}
        assert builder.vae_encoder_shapes(VAE_PRESETS[rate]) == real


# -- the real sizes the builder derives, checked on the `meta` device (no weights allocated) ----------


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_real_t5_is_flan_t5_base_shaped(builder):
    import torch
    from transformers import T5Config, T5EncoderModel

    from selva.loading import network_config
    from selva.variants import get_variant

    real = get_variant("small_16k")
    kwargs, pieces = builder.t5_config_for(network_config(real, "text_synch").text_dim)
    config = T5Config(**kwargs)
    shape = (config.d_model, config.num_layers, config.num_heads, config.d_kv, config.d_ff, config.vocab_size)
    assert shape == (768, 12, 12, 64, 2048, 32128)
    assert config.is_gated_act and config.dense_act_fn == "gelu_new"
    with torch.device("meta"):
        encoder = T5EncoderModel(config)
    # The registry's memory estimate counts the real flan-t5-base encoder.
    assert n_params(encoder) == real.t5.encoder_params

    # 32000 pieces + 100 sentinels, the specials at T5's ids, <extra_id_0> last.
    tokenizer, sentinels = builder.t5_tokenizer(pieces)
    assert tokenizer.get_vocab_size() == 32100 and len(sentinels) == 100
    assert [tokenizer.token_to_id(t) for t in ("<pad>", "</s>", "<unk>")] == [0, 1, 2]
    assert tokenizer.token_to_id("<extra_id_0>") == 32099 and tokenizer.token_to_id("<extra_id_99>") == 32000
    ids = tokenizer.encode("dog barking").ids
    assert ids[-1] == 1 and 2 not in ids  # ends with </s>, no unknown pieces


def test_real_clip_text_tower_is_vit_h_14(builder):
    import open_clip
    import torch
    from open_clip.model import _build_text_tower

    from selva.loading import network_config
    from selva.variants import get_variant

    generator = network_config(get_variant("small_16k"), "generator")
    model_cfg = builder.clip_config_for(generator.text_dim)["model_cfg"]
    reference = open_clip.get_model_config("ViT-H-14-378-quickgelu")  # open_clip's own DFN5B-style entry
    for key in ("embed_dim", "quick_gelu", "text_cfg"):
        assert model_cfg[key] == reference[key], key

    text_cfg = model_cfg["text_cfg"]
    with torch.device("meta"):
        tower = _build_text_tower(model_cfg["embed_dim"], text_cfg, quick_gelu=model_cfg["quick_gelu"])
    # A pre-LN transformer: per block two LayerNorms, fused qkv and output projections, a 4x MLP.
    w, hidden = text_cfg["width"], 4 * text_cfg["width"]
    block = 2 * 2 * w + (3 * w * w + 3 * w) + (w * w + w) + (w * hidden + hidden) + (hidden * w + w)
    embeddings = text_cfg["vocab_size"] * w + text_cfg["context_length"] * w
    head = 2 * w + w * model_cfg["embed_dim"]  # final LayerNorm, text projection
    assert n_params(tower) == embeddings + text_cfg["layers"] * block + head


def test_44k_vocoder_is_real_size_only_for_the_real_vae(builder, tiny_hub):
    import torch

    from selva.loading import network_config
    from selva.models.bigvgan import BigVGAN, BigVGANConfig
    from selva.variants import get_variant

    def vocoder(variant: str) -> tuple[dict, int]:
        config = builder.bigvgan_v2_config(network_config(get_variant(variant), "vae"))
        with torch.device("meta"):
            return config, n_params(BigVGAN(BigVGANConfig.from_dict(config)))

    real, real_params = vocoder("small_44k")
    # float32 parameters fill the registered (rounded) size of nvidia's bigvgan_generator.pt.
    assert real_params * 4 == pytest.approx(get_variant("small_44k").vocoder_file.size, rel=0.01)
    assert real["num_mels"] == 128 and real["upsample_initial_channel"] == 1536
    tiny, tiny_params = vocoder(TINY_44K)
    assert tiny["num_mels"] == 128 and tiny_params < real_params / 100
    assert {k: v for k, v in tiny.items() if k != "upsample_initial_channel"} == {
        k: v for k, v in real.items() if k != "upsample_initial_channel"
    }


# -- benchmarks/gpu.py, smoke-run on the CPU ---------------------------------------------------------

GPU_PHASES = [
    ("env", None),
    ("matmul", None),
    ("build", None),
    ("load", None),
    *[(p, mode) for mode in ("eager", "compiled") for p in ("compile", "warmup", "stages", "e2e", "check")],
    ("done", None),
]
GPU_PHASES.remove(("compile", "eager"))


def test_gpu_benchmark_smoke_run_reports_every_phase(benchmarks_importable, tiny_hub, tmp_path, capsys):
    gpu = importlib.import_module("benchmarks.gpu")
    out = tmp_path / "out" / "gpu.jsonl"
    # The eager backend: dynamo traces the networks as on the GPU, without minutes of C++ compiles.
    argv = ["--smoke", "--variants", TINY_16K, "--cache-dir", str(tmp_path), "--json-out", str(out)]
    assert gpu.main([*argv, "--compile-backend", "eager", "--build-in-process"]) == 0
    printed = capsys.readouterr().out

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # every phase's line is printed and written as it happens (a timed-out run keeps the earlier ones)
    assert rows == [json.loads(line.removeprefix(gpu.JSON_PREFIX)) for line in printed.splitlines()
                    if line.startswith(gpu.JSON_PREFIX)]  # fmt: skip
    assert [(r["phase"], r.get("mode")) for r in rows] == GPU_PHASES
    by = {(r["phase"], r.get("mode")): r for r in rows}
    assert by[("env", None)]["dtype"] == "float32" and by[("env", None)]["dtype_reason"]
    assert by[("matmul", None)]["tflops"] > 0
    assert by[("compile", "compiled")]["plan"]["dynamic"] is True  # the CPU plan
    for mode in ("eager", "compiled"):
        stages = by[("stages", mode)]
        assert set(stages["seconds"]) == set(gpu.STAGES) and all(t >= 0 for t in stages["seconds"].values())
        assert stages["steps"] == 2 and stages["steps_per_s"] > 0 and stages["audio_finite"]
        e2e = by[("e2e", mode)]
        assert not e2e["first"]["sync_cache_hit"] and e2e["reroll"]["sync_cache_hit"]
        check = by[("check", mode)]
        # the same float32 CPU arithmetic on both sides: no distance at all
        assert check["all_ok"] and set(check["stages"]) == {"sync_features", "latent", "mel", "audio"}
        assert all(s["rel_l2"] < 1e-5 for s in check["stages"].values())
    assert by[("done", None)]["errors"] == 0
    assert f"| {TINY_16K} | compiled |" in printed  # the summary table


def test_gpu_benchmark_keeps_going_after_a_failed_phase(benchmarks_importable, tmp_path, capsys):
    gpu = importlib.import_module("benchmarks.gpu")
    out = tmp_path / "gpu.jsonl"
    # An unknown variant fails its build phase; the run still ends with its summary.
    argv = ["--smoke", "--variants", "no_such_variant", "--cache-dir", str(tmp_path), "--json-out", str(out)]
    assert gpu.main(argv) == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["env", "matmul", "build", "done"]
    assert "no_such_variant" in rows[2]["error"] and rows[-1]["errors"] == 1
    assert "error in build" in capsys.readouterr().out


def test_targets_on_a_gpu_are_per_variant_and_absolute(bench):
    """Issue #14 on one H100/H200 in bf16: e2e per variant (8 s, 640x360 source), re-roll in seconds."""
    run = {
        "device": "cuda:0",
        "dtype": "bfloat16",
        "variant": "large_44k",
        "clip": {"size": "640x360", "duration": 8.0},
        "first": {"e2e": 0.7},
        "reroll": {"e2e": 0.25},
        "reroll_ratio": 0.36,
        "mux_1080p": {"size": "1920x1080", "median_s": 0.1},
    }
    targets = bench.check_targets(run)
    assert targets.keys() == {"cuda_e2e_s", "cuda_reroll_s", "mux_1080p_s"}  # the CPU's ratio is the CPU's
    assert targets["cuda_e2e_s"] == {"value": 0.7, "limit": 0.8, "met": True}
    assert targets["cuda_reroll_s"] == {"value": 0.25, "limit": 0.2, "met": False}
    small = bench.check_targets({**run, "variant": "small_16k"})
    assert small["cuda_e2e_s"]["limit"] == 0.5 and not small["cuda_e2e_s"]["met"]
    assert "cuda_e2e_s" not in bench.check_targets({**run, "clip": {"size": "1920x1080", "duration": 8.0}})
    assert bench.check_targets({**run, "dtype": "float32"}).keys() == {"mux_1080p_s"}
    # Every target is for an 8 s clip; a longer one reports its numbers against none of them.
    assert bench.check_targets({**run, "clip": {"size": "640x360", "duration": 30.0}}) == {}


# -- benchmarks/vs_reference.py, without the reference ---------------------------------------------


@pytest.fixture(scope="module")
def vs_reference(benchmarks_importable):
    return importlib.import_module("benchmarks.vs_reference")


@pytest.fixture(scope="module")
def children(benchmarks_importable):
    return importlib.import_module("benchmarks.children")


@pytest.fixture(scope="module")
def reference_side(benchmarks_importable):
    return importlib.import_module("benchmarks.reference_side")


def test_vs_reference_refuses_without_the_reference(vs_reference, tmp_path, capsys):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert vs_reference.main(cache) == 2
    assert "--reference-dir and --reference-python are both required" in capsys.readouterr().err

    checkout = tmp_path / "selva"
    args = [*cache, "--reference-dir", str(checkout), "--reference-python", str(tmp_path / "venv/bin/python")]
    assert vs_reference.main(args) == 2
    assert f"--reference-dir {checkout} is not a folder" in capsys.readouterr().err

    (checkout / "selva/utils").mkdir(parents=True)
    assert vs_reference.main(args) == 2
    assert "lacks demo.py, selva/utils/eval_utils.py" in capsys.readouterr().err

    (checkout / "demo.py").write_text("")
    (checkout / "selva/utils/eval_utils.py").write_text("")
    assert vs_reference.main(args) == 2
    assert "venv/bin/python is not an executable file" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()  # refused before building or running anything


def test_vs_reference_cuda_commands_without_the_reference(vs_reference, tmp_path):
    """--device cuda: both sides see the GPU, the reference at its default bf16, ours compiled on cuda
    with its compile cache in our state folder; nothing needs the reference or a GPU to build them."""
    ref_dir, python, clip, weights = (tmp_path / n for n in ("ref", "py", "clip.mp4", "w"))
    state = tmp_path / "state"

    def commands(*extra: str):
        args = vs_reference.parse_args(["--cache-dir", str(tmp_path / "cache"), *extra])
        ours = vs_reference.ours_cmd(args, clip, weights, tmp_path / "o", args.ours_precision[0])
        reference = vs_reference.reference_cmd(args, ref_dir, python, clip, tmp_path / "r")
        return (
            args,
            ours,
            reference,
            vs_reference.side_envs(args, ref_dir, state),
            vs_reference.bench_cmd(args),
        )

    args, ours, reference, (ref_env, ours_env), bench = commands("--device", "cuda")
    assert (args.reference_precision, args.ours_precision) == ("bf16", ["auto"])
    assert ours[1:4] == ["-m", "selva", "generate"] and "--compile" in ours and "--precision" not in ours
    assert ours[ours.index("--device") + 1] == "cuda"
    assert reference[0] == str(python) and reference[3] == str(ref_dir.resolve())
    assert "--full_precision" not in reference  # the demo's own default: bfloat16 on CUDA
    assert reference[reference.index("--video") + 1] == str(clip)
    assert "CUDA_VISIBLE_DEVICES" not in ref_env and "CUDA_VISIBLE_DEVICES" not in ours_env
    assert ours_env["SELVA_STATE_DIR"] == str(state) and ref_env["HF_HOME"] == str(ref_dir / "hf")
    assert ref_env["HF_HUB_OFFLINE"] == ours_env["HF_HUB_OFFLINE"] == "1"
    assert bench[bench.index("--device") + 1] == "cuda" and "--compile" in bench

    # The CPU run is as before: no GPU visible to either side (demo.py would take one), fp32 reference.
    args, ours, reference, (ref_env, ours_env), bench = commands()
    assert (args.reference_precision, args.ours_precision) == ("fp32", ["auto", "fp32"])
    assert "--compile" not in ours and ours[ours.index("--device") + 1] == "cpu"
    assert reference[-1] == "--full_precision"
    assert ref_env["CUDA_VISIBLE_DEVICES"] == ours_env["CUDA_VISIBLE_DEVICES"] == ""
    assert "--compile" not in bench and bench[bench.index("--device") + 1] == "cpu"


def test_vs_reference_call_seconds_compare_like_with_like(vs_reference):
    ours = {"load": 9.0, "generate_and_save": 0.5}
    reference = {"load": 20.0, "decode": 0.5, "generate": 2.0, "mux": 0.5, "imports": 4.0}
    assert vs_reference.call_seconds(ours, reference) == (0.5, 3.0)
    assert vs_reference.call_seconds({}, {"generate": 2.0}) == (None, None)  # a failed side's stages


def test_vs_reference_measures_a_child(children, tmp_path):
    """Wall time, CPU time and peak RSS come from wait4; the output is kept with arrival times."""
    import sys

    code = "x = bytearray(300 * 1000 * 1000); x[::4096] = b'1' * len(x[::4096]); print('done', flush=True)"
    run = children.run_child(
        "child",
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=children.child_env(),
        log_path=tmp_path / "log",
    )
    assert run.rc == 0 and run.peak_rss > 300 * 1000 * 1000 and run.wall_s > 0 and run.cpu_s > 0
    assert [line for _, line in run.lines] == ["done"] and "done" in (tmp_path / "log").read_text()
    with pytest.raises(RuntimeError, match="exit 3"):
        children.run_child(
            "bad",
            [sys.executable, "-c", "raise SystemExit(3)"],
            cwd=tmp_path,
            env={},
            log_path=tmp_path / "l2",
        )


def test_vs_reference_md5_memo_passes_random_files(vs_reference, tiny_hub, tmp_path, monkeypatch):
    """Our CLI skips the MD5 sums of random files through selva.hub's own memo of verified files."""
    from selva.hub import local_path, resolve
    from selva.spec import WeightsError
    from selva.variants import get_variant

    weights = tiny_hub.write_weights_dir(tmp_path / "weights", TINY_16K)
    generator = local_path(weights, get_variant(TINY_16K).generator_file)
    generator.write_bytes(generator.read_bytes() + b"random")  # no longer the registered MD5
    monkeypatch.setenv("SELVA_STATE_DIR", str(tmp_path / "empty"))
    with pytest.raises(WeightsError, match="does not match its MD5"):
        resolve(TINY_16K, weights_dir=weights, offline=True)
    memo = vs_reference.write_md5_memo(tmp_path / "state", weights, TINY_16K)
    monkeypatch.setenv("SELVA_STATE_DIR", str(memo.parent))
    assert resolve(TINY_16K, weights_dir=weights, offline=True)["generator"] == generator


def test_vs_reference_hub_snapshot_reads_offline(reference_side, tmp_path):
    """The reference's text encoders find the benchmark's files through the Hub cache layout."""
    from huggingface_hub import hf_hub_download

    source = tmp_path / "flan-t5-base"
    source.mkdir()
    (source / "config.json").write_text('{"d_model": 768}')
    (source / "model.safetensors").write_bytes(b"\0" * 1000)
    cache = tmp_path / "hf" / "hub"
    files = {f.name: f for f in source.iterdir()}
    for _ in range(2):  # preparing twice replaces the links
        reference_side.hub_snapshot(cache, "google/flan-t5-base", files)
    for name, f in files.items():
        path = hf_hub_download("google/flan-t5-base", name, cache_dir=cache, local_files_only=True)
        assert Path(path).read_bytes() == f.read_bytes()
        assert Path(path).resolve() == f.resolve()  # nothing copied


def test_vs_reference_synchformer_is_the_video_encoders_motionformer(reference_side, fixtures_dir):
    """The plain Synchformer file the reference loads (never used by SelVA) has the keys and shapes of
    the vfeat_extractor entries of video_enc_sup_5.pth: the subset written for it is the real layout."""
    import torch

    from selva.loading import network_config
    from selva.models.text_synch import TextSynch
    from selva.variants import get_variant

    manifest = json.loads((fixtures_dir / "manifests.json").read_text())["files"]
    real = {k: tuple(v["shape"]) for k, v in manifest["ext_weights/synchformer_state_dict.pth"].items()}
    with torch.device("meta"):
        video_enc = TextSynch(network_config(get_variant("small_16k"), "text_synch")).state_dict()
    state = reference_side.synchformer_state(video_enc)
    assert {k: tuple(v.shape) for k, v in state.items()} == real


def test_gpu_session_dry_run_plans_cold_then_warm_per_variant(benchmarks_importable, tmp_path, capsys):
    session = importlib.import_module("benchmarks.gpu_session")
    out = tmp_path / "session.jsonl"
    common = ["--dry-run", "--device", "cpu", "--work-dir", str(tmp_path / "w"), "--json-out", str(out)]
    assert session.main([*common, "--variants", "tiny_16k,tiny_44k"]) == 0
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["step"] for r in rows] == ["tiny_16k cold", "tiny_16k warm", "tiny_44k cold", "tiny_44k warm"]
    # cold and warm share one compile cache per variant; the variants do not share one
    assert rows[0]["env"] == rows[1]["env"] != rows[2]["env"]
    assert "vs reference: skipped" in printed and "| tiny_16k warm | dry run |" in printed
    steps = session.plan(session.parse_args(["--device", "cpu", "--variants", "tiny_16k"]))
    assert (
        "--compile" in steps[0].command and steps[0].command[steps[0].command.index("--device") + 1] == "cpu"
    )
    # with a reference checkout, the side by side on CUDA comes last
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "demo.py").write_text("")
    last = session.plan(session.parse_args(["--variants", "tiny_16k", "--reference-dir", str(ref)]))[-1]
    assert last.kind == "reference" and last.command[last.command.index("--device") + 1] == "cuda"


def test_gpu_session_table_judges_the_issue_targets(benchmarks_importable):
    session = importlib.import_module("benchmarks.gpu_session")
    row = {"step": "small_16k warm", "outcome": "ok", "variant": "small_16k", "load_s": 9.5,
           "warmup_s": [8.0, 0.3], "first": {"e2e": 0.3}, "reroll": {"e2e": 0.09}}  # fmt: skip
    line = session.summary([row]).splitlines()[-1]
    assert "| 9.500 | 8.000 | 17.500 | 0.300 | 0.090 |" in line
    assert "e2e missed (0.25 s), re-roll met (0.1 s), warm start met (20 s)" in line
    assert session.parse_result('noise\nBENCH_JSON {"load_s": 1.0}\n') == {"load_s": 1.0}
