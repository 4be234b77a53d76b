"""Random-weight SelVA checkpoints at the real sizes and in the real file layouts, for the benchmark.

The real checkpoints cannot be downloaded everywhere the benchmark must run,
so this writes random ones that the production loader cannot tell apart:
`weights/generator_<variant>_sup_5.pth`, `weights/video_enc_sup_5.pth`,
`ext_weights/v1-16.pth` (or v1-44) with its encoder half, the vocoder with
weight-normed convolutions under `generator` (`ext_weights/best_netG.pt`, or
BigVGAN v2's `bigvgan_generator.pt` with its `config.json`), a full
flan-t5-base-shaped T5 saved by transformers with a 32k Unigram tokenizer, and
an open_clip ViT-H-14 checkpoint with both towers. Each SelVA network is built
at the variant's configured size; the text encoders and BigVGAN v2, which the
registry does not size, are real-size for the real networks and tiny for the
tiny test variants (see `t5_config_for`, `clip_config_for`, `bigvgan_v2_config`).

`ensure_weights(BuildSpec(...))` builds a folder once, in a child process
(`python -m benchmarks.build_weights SPEC`), and marks it with `BUILT.json`;
a folder whose marker matches the spec is reused as is.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported lazily at run time: the parent process never needs torch for these
    import torch
    from tokenizers import Tokenizer

    from selva.models.bigvgan import BigVGANConfig
    from selva.models.generator import GeneratorConfig
    from selva.models.text_synch import TextSynchConfig
    from selva.models.vae import VAEConfig
    from selva.variants import Variant

ROOT = Path(__file__).resolve().parents[1]
# Bump when what the builder writes changes: cached folders with another version are rebuilt.
BUILD_VERSION = 1
BUILT_MARKER = "BUILT.json"
MB = 1000**2


# -- sizes of the two text encoders ----------------------------------------------------------------
# Neither appears in the variant registry (their configs ship with their checkpoints), so the
# builder derives them from the widths the SelVA networks expect: T5's d_model is TextSynch's
# text_dim, CLIP's text width is the generator's text_dim. Real widths give the real models.

T5_BASE_CONFIG: dict[str, Any] = {  # google/flan-t5-base
    "vocab_size": 32128,
    "d_model": 768,
    "d_kv": 64,
    "d_ff": 2048,
    "num_layers": 12,
    "num_decoder_layers": 12,
    "num_heads": 12,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}
T5_BASE_PIECES = 32000  # sentencepiece pieces; plus 100 sentinel tokens = the real 32100

DFN5B_CLIP_CONFIG: dict[str, Any] = {  # apple/DFN5B-CLIP-ViT-H-14-384, open_clip_config.json
    "model_cfg": {
        "embed_dim": 1024,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 384, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24},
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "squash",
    },
}


def t5_config_for(d_model: int) -> tuple[dict[str, Any], int]:
    """(T5Config kwargs, tokenizer pieces): flan-t5-base at 768, else a tiny T5 of that width."""
    if d_model == T5_BASE_CONFIG["d_model"]:
        return dict(T5_BASE_CONFIG), T5_BASE_PIECES
    tiny = {**T5_BASE_CONFIG, "vocab_size": 128, "d_model": d_model, "d_kv": 8, "d_ff": 64}
    tiny.update(num_layers=2, num_decoder_layers=1, num_heads=2, relative_attention_num_buckets=8)
    return tiny, 0  # 0 pieces: letters, digits and punctuation only


def clip_config_for(width: int) -> dict[str, Any]:
    """open_clip_config.json: DFN5B's ViT-H-14 at width 1024, else a tiny CLIP with that text width."""
    if width == DFN5B_CLIP_CONFIG["model_cfg"]["text_cfg"]["width"]:
        return json.loads(json.dumps(DFN5B_CLIP_CONFIG))
    cfg = json.loads(json.dumps(DFN5B_CLIP_CONFIG))
    cfg["model_cfg"]["embed_dim"] = 32
    cfg["model_cfg"]["vision_cfg"] = {
        "image_size": 32,
        "layers": 1,
        "width": 32,
        "head_width": 16,
        "patch_size": 16,
    }
    cfg["model_cfg"]["text_cfg"].update(width=width, heads=2, layers=2)
    return cfg


# -- random-weight checkpoints in the real layouts --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BuildSpec:
    """What the builder (a child process) writes; pickled to it."""

    variant: Variant
    folder: Path
    clip_visual: bool  # write CLIP's image tower too (at real size: 2.5 GB never read by the loader)
    seed: int = 0

    def marker(self) -> dict[str, Any]:
        v = self.variant
        return {
            "version": BUILD_VERSION,
            "variant": v.name,
            "configs": repr((v.generator_config, v.text_synch_config, v.vae_config, v.vocoder_config)),
            "clip_visual": self.clip_visual,
        }


