"""Text encoders on the tiny Hub: T5 encoder states and CLIP text-tower tokens, loaded offline."""

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tiny_hub import CLIP_WIDTH, T5_DIM, TINY_16K

from selva.hub import REPOS, resolve
from selva.spec import DependencyError, InputError, WeightsError
from selva.text import ClipTextEncoder, T5TextEncoder, load_clip_text_state

PROMPTS = ["dog barking", "", "a car engine with wind noise and rain"]


@pytest.fixture(scope="module")
def t5(tiny_hub):
    return T5TextEncoder.from_pretrained(REPOS["t5"])  # through the Hub cache, offline


@pytest.fixture(scope="module")
def clip(tiny_hub):
    return ClipTextEncoder.from_pretrained(REPOS["clip"])


def test_t5_states_and_mask(t5, tiny_hub):
    states, mask = t5(PROMPTS)
    assert mask.dtype == torch.bool
    lengths = mask.sum(1).tolist()
    assert states.shape == (3, max(lengths), T5_DIM)  # padded to the longest prompt
    assert lengths[1] == 1  # an empty prompt is just the end-of-sequence token
    assert mask[:, 0].all() and not mask[0, lengths[0] :].any()

    # the same as transformers' own encoder on the same snapshot
    from transformers import AutoTokenizer, T5EncoderModel

    snapshot = tiny_hub.snapshot(REPOS["t5"])
    ref = T5EncoderModel.from_pretrained(snapshot).eval()
    batch = AutoTokenizer.from_pretrained(snapshot)(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = ref(**batch).last_hidden_state
    torch.testing.assert_close(states, expected)
    assert t5.max_length == 512


def test_t5_is_encoder_only(t5):
    names = [n for n, _ in t5.named_parameters()]
    assert names and not any("decoder" in n for n in names)
    assert not any(p.requires_grad for p in t5.parameters()) and not t5.training


def test_t5_fp16_request_runs_in_fp32(tiny_hub):
    enc = T5TextEncoder.from_pretrained(REPOS["t5"], dtype=torch.float16)
    assert enc(["dog"])[0].dtype == torch.float32


def test_t5_bf16(tiny_hub):
    states, _ = T5TextEncoder.from_pretrained(REPOS["t5"], dtype=torch.bfloat16)(PROMPTS)
    assert states.dtype == torch.bfloat16 and torch.isfinite(states.float()).all()


def test_clip_tokens_are_unit_norm(clip):
    feats = clip(PROMPTS)
    assert feats.shape == (3, 77, CLIP_WIDTH) and feats.dtype == torch.float32
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(3, 77))
    assert clip.dim == CLIP_WIDTH and clip.context_length == 77


def test_clip_matches_open_clip_reference(clip):
    """What SelVA's reference computes: open_clip's full model, text states after ln_final, normalised."""
    model = open_clip.create_model_from_pretrained(
        "hf-hub:" + REPOS["clip"], return_transform=False
    ).eval()  # offline, from the tiny Hub, image tower included
    tokens = open_clip.get_tokenizer("ViT-H-14-378-quickgelu")(PROMPTS)
    with torch.no_grad():
        x = model.token_embedding(tokens) + model.positional_embedding
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    torch.testing.assert_close(clip(PROMPTS), F.normalize(x, dim=-1), atol=1e-5, rtol=1e-5)


def test_clip_loads_no_image_tower(clip, tiny_hub):
    names = [n for n, _ in clip.named_parameters()]
    assert names and not any("visual" in n for n in names)
    assert clip.tower.text_projection is None  # per-token states come before the projection
    checkpoint = tiny_hub.path(REPOS["clip"], "open_clip_pytorch_model.bin")
    state = load_clip_text_state(checkpoint)
    full = torch.load(checkpoint, weights_only=True)
    assert any(k.startswith("visual.") for k in full)
    assert not any(k.startswith(("visual.", "logit_scale", "text_projection")) for k in state)
    assert not any(p.requires_grad for p in clip.parameters())


def test_clip_from_safetensors_folder(clip, tiny_hub, tmp_path):
    snapshot = tiny_hub.snapshot(REPOS["clip"])
    full = torch.load(snapshot / "open_clip_pytorch_model.bin", weights_only=True)
    save_file({k: v.contiguous() for k, v in full.items()}, tmp_path / "open_clip_model.safetensors")
    (tmp_path / "open_clip_config.json").write_bytes((snapshot / "open_clip_config.json").read_bytes())
    enc = ClipTextEncoder.from_pretrained(local_dir=tmp_path)
    torch.testing.assert_close(enc(PROMPTS), clip(PROMPTS))


def test_clip_bf16(tiny_hub):
    enc = ClipTextEncoder.from_pretrained(REPOS["clip"], dtype=torch.bfloat16)
    feats = enc(["dog barking"])
    assert feats.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in enc.parameters())


def test_encoders_from_resolved_folders(tiny_hub):
    paths = resolve(TINY_16K)
    t5 = T5TextEncoder.from_pretrained(local_dir=paths["t5"])
    clip = ClipTextEncoder.from_pretrained(local_dir=paths["clip"])
    assert t5(["rain"])[0].shape[-1] == T5_DIM and clip(["rain"]).shape == (1, 77, CLIP_WIDTH)


def test_prompts_must_be_strings(t5, clip):
    with pytest.raises(InputError):
        t5([])
    with pytest.raises(InputError):
        clip([3])
    assert clip("one prompt").shape[0] == 1


@pytest.mark.parametrize("encoder", ["t5", "clip"])
def test_a_damaged_encoder_folder_is_a_weights_error(tiny_hub, tmp_path, encoder):
    """Local folders have no checksum to catch a truncated file: loading says what is wrong and what to do."""
    folder = tiny_hub.write_weights_dir(tmp_path, TINY_16K)
    if encoder == "t5":
        damaged, load = next(folder.rglob("model.safetensors")), T5TextEncoder.from_pretrained
    else:
        damaged, load = next(folder.rglob("open_clip_config.json")), ClipTextEncoder.from_pretrained
    damaged.write_bytes(damaged.read_bytes()[:300])
    with pytest.raises(WeightsError) as err:
        load(local_dir=damaged.parent)
    assert str(damaged.parent) in str(err.value) and "selva download" in str(err.value)


@pytest.mark.parametrize("encoder", ["t5", "clip"])
def test_intact_files_a_library_cannot_load_point_at_the_library(tiny_hub, tmp_path, monkeypatch, encoder):
    """Version skew (a changed signature, say) is not reported as damaged files to download again."""
    import open_clip.model
    import transformers

    def changed_api(*args, **kwargs):
        raise TypeError("__init__() got an unexpected keyword argument 'dtype'")

    folder = tiny_hub.write_weights_dir(tmp_path, TINY_16K)
    if encoder == "t5":
        monkeypatch.setattr(transformers.T5EncoderModel, "from_pretrained", changed_api)
        local, load, library = (
            next(folder.rglob("model.safetensors")).parent,
            T5TextEncoder.from_pretrained,
            "transformers",
        )
    else:
        monkeypatch.setattr(open_clip.model, "_build_text_tower", changed_api)
        local, load, library = (
            next(folder.rglob("open_clip_config.json")).parent,
            ClipTextEncoder.from_pretrained,
            "open_clip",
        )
    with pytest.raises(DependencyError) as err:
        load(local_dir=local)
    message = str(err.value)
    assert (
        message.startswith(f"{library} ") and "files read fine" in message and "requirements.txt" in message
    )
    assert "selva download" not in message and not isinstance(err.value, WeightsError)
