import dataclasses
import json
import math

import pytest
import torch
from parity import load_fixture, meta_tensors

from selva.loading import build_from_checkpoint
from selva.models.bigvgan import (
    BIGVGAN_PRESETS,
    Activation1d,
    BigVGAN,
    BigVGANConfig,
    DownSample1d,
    SnakeBeta,
    UpSample1d,
    kaiser_sinc_filter,
    snake_coefficients,
)

MANIFEST_16K = 'ext_weights/best_netG.pt (under key "generator")'
PARAM_G, PARAM_V = ".parametrizations.weight.original0", ".parametrizations.weight.original1"

# The Hub repo nvidia/bigvgan_v2_44khz_128band_512x's config.json (model keys plus a
# sample of its training keys, which from_dict must ignore).
HUB_44K_CONFIG = {
    "resblock": "1",
    "num_gpus": 0,
    "batch_size": 4,
    "learning_rate": 0.0001,
    "upsample_rates": [8, 4, 2, 2, 2, 2],
    "upsample_kernel_sizes": [16, 8, 4, 4, 4, 4],
    "upsample_initial_channel": 1536,
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "use_tanh_at_final": False,
    "use_bias_at_final": False,
    "activation": "snakebeta",
    "snake_logscale": True,
    "use_cqtd_instead_of_mrd": True,
    "cqtd_dilations": [1, 2, 4],
    "mpd_reshapes": [2, 3, 5, 7, 11],
    "num_mels": 128,
    "n_fft": 2048,
    "hop_size": 512,
    "sampling_rate": 44100,
    "fmax": None,
    "dist_config": {"dist_backend": "nccl", "dist_url": "tcp://localhost:54321", "world_size": 1},
}


def to_legacy_weight_norm(state_dict: dict) -> dict:
    """parametrizations.weight.original0/1 -> weight_g/weight_v (torch.nn.utils.weight_norm)."""
    return {k.replace(PARAM_G, ".weight_g").replace(PARAM_V, ".weight_v"): v for k, v in state_dict.items()}


