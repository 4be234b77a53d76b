import json
import logging
import math
from functools import cache

import pytest
import torch
from parity import meta_tensors, sdpa_channel_strides

from selva import sampling
from selva.loading import build_from_checkpoint
from selva.models.generator import (
    GENERATOR_PRESETS,
    Conditions,
    Generator,
    GeneratorConfig,
    default_sync_len,
)

CFG = 4.5  # the fixtures' guidance strength
EULER_STEPS = 4
FIXTURES = ["generator", "generator_v2"]
OUTPUTS = [
    "clip_f",
    "sync_f",
    "text_f",
    "clip_f_c",
    "text_f_c",
    "flow",
    "flow_uncond_empty",
    "cfg_flow",
    "euler_x1",
    "euler_x1_unnormalized",
    "flow_5s",
]
# Real checkpoints (manifests.json) and the preset that must reproduce their layout.
MANIFEST_PRESETS = {
    "weights/generator_small_16k_sup_5.pth": "small_16k",
    "mmaudio weights/mmaudio_small_16k.pth": "small_16k",
    "weights/generator_small_44k_sup_5.pth": "small_44k",
    "mmaudio weights/mmaudio_small_44k.pth": "small_44k",
    "weights/generator_medium_44k_sup_5.pth": "medium_44k",
    "mmaudio weights/mmaudio_medium_44k.pth": "medium_44k",
    "weights/generator_large_44k_sup_5.pth": "large_44k",
    "mmaudio weights/mmaudio_large_44k.pth": "large_44k",
    "mmaudio weights/mmaudio_large_44k_v2.pth": "large_44k_v2",
}

TINY = GeneratorConfig(
    latent_dim=8, clip_dim=16, sync_dim=12, text_dim=24, hidden_dim=32, depth=3, fused_depth=1, num_heads=2
)


def guided_velocity(gen: Generator, x: torch.Tensor, t: float, both: Conditions) -> torch.Tensor:
    """CFG as the pipeline mixes it: both branches in one batched forward (cond rows first)."""
    t_in = torch.full((2 * x.shape[0],), float(t))
    v_cond, v_uncond = gen(torch.cat([x, x]), t_in, both).chunk(2)
    return CFG * v_cond + (1 - CFG) * v_uncond


@cache
def run_fixture(fixtures_dir, name: str) -> tuple[dict, dict]:
    """Every checked output, all from ONE loaded model (the 5 s and 8 s lengths alike)."""
    fx = torch.load(fixtures_dir / f"{name}.pt", weights_only=True)
    gen = build_from_checkpoint(Generator, GeneratorConfig.from_dict(fx["config"]), fx["state_dict"])
    assert meta_tensors(gen) == []
    inp = {k: v.float() for k, v in fx["inputs"].items()}
    batch, latent_len, _ = inp["latent"].shape
    clip_len = inp["clip_f"].shape[1]
    out = {}
    with torch.no_grad():
        cond = gen.preprocess_conditions(inp["clip_f"], inp["sync_f"], inp["text_f"], latent_len=latent_len)
        out.update({k: getattr(cond, k) for k in ["clip_f", "sync_f", "text_f", "clip_f_c", "text_f_c"]})
        out["flow"] = gen(inp["latent"], inp["t"], cond)

        empty = gen.empty_conditions(batch, latent_len=latent_len, clip_len=clip_len)
        out["flow_uncond_empty"] = gen(inp["latent"], inp["t"], empty)

        negative = gen.empty_conditions(
            batch, latent_len=latent_len, clip_len=clip_len, negative_text_f=inp["negative_text_f"]
        )
        both = cond.cat(negative)
        out["cfg_flow"] = guided_velocity(gen, inp["latent"], inp["t"][0], both)

        ts = sampling.timesteps(EULER_STEPS)
        x = inp["x0"]
        for t, t_next in zip(ts[:-1], ts[1:], strict=True):
            x = sampling.euler_step(x, guided_velocity(gen, x, t, both), t, t_next)
        out["euler_x1"] = x
        out["euler_x1_unnormalized"] = gen.unnormalize(x)

        len_5s = inp["latent_5s"].shape[1]
        cond_5s = gen.preprocess_conditions(
            inp["clip_f_5s"], inp["sync_f_5s"], inp["text_f_5s"], latent_len=len_5s
        )
        out["flow_5s"] = gen(inp["latent_5s"], inp["t_5s"], cond_5s)
    return out, fx


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("name", FIXTURES)
def test_parity(fixtures_dir, name, output):
    ours, fx = run_fixture(fixtures_dir, name)
    tol = fx["tolerance"][output]
    torch.testing.assert_close(ours[output], fx["outputs"][output], atol=tol, rtol=tol)


@pytest.mark.parametrize("file", MANIFEST_PRESETS)
def test_presets_match_manifest(fixtures_dir, file):
    manifest = json.loads((fixtures_dir / "manifests.json").read_text())
    with torch.device("meta"):
        gen = Generator(GENERATOR_PRESETS[MANIFEST_PRESETS[file]])
    ours = {k: list(v.shape) for k, v in gen.state_dict().items()}
    expected = {k: v["shape"] for k, v in manifest["files"][file].items()}
    assert sorted(set(ours) ^ set(expected)) == []
    assert {k: s for k, s in ours.items() if s != expected[k]} == {}
    assert sum(math.prod(s) for s in ours.values()) == manifest["params"][file]


