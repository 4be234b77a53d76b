import json
import logging

import pytest
import torch
from parity import load_fixture, meta_tensors

from selva.loading import build_from_checkpoint
from selva.models.vae import VAE_PRESETS, VAEConfig, VAEDecoder

MANIFEST_FILES = {"16k": "ext_weights/v1-16.pth", "44k": "ext_weights/v1-44.pth"}


@pytest.mark.parametrize("name", ["vae_16k", "vae_44k"])
def test_parity(fixtures_dir, name):
    fx = load_fixture(fixtures_dir, name)
    vae = build_from_checkpoint(VAEDecoder, VAEConfig.from_dict(fx["config"]), fx["state_dict"])
    assert meta_tensors(vae) == []
    z = fx["inputs"]["z"].float()
    with torch.no_grad():
        mel = vae(z)
    assert mel.shape == (z.shape[0], fx["config"]["data_dim"], 2 * z.shape[-1])
    tol = fx["tolerance"]["mel"]
    torch.testing.assert_close(mel, fx["outputs"]["mel"], atol=tol, rtol=tol)


def test_encoder_is_dropped_and_logged(fixtures_dir, caplog):
    fx = load_fixture(fixtures_dir, "vae_16k")
    n_encoder = sum(k.startswith("encoder.") for k in fx["state_dict"])
    assert n_encoder > 0
    with caplog.at_level(logging.INFO, logger="selva.models.vae"):
        vae = build_from_checkpoint(VAEDecoder, VAEConfig.from_dict(fx["config"]), fx["state_dict"])
    assert f"dropped {n_encoder} encoder keys" in caplog.text
    assert not any(k.startswith("encoder.") for k in vae.state_dict())


def test_pipeline_config_uses_reference_defaults(fixtures_dir):
    # the pipeline fixture names only the sizes; everything else must default to the reference's
    fx = torch.load(fixtures_dir / "pipeline_16k.pt", weights_only=True)
    config = VAEConfig.from_dict(fx["configs"]["vae"])
    assert (config.ch_mult, config.num_res_blocks, config.attn_layers, config.down_layers) == (
        (1, 2, 4),
        2,
        (3,),
        (0,),
    )
    build_from_checkpoint(VAEDecoder, config, fx["state_dicts"]["vae"])


@pytest.mark.parametrize("preset", ["16k", "44k"])
def test_real_size_matches_manifest(fixtures_dir, preset):
    manifest = json.loads((fixtures_dir / "manifests.json").read_text())["files"][MANIFEST_FILES[preset]]
    with torch.device("meta"):
        vae = VAEDecoder(VAE_PRESETS[preset])
    ours = {k: list(t.shape) for k, t in vae.state_dict().items()}
    # the documented load-time mapping: the encoder is dropped, everything else is kept as is
    expected = {k: v["shape"] for k, v in manifest.items() if not k.startswith("encoder.")}
    assert ours == expected
    # and the full file layout (encoder included) loads strictly
    checkpoint = {k: torch.empty(v["shape"], device="meta") for k, v in manifest.items()}
    vae.load_state_dict(checkpoint, strict=True, assign=True)


@pytest.mark.parametrize("name", ["vae_16k", "vae_44k"])
def test_bfloat16_forward(fixtures_dir, name):
    fx = load_fixture(fixtures_dir, name)
    vae = build_from_checkpoint(VAEDecoder, VAEConfig.from_dict(fx["config"]), fx["state_dict"])
    vae = vae.to(torch.bfloat16)
    with torch.no_grad():
        mel = vae(fx["inputs"]["z"].to(torch.bfloat16))
    assert mel.dtype == torch.bfloat16
    assert torch.isfinite(mel).all()