def is_built(spec: BuildSpec) -> bool:
    try:
        return json.loads((spec.folder / BUILT_MARKER).read_text()) == spec.marker()
    except (OSError, ValueError):
        return False


def ensure_weights(spec: BuildSpec, *, in_process: bool = False) -> Path:
    """The variant's random checkpoints under `spec.folder`, built once (in a child process).

    The child keeps the build's memory out of this process: glibc keeps freed
    heap pages resident, which would inflate the RSS measured after loading.
    """
    if is_built(spec):
        return spec.folder
    log(f"building random real-layout checkpoints for {spec.variant.name} in {spec.folder} (once)")
    t0 = time.perf_counter()
    if in_process:
        build_weights(spec)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            spec_file = Path(tmp) / "spec.pkl"
            # Plain fields only: the child runs this file as `__main__`, whose BuildSpec is not the class
            # this spec was made from (whatever name that module had); the variant's classes live in
            # `selva`, the same in both processes.
            spec_file.write_bytes(
                pickle.dumps({f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)})
            )
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            }
            cmd = [sys.executable, "-m", "benchmarks.build_weights", str(spec_file)]
            subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    if not is_built(spec):
        raise RuntimeError(f"building the checkpoints in {spec.folder} failed")
    log(f"built in {time.perf_counter() - t0:.1f} s")
    return spec.folder


def build_weights(spec: BuildSpec) -> None:
    """Write every file the variant needs, each from its network built at the variant's size."""
    import torch

    from selva.hub import local_path

    v = spec.variant
    folder = spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / BUILT_MARKER).unlink(missing_ok=True)
    torch.manual_seed(spec.seed)

    def target(f) -> Path:
        path = local_path(folder, f)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # One network at a time, each freed before the next: the largest is CLIP's 986 M parameters.
    from selva.loading import network_config

    save(generator_state(network_config(v, "generator")), target(v.generator_file))
    save(text_synch_state(network_config(v, "text_synch")), target(v.text_synch_file))
    save(vae_state(network_config(v, "vae")), target(v.vae_file))
    if v.vocoder_config_file is not None:
        config_path = target(v.vocoder_config_file)
        write_text(config_path, json.dumps(bigvgan_v2_config(network_config(v, "vae")), indent=2))
        vocoder_config = network_config(v, "vocoder", {"vocoder_config": config_path})
    else:
        vocoder_config = network_config(v, "vocoder")
    save({"generator": bigvgan_state(vocoder_config)}, target(v.vocoder_file))
    write_t5(v, target(v.t5.files[0]).parent)
    write_clip(v, target(v.clip.config_file), target(v.clip.weights_file), visual=spec.clip_visual)
    write_text(folder / BUILT_MARKER, json.dumps(spec.marker(), indent=2))


def save(obj: Any, path: Path) -> None:
    """torch.save to a temporary name, then rename: an interrupted build leaves no half file."""
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    log(f"  wrote {path.relative_to(path.parents[1])} ({path.stat().st_size / MB:.0f} MB)")


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def generator_state(config: GeneratorConfig) -> dict[str, torch.Tensor]:
    """The generator at its configured size with PyTorch's default init; keys are the checkpoint's."""
    from selva.models.generator import Generator

    return Generator(config).state_dict()


def text_synch_state(config: TextSynchConfig) -> dict[str, torch.Tensor]:
    from selva.models.text_synch import TextSynch

    return TextSynch(config).state_dict()


def vae_state(config: VAEConfig) -> dict[str, torch.Tensor]:
    """Decoder as the module holds it, plus the encoder half the real file carries (never loaded).

    Default conv init is fine here: the loader folds the magnitude-preserving
    normalisation into each weight, so any finite weight gives unit-norm filters.
    """
    import torch

    from selva.models.vae import VAEDecoder

    state = VAEDecoder(config).state_dict()
    for key, shape in vae_encoder_shapes(config).items():
        state[key] = torch.randn(shape) * 0.02
    return state