def test_derived_keys_are_dropped_and_logged(fixtures_dir, caplog):
    fx = torch.load(fixtures_dir / "generator.pt", weights_only=True)
    extra = {"t_embed.freqs": torch.ones(128), "latent_rot": torch.ones(1, 250, 16, 2, 2)}
    extra["clip_rot"] = torch.ones(1, 64, 16, 2, 2)
    with caplog.at_level(logging.INFO, logger="selva.models.generator"):
        config = GeneratorConfig.from_dict(fx["config"])
        gen = build_from_checkpoint(Generator, config, {**fx["state_dict"], **extra})
    assert meta_tensors(gen) == []
    assert all(k in caplog.text for k in extra)


def test_config_ignores_reference_sequence_lengths(fixtures_dir):
    fx = torch.load(fixtures_dir / "generator_v2.pt", weights_only=True)
    config = GeneratorConfig.from_dict(fx["config"])
    assert config.v2 and config.hidden_dim == 64 and config.head_dim == 32
    assert not hasattr(config, "latent_seq_len")


def test_default_sync_len_follows_the_sequence_rules():
    # 8 s and 5 s clips: CLIP 64 / 40 tokens, sync 192 / 112 tokens.
    assert default_sync_len(64) == 192
    assert default_sync_len(40) == 112


def tiny_inputs(gen: Generator, batch: int, latent_len: int, clip_len: int, dtype: torch.dtype):
    cfg = gen.config
    g = torch.Generator().manual_seed(0)
    sync_len = default_sync_len(clip_len)
    shapes = [(clip_len, cfg.clip_dim), (sync_len, cfg.sync_dim), (77, cfg.text_dim)]
    feats = [torch.randn(batch, n, d, generator=g) for n, d in shapes]
    latent = torch.randn(batch, latent_len, cfg.latent_dim, generator=g)
    return [f.to(dtype) for f in feats], latent.to(dtype)


def test_conditions_cat_and_shape_checks():
    gen = Generator(TINY).eval()
    (clip_f, sync_f, text_f), latent = tiny_inputs(gen, 2, 63, 16, torch.float32)
    with torch.no_grad():
        cond = gen.preprocess_conditions(clip_f, sync_f, text_f, latent_len=63)
        uncond = gen.empty_conditions(2, latent_len=63, clip_len=16)
        both = cond.cat(uncond)
        assert both.sync_f.shape == (4, 63, TINY.hidden_dim)
        assert both.text_f_c.shape == (4, TINY.hidden_dim)
        flow = gen(torch.cat([latent, latent]), torch.tensor(0.5), both)
        assert flow.shape == (4, 63, TINY.latent_dim)
        torch.testing.assert_close(flow[:2], gen(latent, torch.full((2,), 0.5), cond))
        with pytest.raises(ValueError, match="latents"):
            gen(latent[:, :50], torch.full((2,), 0.5), cond)
        with pytest.raises(ValueError, match="multiple of 8"):
            gen.preprocess_conditions(clip_f, sync_f[:, :-3], text_f, latent_len=63)
        gen.latent_mean.fill_(0.5)
        gen.latent_std.fill_(2.0)
        torch.testing.assert_close(gen.normalize(latent), (latent - 0.5) / 2.0)
        torch.testing.assert_close(gen.unnormalize(gen.normalize(latent)), latent)


def test_bfloat16_forward():
    gen = Generator(TINY).to(torch.bfloat16).eval()
    (clip_f, sync_f, text_f), latent = tiny_inputs(gen, 1, 63, 16, torch.bfloat16)
    with torch.no_grad():
        cond = gen.preprocess_conditions(clip_f, sync_f, text_f, latent_len=63)
        both = cond.cat(gen.empty_conditions(1, latent_len=63, clip_len=16, negative_text_f=text_f))
        v = gen(torch.cat([latent, latent]), torch.full((2,), 0.25, dtype=torch.bfloat16), both)
    assert v.dtype == torch.bfloat16 and v.shape == (2, 63, TINY.latent_dim)
    assert torch.isfinite(v).all()


def test_attention_inputs_have_unit_channel_stride():
    gen = Generator(TINY).eval()
    (clip_f, sync_f, text_f), latent = tiny_inputs(gen, 1, 63, 16, torch.float32)
    with torch.no_grad(), sdpa_channel_strides() as strides:
        cond = gen.preprocess_conditions(clip_f, sync_f, text_f, latent_len=63)
        gen(latent, torch.full((1,), 0.5), cond)
    assert strides == [(1, 1, 1)] * TINY.depth  # one attention per joint and per fused block


def test_euler_timesteps_and_step():
    ts = sampling.timesteps(4)
    torch.testing.assert_close(ts, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    # A constant velocity is integrated exactly: x1 = x0 + v.
    x0, v = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    x = x0
    for t, t_next in zip(ts[:-1], ts[1:], strict=True):
        x = sampling.euler_step(x, v, t, t_next)
    torch.testing.assert_close(x, x0 + v)
    with pytest.raises(ValueError, match="steps"):
        sampling.timesteps(0)
