"""SelVA Studio benchmark: load time, memory and per-stage latency at real model size.

The real checkpoints cannot be downloaded everywhere this must run, so the
benchmark writes random-weight checkpoints at the real sizes, in the real file
layouts (`weights/generator_<variant>_sup_5.pth`, `weights/video_enc_sup_5.pth`,
`ext_weights/v1-16.pth` with its encoder half, `ext_weights/best_netG.pt` with
weight-normed convolutions under `generator`, a full flan-t5-base-shaped T5
saved by transformers with a 32k Unigram tokenizer, an open_clip ViT-H-14
checkpoint with both towers), once, into a cache folder outside the repo
(default `~/.cache/selva-bench/<variant>/`). It then loads them through
`SelvaPipeline.from_pretrained(..., weights_dir=...)`, i.e. the production
hub, loading and text-encoder code, and times:

1. the load, with peak RSS right after it and the bytes of the parameters
   and buffers actually loaded (the RSS budget is judged against these);
2. a first run on a synthetic 8 s, 640x360, 25 fps clip (nothing cached):
   probe, text encoders, decode, TextSynch, ODE (total and per step), VAE,
   vocoder, mux, end to end (pipeline call + mux into an mp4);
3. a re-roll: same video and prompt, new seed (the text and sync features
   must come from the pipeline's caches);
4. `selva.media.mux` alone on a synthetic 1080p 8 s h264 clip;
5. on CUDA, peak allocated memory after load and during each run.

It prints a table and one line `BENCH_JSON {...}` with every number.

Usage (from the repository root):

    python -m benchmarks.bench                       # small_16k, device and precision picked as the app does
    python -m benchmarks.bench --dtype fp32 --steps 25
    python -m benchmarks.bench --device cuda --dtype bf16 --compile
    python -m benchmarks.bench --weights-dir /data/selva   # real weights in the local-folder layout

Randomness makes the audio noise, not the timings: every network does the same
arithmetic on random weights as on trained ones.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import pickle
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(os.environ.get("SELVA_BENCH_CACHE", "~/.cache/selva-bench")).expanduser()
JSON_PREFIX = "BENCH_JSON "
# Bump when what the builder writes changes: cached folders with another version are rebuilt.
BUILD_VERSION = 1
BUILT_MARKER = "BUILT.json"

PROMPT = "dog barking"
WARMUP_PROMPT = "a car engine revving"  # a different prompt, so the timed first run misses every cache
GB = 1000**3
MB = 1000**2

# The targets; checked by running this benchmark, never by timed tests.
TARGET_CUDA_E2E_S = 1.0  # one H100, bf16, 8 s clip, warm models: decode to muxed mp4
TARGET_REROLL_RATIO = 0.6  # re-roll / first run, end to end
TARGET_RSS_OVER_PARAMS = 1.5 * GB  # peak RSS after load minus the bytes of the loaded parameters
TARGET_MUX_1080P_S = 0.3


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

    variant: Any  # selva.variants.Variant
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
            # Plain fields only: the child imports this file as another module, so BuildSpec itself
            # would not unpickle there; the variant's classes live in `selva` and do.
            spec_file.write_bytes(
                pickle.dumps({f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)})
            )
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            }
            cmd = [sys.executable, "-m", "benchmarks.bench", "--build-only", str(spec_file)]
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
    save(generator_state(v.generator_config), target(v.generator_file))
    save(text_synch_state(v.text_synch_config), target(v.text_synch_file))
    save(vae_state(v.vae_config), target(v.vae_file))
    vocoder_config = v.vocoder_config
    if v.vocoder_config_file is not None:
        vocoder_config = bigvgan_v2_config(v.vae_config.data_dim)
        write_text(target(v.vocoder_config_file), json.dumps(vocoder_config, indent=2))
        from selva.models.bigvgan import BigVGANConfig

        vocoder_config = BigVGANConfig.from_dict(vocoder_config)
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


def generator_state(config) -> dict:
    """The generator at its configured size with PyTorch's default init; keys are the checkpoint's."""
    from selva.models.generator import Generator

    return Generator(config).state_dict()


def text_synch_state(config) -> dict:
    from selva.models.text_synch import TextSynch

    return TextSynch(config).state_dict()


def vae_state(config) -> dict:
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


def vae_encoder_shapes(config) -> dict[str, tuple[int, ...]]:
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


def bigvgan_v2_config(num_mels: int) -> dict[str, Any]:
    """config.json of nvidia/bigvgan_v2_44khz_128band_512x (the 44.1 kHz variants' vocoder)."""
    return {
        "resblock": "1",
        "num_mels": num_mels,
        "upsample_rates": [8, 4, 2, 2, 2, 2],
        "upsample_kernel_sizes": [16, 8, 4, 4, 4, 4],
        "upsample_initial_channel": 1536,
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


def bigvgan_state(config) -> dict:
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


def t5_tokenizer(pieces: int):
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


def write_t5(variant, folder: Path) -> None:
    """A full T5 (encoder and decoder, as flan-t5-base ships) saved by transformers, plus its tokenizer."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    config_kwargs, pieces = t5_config_for(variant.text_synch_config.text_dim)
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


def write_clip(variant, config_path: Path, weights_path: Path, *, visual: bool) -> None:
    """open_clip_config.json + open_clip_pytorch_model.bin with the real key layout of a CLIP.

    The text tower gets open_clip's own init; the image tower (never read by
    the loader, which memory-maps the file) is zeros, or left out with `visual=False`.
    """
    import torch
    from open_clip.model import CLIP, _build_text_tower

    config = clip_config_for(variant.generator_config.text_dim)
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


# -- synthetic media --------------------------------------------------------------------------------


def ensure_clip(folder: Path, *, width: int, height: int, fps: int, duration: float, bitrate: int) -> Path:
    """An h264 + AAC mp4 of moving, noisy content (cached); noise keeps the bitrate realistic."""
    path = folder / f"clip_{width}x{height}_{fps}fps_{duration:g}s_{bitrate // 1000}k.mp4"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.mp4")
        make_clip(tmp, width=width, height=height, fps=fps, duration=duration, bitrate=bitrate)
        os.replace(tmp, path)
    return path


def make_clip(path: Path, *, width: int, height: int, fps: int, duration: float, bitrate: int) -> None:
    """Encode a clip like a phone's: h264 yuv420p, a keyframe a second, 48 kHz stereo AAC, interleaved."""
    from fractions import Fraction

    import av
    import numpy as np

    rng = np.random.default_rng(0)
    n_frames = round(duration * fps)
    sample_rate, audio_chunk = 48_000, 1024
    ys, xs = np.mgrid[0:height, 0:width]
    background = np.stack(
        [(xs * 255 // max(width - 1, 1)), (ys * 255 // max(height - 1, 1)), np.full_like(xs, 96)], axis=-1
    ).astype(np.int16)
    side = max(height // 4, 8)
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.bit_rate = bitrate
        video.codec_context.gop_size = fps
        video.options = {"preset": "veryfast"}
        audio = container.add_stream("aac", rate=sample_rate, layout="stereo")
        audio_pts = 0
        for i in range(n_frames + 1):
            if i < n_frames:
                img = background + rng.integers(-24, 25, size=background.shape, dtype=np.int16)
                x = int((width - side) * (0.5 + 0.5 * math.sin(2 * math.pi * i / (2 * fps))))
                y = int((height - side) * i / max(n_frames - 1, 1))
                img[y : y + side, x : x + side] = (250, 240, 40)
                frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, fps)
                packets = video.encode(frame)
            else:
                packets = video.encode(None)  # flush
            container.mux(packets)
            # Audio up to this video time, so the streams interleave as in a camera file.
            until = min((i + 1) / fps, duration) * sample_rate if i < n_frames else duration * sample_rate
            while audio_pts < until:
                t = (audio_pts + np.arange(audio_chunk)) / sample_rate
                tone = 0.2 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(audio_chunk)
                samples = np.stack([tone, tone]).astype(np.float32)
                aframe = av.AudioFrame.from_ndarray(samples, format="fltp", layout="stereo")
                aframe.sample_rate, aframe.pts = sample_rate, audio_pts
                container.mux(audio.encode(aframe))
                audio_pts += audio_chunk
        container.mux(audio.encode(None))


# -- measuring ---------------------------------------------------------------------------------------


def _status_bytes(field: str) -> int | None:
    """A `/proc/self/status` memory field (VmHWM, VmRSS) in bytes; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss() -> int:
    """Peak resident set size of this process since start (or since `reset_peak_rss`)."""
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # macOS reports bytes, Linux KiB


def current_rss() -> int:
    return _status_bytes("VmRSS") or peak_rss()


def reset_peak_rss() -> bool:
    """Restart VmHWM at the current RSS (Linux: write 5 to clear_refs), so earlier peaks do not count."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def loaded_bytes(module: Any) -> int:
    """Bytes of the parameters and buffers of `module` (shared tensors once)."""
    from itertools import chain

    seen: set[tuple[int, int]] = set()
    total = 0
    for t in chain(module.parameters(), module.buffers()):
        key = (t.data_ptr(), t.numel())
        if key in seen or t.is_meta:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


@contextlib.contextmanager
def stopwatch(out: dict[str, float], name: str, sync=None) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        if sync is not None:
            sync()
        out[name] = time.perf_counter() - start


def cpu_name() -> str:
    """The CPU's model name (platform.processor() is often empty on Linux)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the benchmark ----------------------------------------------------------------------------------

COMPONENTS = ("t5", "clip", "text_synch", "generator", "vae", "vocoder")
STAGES = ("probe", "text", "decode", "text_synch", "flow", "flow_per_step", "vae", "vocoder", "total")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description="Time SelVA Studio at real model size on random weights (see the module docstring).",
    )
    p.add_argument("--variant", default="small_16k", help="a registered variant (default small_16k)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", help="auto (the app's choice), bf16, fp16 or fp32")
    p.add_argument("--offload", default="auto", help="auto, keep_in_vram or offload_to_cpu")
    p.add_argument("--steps", type=int, default=25, help="Euler steps (default 25)")
    p.add_argument("--compile", action="store_true", help="torch.compile the generator and TextSynch")
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed runs before the first timed one (default: 1; with a different prompt, caches cleared)",
    )
    p.add_argument("--duration", type=float, default=8.0, help="clip length in seconds (default 8)")
    p.add_argument("--size", default="640x360", help="benchmark clip WxH (default 640x360)")
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--mux-size", default="1920x1080", help="clip size for the mux-only timing")
    p.add_argument("--mux-repeats", type=int, default=5, help="mux-only timings (the median is reported)")
    p.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE, help=f"built weights and clips ({DEFAULT_CACHE})"
    )
    p.add_argument(
        "--weights-dir",
        type=Path,
        default=None,
        help="use this local weights folder (e.g. the real files) instead of building random ones",
    )
    p.add_argument(
        "--no-clip-visual",
        action="store_true",
        help="leave CLIP's image tower out of the built checkpoint (saves 2.5 GB of disk; never loaded)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--build-in-process", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--build-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("size", "mux_size"):
        try:
            w, h = (int(x) for x in getattr(args, name).lower().split("x"))
        except ValueError:
            p.error(f"--{name.replace('_', '-')} must be WxH, e.g. 640x360")
        setattr(args, name, (w, h))
    if args.steps < 1:
        p.error("--steps must be at least 1")
    return args


def bench_variant(name: str):
    """The registered variant with its MD5 sums dropped: random files cannot match the real ones."""
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


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from selva import media
    from selva.pipeline import SelvaPipeline
    from selva.variants import get_variant

    if args.threads:
        torch.set_num_threads(args.threads)

    # 1. Weights and clips (built once, cached outside the repo).
    if args.weights_dir is not None:
        variant, weights_dir, source = get_variant(args.variant), args.weights_dir, "given"
    else:
        variant = bench_variant(args.variant)
        spec = BuildSpec(variant, args.cache_dir / variant.name, clip_visual=not args.no_clip_visual)
        weights_dir, source = ensure_weights(spec, in_process=args.build_in_process), "random"
    media_dir = args.cache_dir / "media"
    (w, h), (mw, mh) = args.size, args.mux_size
    clip = ensure_clip(media_dir, width=w, height=h, fps=args.fps, duration=args.duration, bitrate=1_500_000)
    clip_big = ensure_clip(
        media_dir, width=mw, height=mh, fps=args.fps, duration=args.duration, bitrate=16_000_000
    )

    # 2. Load, measuring the peak RSS of loading alone.
    import gc

    gc.collect()
    peak_reset = reset_peak_rss()
    rss_before = current_rss()
    t0 = time.perf_counter()
    pipe = SelvaPipeline.from_pretrained(
        variant, device=args.device, dtype=args.dtype, offload=args.offload, weights_dir=weights_dir
    )
    load_s = time.perf_counter() - t0
    peak_after_load = peak_rss()
    rss_after_load = current_rss()
    pipe.set_progress_bar_config(disable=True)
    device = pipe.device
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    by_component = {name: loaded_bytes(getattr(pipe, name)) for name in COMPONENTS}
    param_bytes = sum(by_component.values())
    cuda_after_load = torch.cuda.max_memory_allocated(device) if cuda else None

    if args.compile:
        # In place (nn.Module.compile), so the pipeline's attribute look-ups (config, helpers) still work.
        pipe.generator.compile()
        pipe.text_synch.compile()

    with tempfile.TemporaryDirectory(prefix="selva-bench-") as tmp_name:
        tmp = Path(tmp_name)

        def generate(prompt: str, seed: int, steps: int) -> tuple[dict[str, Any], Any]:
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            hits = (pipe.prompt_cache.hits, pipe.sync_cache.hits)
            wall: dict[str, float] = {}
            # CPU time of this process next to wall time: on a shared machine the wall clock also
            # counts other people's work, CPU seconds much less so.
            cpu0, load0 = time.process_time(), os.getloadavg()[0]
            with stopwatch(wall, "e2e", sync):
                with stopwatch(wall, "call", sync):
                    out = pipe(clip, prompt, seed=seed, steps=steps)
                with stopwatch(wall, "mux"):
                    muxed = out.save_video(tmp / f"out_{seed}.mp4")
            row: dict[str, Any] = {k: out.timings.get(k) for k in STAGES}
            row.update(
                mux=wall["mux"],
                e2e=wall["e2e"],
                e2e_cpu=time.process_time() - cpu0,
                loadavg_1min=(load0, os.getloadavg()[0]),
                prompt_cache_hit=pipe.prompt_cache.hits > hits[0],
                sync_cache_hit=pipe.sync_cache.hits > hits[1],
                audio_finite=bool(torch.isfinite(out.audio).all()),
                audio_seconds=out.audio.shape[-1] / out.sample_rate,
                mp4_bytes=muxed.stat().st_size,
            )
            if cuda:
                row["cuda_peak_allocated"] = torch.cuda.max_memory_allocated(device)
            return row, out

        # 3. Warm-up (kernels, allocator, compile), then clear the caches so the first run misses.
        warmups = args.warmup if args.warmup is not None else 1
        # On the CPU a short warm-up primes the same kernels at a fraction of the cost: every step is alike.
        warm_steps = args.steps if cuda or args.compile else min(args.steps, 2)
        for i in range(warmups):
            log(f"warm-up {i + 1}/{warmups} ({warm_steps} steps)")
            generate(WARMUP_PROMPT, 1000 + i, warm_steps)
        pipe.clear_caches()

        # 4. First run (nothing cached), then a re-roll (same video and prompt, new seed).
        log(f"first run ({args.steps} steps)")
        first, out = generate(PROMPT, 1, args.steps)
        # With float32 mmap-backed weights, pages come in on first use: only now is all of it resident.
        rss_after_first = current_rss()
        log("re-roll")
        reroll, _ = generate(PROMPT, 2, args.steps)

        # 5. The mux alone on a 1080p clip with the generated audio.
        mux_times = []
        for i in range(max(args.mux_repeats, 1)):
            t0 = time.perf_counter()
            media.mux(
                clip_big,
                out.audio[0],
                out.sample_rate,
                tmp / f"mux_{i}.mp4",
                start=0.0,
                duration=out.duration,
            )
            mux_times.append(time.perf_counter() - t0)

    result: dict[str, Any] = {
        "variant": variant.name,
        "weights": source,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_name(),
        "dtype": str(pipe.dtype).removeprefix("torch."),
        "offload": pipe.offload,
        "steps": args.steps,
        "compile": args.compile,
        "warmup_runs": warmups,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "clip": {
            "size": f"{w}x{h}",
            "fps": args.fps,
            "duration": args.duration,
            "bytes": clip.stat().st_size,
        },
        "load_s": load_s,
        "rss_before_load": rss_before,
        "peak_rss_after_load": peak_after_load,
        "rss_after_load": rss_after_load,
        "peak_rss_reset": peak_reset,
        "param_bytes": param_bytes,
        "param_bytes_by_component": by_component,
        "rss_over_params": peak_after_load - param_bytes,
        "first": first,
        "reroll": reroll,
        "reroll_ratio": reroll["e2e"] / first["e2e"],
        "reroll_ratio_cpu": reroll["e2e_cpu"] / first["e2e_cpu"],
        "mux_1080p": {
            "size": f"{mw}x{mh}",
            "bytes": clip_big.stat().st_size,
            "first_s": mux_times[0],
            "median_s": statistics.median(mux_times),
            "runs_s": mux_times,
        },
        "rss_after_first_run": rss_after_first,
        "peak_rss_end": peak_rss(),
    }
    if cuda:
        result["cuda_peak_allocated_after_load"] = cuda_after_load
    result["targets"] = check_targets(result)
    return result


def check_targets(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's targets that apply to this run: value, limit, met."""

    def target(value: float, limit: float) -> dict[str, Any]:
        return {"value": value, "limit": limit, "met": value <= limit}

    out = {"reroll_ratio": target(r["reroll_ratio"], TARGET_REROLL_RATIO)}
    if r["mux_1080p"]["size"] == "1920x1080":
        out["mux_1080p_s"] = target(r["mux_1080p"]["median_s"], TARGET_MUX_1080P_S)
    if r["device"].startswith("cpu"):
        out["rss_over_params_bytes"] = target(r["rss_over_params"], TARGET_RSS_OVER_PARAMS)
        # The same budget once every weight is resident: float32 weights are memory-mapped and
        # only paged in when first used, so right after loading they can be far below their size.
        over = r["rss_after_first_run"] - r["param_bytes"]
        out["rss_after_first_run_over_params_bytes"] = target(over, TARGET_RSS_OVER_PARAMS)
    if r["device"].startswith("cuda") and r["dtype"] == "bfloat16":
        out["cuda_e2e_s"] = target(r["first"]["e2e"], TARGET_CUDA_E2E_S)
    return out


def format_table(r: dict[str, Any]) -> str:
    def s(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    def gb(x: float | None) -> str:
        return "-" if x is None else f"{x / GB:.2f} GB"

    first, reroll = r["first"], r["reroll"]
    lines = [
        f"SelVA benchmark: {r['variant']} ({r['weights']} weights) on {r['device']} ({r['device_name']}), "
        f"{r['dtype']}, {r['steps']} steps, compile={r['compile']}, {r['threads']} threads, "
        f"torch {r['torch']}",
        f"clip {r['clip']['size']} {r['clip']['fps']} fps {r['clip']['duration']:g} s; "
        f"warm-up runs: {r['warmup_runs']}",
        "",
        f"load: {r['load_s']:.2f} s; RSS before {gb(r['rss_before_load'])}, peak after load "
        f"{gb(r['peak_rss_after_load'])}, parameters {gb(r['param_bytes'])} "
        f"(peak - parameters = {gb(r['rss_over_params'])})",
        "parameters by component: "
        + ", ".join(f"{k} {v / MB:.0f} MB" for k, v in r["param_bytes_by_component"].items()),
        "",
        "| stage (s)          | first run |   re-roll |",
        "|--------------------|-----------|-----------|",
    ]
    names = {
        "probe": "probe",
        "text": "text encoders",
        "decode": "decode",
        "text_synch": "TextSynch",
        "flow": "ODE total",
        "flow_per_step": "ODE per step",
        "vae": "VAE",
        "vocoder": "vocoder",
        "total": "pipeline call",
        "mux": "mux",
        "e2e": "end to end",
    }
    for key, label in names.items():
        lines.append(f"| {label:<18} | {s(first.get(key)):>9} | {s(reroll.get(key)):>9} |")
    lines.append(
        f"| {'cache hit':<18} | {str(first['sync_cache_hit']):>9} | {str(reroll['sync_cache_hit']):>9} |"
    )
    if "cuda_peak_allocated" in first:
        lines.append(
            f"| {'CUDA peak alloc':<18} | {gb(first['cuda_peak_allocated']):>9} | "
            f"{gb(reroll['cuda_peak_allocated']):>9} |"
        )
        lines.append(f"CUDA allocated after load: {gb(r['cuda_peak_allocated_after_load'])}")
    m = r["mux_1080p"]
    lines += [
        "",
        f"re-roll / first run: {r['reroll_ratio']:.2f} (wall), {r['reroll_ratio_cpu']:.2f} (CPU time); "
        f"1-min load average at start: first {first['loadavg_1min'][0]:.1f}, "
        f"re-roll {reroll['loadavg_1min'][0]:.1f} ({os.cpu_count()} CPUs)",
        f"mux alone, {m['size']} {r['clip']['duration']:g} s ({m['bytes'] / MB:.1f} MB): "
        f"median {m['median_s']:.3f} s, first {m['first_s']:.3f} s",
        f"RSS after the first run {gb(r['rss_after_first_run'])}; peak RSS at the end "
        f"{gb(r['peak_rss_end'])} (peak - parameters = {gb(r['peak_rss_end'] - r['param_bytes'])})",
        "",
        "targets:",
    ]
    for name, t in r["targets"].items():
        lines.append(f"  {name}: {t['value']:.3g} (limit {t['limit']:.3g}) {'met' if t['met'] else 'MISSED'}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.build_only is not None:
        build_weights(BuildSpec(**pickle.loads(args.build_only.read_bytes())))
        return 0
    # The benchmark never downloads: every file is built locally or given with --weights-dir.
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        result = run_benchmark(args)
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous
    print(format_table(result))
    print(JSON_PREFIX + json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