def vae_encoder_shapes(config: VAEConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the VAE encoder's keys in `ext_weights/v1-*.pth` (the mirror of the decoder).

    Levels 0..n-1 with `num_res_blocks` blocks each (a 1x1 shortcut where the
    width changes), a two-conv 1x1 downsampler after each level in `down_layers`,
    the same middle block as the decoder, and an output conv to mean and log-variance.
    """
    k = 3
    widths = [config.hidden_dim * m for m in config.ch_mult]
    shapes: dict[str, tuple[int, ...]] = {
        "encoder.learnable_gain": (),
        "encoder.conv_in.weight": (widths[0], config.data_dim, k),
    }
    in_dim = widths[0]
    for i, w in enumerate(widths):
        for j in range(config.num_res_blocks):
            p = f"encoder.down.{i}.block.{j}"
            shapes[f"{p}.conv1.weight"] = (w, in_dim, k)
            shapes[f"{p}.conv2.weight"] = (w, w, k)
            if in_dim != w:
                shapes[f"{p}.nin_shortcut.weight"] = (w, in_dim, 1)
            in_dim = w
            if i in config.attn_layers:
                shapes[f"encoder.down.{i}.attn.{j}.qkv.weight"] = (3 * w, w, 1)
                shapes[f"encoder.down.{i}.attn.{j}.proj_out.weight"] = (w, w, 1)
        if i in config.down_layers:
            shapes[f"encoder.down.{i}.downsample.conv1.weight"] = (w, w, 1)
            shapes[f"encoder.down.{i}.downsample.conv2.weight"] = (w, w, 1)
    c = widths[-1]
    for b in ("block_1", "block_2"):
        shapes[f"encoder.mid.{b}.conv1.weight"] = (c, c, k)
        shapes[f"encoder.mid.{b}.conv2.weight"] = (c, c, k)
    shapes["encoder.mid.attn_1.qkv.weight"] = (3 * c, c, 1)
    shapes["encoder.mid.attn_1.proj_out.weight"] = (c, c, 1)
    shapes["encoder.conv_out.weight"] = (2 * config.embed_dim, c, k)
    return shapes


def bigvgan_v2_config(vae_config: VAEConfig) -> dict[str, Any]:
    """config.json of nvidia/bigvgan_v2_44khz_128band_512x (the 44.1 kHz variants' vocoder).

    The registry gives this vocoder no size (its config ships with its checkpoint), so, as for
    the text encoders, the size follows a network it does size: the real 44.1 kHz VAE gets the
    real 1536-channel vocoder, any other VAE the same layout at 64 channels (the least that
    leaves one channel after six halvings), so the tiny variant's smoke run stays quick.
    """
    from selva.models.vae import VAE_PRESETS

    return {
        "resblock": "1",
        "num_mels": vae_config.data_dim,
        "upsample_rates": [8, 4, 2, 2, 2, 2],
        "upsample_kernel_sizes": [16, 8, 4, 4, 4, 4],
        "upsample_initial_channel": 1536 if vae_config == VAE_PRESETS["44k"] else 64,
        "resblock_kernel_sizes": [3, 7, 11],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        "activation": "snakebeta",
        "snake_logscale": True,
        "use_tanh_at_final": False,
        "use_bias_at_final": False,
        "use_cuda_kernel": False,
        "sampling_rate": 44100,
        "hop_size": 512,
        "n_fft": 2048,
        "win_size": 2048,
        "fmin": 0,
        "fmax": None,
    }


def bigvgan_state(config: BigVGANConfig) -> dict[str, torch.Tensor]:
    """BigVGAN with every convolution stored weight-normed (`parametrizations.weight.original0/1`).

    With g = ||v|| per output channel, folding g * v / ||v|| gives back the
    default-initialised weight, so the loader's folding runs on sane numbers.
    """
    import torch
    from torch import nn

    from selva.models.bigvgan import BigVGAN

    model = BigVGAN(config)
    state = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv1d | nn.ConvTranspose1d):
            v = state.pop(f"{name}.weight")
            g = torch.linalg.vector_norm(v, dim=tuple(range(1, v.ndim)), keepdim=True)
            state[f"{name}.parametrizations.weight.original0"] = g
            state[f"{name}.parametrizations.weight.original1"] = v
    return state


def t5_tokenizer(pieces: int) -> tuple[Tokenizer, list[str]]:
    """A T5-style Unigram tokenizer (`tokenizers`): specials, characters, then letter n-grams.

    Real flan-t5-base has 32000 sentencepiece pieces and 100 sentinels; the
    pieces here are made up, but the size, the specials and the ids match.
    """
    import itertools
    import string

    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    specials = ["<pad>", "</s>", "<unk>"]
    vocab: dict[str, float] = dict.fromkeys(specials, 0.0)
    singles = string.ascii_lowercase + string.digits
    for c in singles + string.punctuation:
        vocab.setdefault(c, -8.0)
    for c in singles:
        vocab.setdefault("\u2581" + c, -9.0)
    # Longer pieces score higher per piece, so words split into few tokens, as with a real vocab.
    for n in (2, 3):
        for combo in itertools.product(string.ascii_lowercase, repeat=n):
            if len(vocab) >= pieces:
                break
            s = "".join(combo)
            vocab.setdefault(s, -6.0 + n)
            vocab.setdefault("\u2581" + s, -5.0 + n)
    entries = list(vocab.items())
    if pieces:
        entries = entries[:pieces]
    sentinels = [f"<extra_id_{i}>" for i in range(100)] if pieces else []
    entries += [(s, 0.0) for s in reversed(sentinels)]  # <extra_id_0> gets the last id, as in T5
    tok = Tokenizer(models.Unigram(entries, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tok.add_special_tokens([AddedToken(t, special=True) for t in specials + sentinels])
    return tok, sentinels


def write_t5(variant: Variant, folder: Path) -> None:
    """A full T5 (encoder and decoder, as flan-t5-base ships) saved by transformers, plus its tokenizer."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from selva.loading import network_config

    config_kwargs, pieces = t5_config_for(network_config(variant, "text_synch").text_dim)
    folder.mkdir(parents=True, exist_ok=True)
    model = T5ForConditionalGeneration(
        T5Config(architectures=["T5ForConditionalGeneration"], **config_kwargs)
    )
    with torch.no_grad():
        model.save_pretrained(str(folder))
    del model
    tok, sentinels = t5_tokenizer(pieces)
    tok.save(str(folder / "tokenizer.json"))
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    if sentinels:
        special["additional_special_tokens"] = sentinels
    tok_config = {
        "tokenizer_class": "T5Tokenizer",
        "model_max_length": 512,
        "extra_ids": len(sentinels),
        **special,
    }
    write_text(folder / "tokenizer_config.json", json.dumps(tok_config, indent=2))
    write_text(folder / "special_tokens_map.json", json.dumps(special, indent=2))
    log(f"  wrote {folder.name}/ (T5, d_model {config_kwargs['d_model']})")


def write_clip(variant: Variant, config_path: Path, weights_path: Path, *, visual: bool) -> None:
    """open_clip_config.json + open_clip_pytorch_model.bin with the real key layout of a CLIP.

    The text tower gets open_clip's own init; the image tower (never read by
    the loader, which memory-maps the file) is zeros, or left out with `visual=False`.
    """
    import torch
    from open_clip.model import CLIP, _build_text_tower

    from selva.loading import network_config

    config = clip_config_for(network_config(variant, "generator").text_dim)
    model_cfg = config["model_cfg"]
    write_text(config_path, json.dumps(config, indent=2))
    with torch.device("meta"):
        layout = CLIP(**model_cfg).state_dict()  # every key and shape of the real file, no memory
    text = _build_text_tower(
        model_cfg["embed_dim"], model_cfg["text_cfg"], quick_gelu=model_cfg["quick_gelu"]
    )
    text_state = text.state_dict()
    state = {}
    for key, meta in layout.items():
        if key in text_state:
            state[key] = text_state[key]
        elif key == "logit_scale":
            state[key] = torch.full(meta.shape, math.log(1 / 0.07))
        elif key.startswith("visual.") and visual:
            state[key] = torch.zeros(meta.shape, dtype=meta.dtype)
        elif not key.startswith("visual."):
            raise KeyError(f"open_clip's CLIP has a text key {key!r} its text tower lacks")
    save(state, weights_path)


def bench_variant(name: str) -> Variant:
    """The known variant with its MD5 sums dropped: random files cannot match the real ones."""
    from selva.variants import get_variant

    v = get_variant(name)

    def no_md5(f):
        return None if f is None else dataclasses.replace(f, md5=None)

    return dataclasses.replace(
        v,
        generator_file=no_md5(v.generator_file),
        text_synch_file=no_md5(v.text_synch_file),
        vae_file=no_md5(v.vae_file),
        vocoder_file=no_md5(v.vocoder_file),
        vocoder_config_file=no_md5(v.vocoder_config_file),
        t5=dataclasses.replace(v.t5, files=tuple(map(no_md5, v.t5.files))),
        clip=dataclasses.replace(
            v.clip, config_file=no_md5(v.clip.config_file), weights_file=no_md5(v.clip.weights_file)
        ),
    )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """The child process of `ensure_weights`: build what the pickled spec fields describe."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.build_weights", description=main.__doc__)
    p.add_argument("spec", type=Path, help="a pickled dict of BuildSpec's fields")
    args = p.parse_args(argv)
    build_weights(BuildSpec(**pickle.loads(args.spec.read_bytes())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
