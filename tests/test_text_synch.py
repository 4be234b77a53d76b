import json
import logging

import pytest
import torch
from parity import meta_tensors, sdpa_channel_strides

from selva.loading import build_from_checkpoint
from selva.models.text_synch import TEXT_SYNCH_PRESETS, TextSynch, TextSynchConfig

MANIFEST_FILE = "weights/video_enc_sup_5.pth"


@pytest.fixture(scope="module")
def fx(fixtures_dir) -> dict:
    return torch.load(fixtures_dir / "textsynch.pt", weights_only=True)


@pytest.fixture(scope="module")
def net(fx) -> TextSynch:
    return build_from_checkpoint(TextSynch, TextSynchConfig.from_dict(fx["config"]), fx["state_dict"])


def test_parity(fx, net):
    assert meta_tensors(net) == []
    inputs, outputs, tol = fx["inputs"], fx["outputs"], fx["tolerance"]
    text_f, text_mask = net.prepend_sup_tokens(inputs["text_f"], inputs["text_mask"])
    t = tol["text_f_with_sup"]
    torch.testing.assert_close(text_f, outputs["text_f_with_sup"], atol=t, rtol=t)
    assert text_mask[:, :5].all() and torch.equal(text_mask[:, 5:], inputs["text_mask"])

    video = inputs["video"].float()  # stored as float16
    with torch.no_grad():
        sync_f = net(video, inputs["text_f"], inputs["text_mask"])
    B, T = video.shape[:2]
    assert sync_f.shape == (B, net.num_segments(T) * 8, fx["config"]["motionformer"]["embed_dim"])
    t = tol["sync_f"]
    torch.testing.assert_close(sync_f, outputs["sync_f"], atol=t, rtol=t)


@pytest.mark.parametrize("chunk", [1, 4])
def test_chunked_segments_match_batched(fx, net, chunk):
    # 2 items x 3 segments; a chunk of 4 spans the boundary between the items
    video = fx["inputs"]["video"][:, :32].float()
    text_f, text_mask = fx["inputs"]["text_f"], fx["inputs"]["text_mask"]
    with torch.no_grad():
        batched = net(video, text_f, text_mask)
        chunked = net(video, text_f, text_mask, segment_chunk=chunk)
    assert batched.shape == (2, 3 * 8, 64)
    torch.testing.assert_close(chunked, batched, atol=1e-5, rtol=1e-5)


def test_bfloat16_forward(fx, net):
    net16 = build_from_checkpoint(TextSynch, net.config, fx["state_dict"]).to(torch.bfloat16)
    video = fx["inputs"]["video"][:, :16]  # one segment; float16 in, cast to the weights' dtype
    with torch.no_grad():
        sync_f = net16(video, fx["inputs"]["text_f"], fx["inputs"]["text_mask"])
    assert sync_f.dtype == torch.bfloat16 and sync_f.shape == (2, 8, 64)
    assert torch.isfinite(sync_f).all()


def test_attention_inputs_have_unit_channel_stride(fx, net):
    video = fx["inputs"]["video"][:1, :16].float()
    with torch.no_grad(), sdpa_channel_strides() as strides:
        net(video, fx["inputs"]["text_f"][:1], fx["inputs"]["text_mask"][:1])
    assert len(strides) > 2 * net.config.motionformer.depth  # divided attention, cross-attention, pooling
    assert set(strides) == {(1, 1, 1)}


def test_real_size_matches_manifest(fixtures_dir):
    manifest = json.loads((fixtures_dir / "manifests.json").read_text())
    expected = {k: v["shape"] for k, v in manifest["files"][MANIFEST_FILE].items()}
    with torch.device("meta"):
        net = TextSynch(TEXT_SYNCH_PRESETS["sup_5"])
    ours = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert ours == expected
    assert sum(p.numel() for p in net.parameters()) == manifest["params"][MANIFEST_FILE]


def test_extra_checkpoint_keys_dropped_and_logged(fx, caplog):
    sd = dict(fx["state_dict"])
    sd["afeat_extractor.cls_token"] = torch.zeros(1)
    sd["generator.latent_mean"] = torch.zeros(1)
    with caplog.at_level(logging.INFO, logger="selva.models.text_synch"):
        net = build_from_checkpoint(TextSynch, TextSynchConfig.from_dict(fx["config"]), sd)
    assert meta_tensors(net) == []
    assert "afeat_extractor.cls_token" in caplog.text and "generator.latent_mean" in caplog.text
    assert "afeat_extractor.cls_token" in sd  # the caller's dict is left alone


def test_rejects_bad_inputs(net, fx):
    text_f, text_mask = fx["inputs"]["text_f"], fx["inputs"]["text_mask"]
    with pytest.raises(ValueError, match="at least 16 frames"):
        net(torch.zeros(2, 15, 3, 224, 224), text_f, text_mask)
    with pytest.raises(ValueError, match="video must be"):
        net(torch.zeros(2, 16, 3, 112, 112), text_f, text_mask)
    with pytest.raises(ValueError, match="text_mask"):
        net(torch.zeros(2, 16, 3, 224, 224), text_f, text_mask[:, :3])