def vocode(net: BigVGAN, mel: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(mel)


@pytest.mark.parametrize("name", ["bigvgan_16k", "bigvgan_v2_44k"])
def test_parity(fixtures_dir, name):
    fx = load_fixture(fixtures_dir, name)
    config = BigVGANConfig.from_dict(fx["config"])
    # both real files wrap the state dict as {"generator": state_dict}
    assert "'generator'" in fx["checkpoint_layout"]
    net = build_from_checkpoint(BigVGAN, config, {"generator": fx["state_dict"]})
    assert meta_tensors(net) == []
    mel = fx["inputs"]["mel"].float()
    wav = vocode(net, mel)
    assert wav.shape == (mel.shape[0], 1, mel.shape[-1] * config.hop_length)
    tol = fx["tolerance"]["wav"]
    torch.testing.assert_close(wav, fx["outputs"]["wav"], atol=tol, rtol=tol)


@pytest.mark.parametrize("name", ["bigvgan_16k", "bigvgan_v2_44k"])
def test_weight_norm_spellings_and_wrapper(fixtures_dir, name):
    fx = load_fixture(fixtures_dir, name)
    config = BigVGANConfig.from_dict(fx["config"])
    mel = fx["inputs"]["mel"].float()
    reference = vocode(build_from_checkpoint(BigVGAN, config, {"generator": fx["state_dict"]}), mel)
    legacy = to_legacy_weight_norm(fx["state_dict"])
    assert any(k.endswith(".weight_g") for k in legacy)
    for checkpoint in (legacy, {"generator": legacy}, fx["state_dict"]):
        torch.testing.assert_close(vocode(build_from_checkpoint(BigVGAN, config, checkpoint), mel), reference)
    # an already-folded state dict (our own) loads back unchanged
    folded = build_from_checkpoint(BigVGAN, config, fx["state_dict"]).state_dict()
    torch.testing.assert_close(vocode(build_from_checkpoint(BigVGAN, config, folded), mel), reference)


def test_config_from_dict_ignores_training_keys(fixtures_dir):
    fx = load_fixture(fixtures_dir, "bigvgan_16k")
    config = BigVGANConfig.from_dict(fx["config"])
    assert config == dataclasses.replace(BIGVGAN_PRESETS["16k"], upsample_initial_channel=128)
    hub = BigVGANConfig.from_dict(HUB_44K_CONFIG)
    assert (hub.num_mels, hub.hop_length) == (128, 512)
    assert not hub.use_tanh_at_final and not hub.use_bias_at_final
    assert hub.resblock_dilation_sizes == ((1, 3, 5),) * 3


def manifest_after_mapping(manifest: dict) -> dict:
    """The documented load-time mapping: weight-norm pairs become one folded `weight`."""
    out = {}
    for k, v in manifest.items():
        if k.endswith(PARAM_V):
            out[k[: -len(PARAM_V)] + ".weight"] = v["shape"]
        elif not k.endswith(PARAM_G):
            out[k] = v["shape"]
    return out


@pytest.mark.parametrize("spelling", ["parametrizations", "weight_g/weight_v"])
def test_real_size_16k_matches_manifest(fixtures_dir, spelling):
    manifest = json.loads((fixtures_dir / "manifests.json").read_text())["files"][MANIFEST_16K]
    with torch.device("meta"):
        net = BigVGAN(BIGVGAN_PRESETS["16k"])
    ours = {k: list(t.shape) for k, t in net.state_dict().items()}
    assert ours == manifest_after_mapping(manifest)
    checkpoint = {k: torch.empty(v["shape"], device="meta") for k, v in manifest.items()}
    if spelling != "parametrizations":
        checkpoint = to_legacy_weight_norm(checkpoint)
    net.load_state_dict({"generator": checkpoint}, strict=True, assign=True)


def test_real_size_44k_layout():
    with torch.device("meta"):
        net = BigVGAN(BigVGANConfig.from_dict(HUB_44K_CONFIG))
    keys = net.state_dict()
    assert "conv_post.bias" not in keys
    assert keys["conv_pre.weight"].shape == (1536, 128, 7)
    assert keys["ups.0.0.weight"].shape == (1536, 768, 16)


def test_default_filters_are_unit_gain_lowpass():
    taps = kaiser_sinc_filter(0.25, 0.3, 12).flatten()
    torch.testing.assert_close(taps.sum(), torch.tensor(1.0))
    torch.testing.assert_close(taps, taps.flip(0))  # symmetric: linear phase
    assert taps.argmax() in (5, 6)


# Relative L2 distance to the float32 reference allowed per precision: about twice what the tiny
# fixtures' random weights give (float16 0.03, bfloat16 0.076), far below a broken cast.
HALF_TOLERANCE = {torch.float16: 0.08, torch.bfloat16: 0.15}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", ["bigvgan_16k", "bigvgan_v2_44k"])
def test_half_precision_is_finite_and_near_float32(fixtures_dir, name, dtype):
    fx = load_fixture(fixtures_dir, name)
    net = build_from_checkpoint(BigVGAN, BigVGANConfig.from_dict(fx["config"]), fx["state_dict"], dtype=dtype)
    wav = vocode(net, fx["inputs"]["mel"].to(dtype))
    assert wav.dtype == dtype
    assert torch.isfinite(wav).all()
    expected = fx["outputs"]["wav"]
    assert (wav.float() - expected).norm() / expected.norm() < HALF_TOLERANCE[dtype]


def test_snake_coefficients_stay_finite_in_float16():
    # Log-scale betas whose exp is 0 or subnormal in float16, where 1e-9 also rounds to 0.
    beta = torch.tensor([-30.0, -12.0, 0.0, 3.0])
    assert torch.isinf(1 / (beta.half().exp() + 1e-9)).any()  # the formula as written, in float16
    alpha, inverse = snake_coefficients(torch.zeros(4), beta, logscale=True, dtype=torch.float16)
    assert inverse.dtype == torch.float16 and torch.isfinite(inverse).all()
    assert inverse[0] == inverse[1] == torch.finfo(torch.float16).max
    torch.testing.assert_close(inverse[2:].float(), (-beta[2:]).exp(), rtol=1e-3, atol=0)
    torch.testing.assert_close(alpha, torch.ones(4, dtype=torch.float16))

    act = SnakeBeta(4)
    with torch.no_grad():
        act.beta.copy_(beta)
    x = torch.linspace(-3, 3, 32).expand(1, 4, 32)
    assert torch.isfinite(act.half()(x.half())).all()


@pytest.mark.parametrize("activation", ["snakebeta", "snake"])
@pytest.mark.parametrize("kernel_size", [12, 8])
@pytest.mark.parametrize("length", [1, 2, 7, 50])
def test_fused_activation_is_the_three_modules_in_a_row(activation, kernel_size, length):
    """The polyphase path equals upsample -> snake -> downsample, the replicated ends included."""
    torch.manual_seed(length)
    config = dataclasses.replace(BIGVGAN_PRESETS["16k"], activation=activation)
    act = Activation1d(6, config)
    act.upsample, act.downsample = UpSample1d(kernel_size=kernel_size), DownSample1d(kernel_size=kernel_size)
    with torch.no_grad():
        for t in (*act.act.parameters(), act.upsample.filter, act.downsample.lowpass.filter):
            t.normal_()
    act = act.double()
    x = torch.randn(2, 6, length, dtype=torch.float64)
    torch.testing.assert_close(act(x), act.reference_forward(x), atol=1e-12, rtol=1e-12)


def test_prepared_activations_follow_casts_and_loads(fixtures_dir):
    fx = load_fixture(fixtures_dir, "bigvgan_16k")
    config = BigVGANConfig.from_dict(fx["config"])
    net = build_from_checkpoint(BigVGAN, config, fx["state_dict"])
    mel = fx["inputs"]["mel"].float()[..., :8]
    net.prepare()
    before = vocode(net, mel)

    net.to(torch.float64)
    assert all(m._prepared is None for m in net.modules() if isinstance(m, Activation1d))
    wav = vocode(net, mel.double())
    assert wav.dtype == torch.float64
    assert (wav.float() - before).norm() / before.norm() < 1e-3  # float32 rounding: 2e-4
    net.float()

    # Another checkpoint into the same module (every alpha doubled): the prepared tensors are rebuilt.
    changed = {k: v + math.log(2) if k.endswith(".alpha") else v for k, v in net.state_dict().items()}
    net.load_state_dict(changed)
    after = vocode(net, mel)
    torch.testing.assert_close(after, vocode(build_from_checkpoint(BigVGAN, config, changed), mel))
    assert not torch.allclose(before, after)
