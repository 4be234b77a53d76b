"""A tiny fake Hugging Face Hub: tiny SelVA checkpoints in the real repos, files and layouts.

`build_tiny_hub(root, fixtures_dir)` writes a Hugging Face cache under
`root/hf/hub` holding, at the real repo ids and file names:

- jnwnlee/SelVA: the tiny generator, TextSynch, VAE and BigVGAN of
  `parity/pipeline_16k.pt` (best_netG.pt keeps its `generator` wrapper), and
  for 44.1 kHz a random tiny generator with 40 latent channels and the
  `vae_44k.pt` VAE;
- nvidia/bigvgan_v2_44khz_128band_512x: config.json + bigvgan_generator.pt
  from `bigvgan_v2_44k.pt`;
- google/flan-t5-base: a T5 with d_model 40 (TextSynch's tiny text_dim) and a
  Unigram tokenizer built with `tokenizers`, saved by transformers;
- apple/DFN5B-CLIP-ViT-H-14-384: an open_clip CLIP with a 48-wide text tower
  (the tiny generator's text_dim), vocab 49408 and 77 tokens, plus a tiny
  image tower so tests can check it is never loaded.

It writes the variants "tiny_16k" and "tiny_44k" (real file names, tiny
configs, the tiny files' MD5 sums) as a variants file beside the cache, and
`activate` points SELVA_VARIANTS_FILE at it, so `SelvaPipeline.from_pretrained("tiny_16k")`
runs the production code with HF_HUB_OFFLINE=1, in this process and in any it
starts. Checkpoint bytes are built once per process; writing a fresh hub takes
well under a second.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants
from huggingface_hub.errors import EntryNotFoundError

from selva.hub import local_path
from selva.variants import (
    BIGVGAN_44K,
    BIGVGAN_44K_CONFIG,
    RELEASED,
    REPOS,
    VARIANTS_FILE_ENV,
    Variant,
    WeightFile,
    write_variants_file,
)

TINY_16K = "tiny_16k"
TINY_44K = "tiny_44k"
T5_DIM = 40  # = the tiny TextSynch's text_dim
CLIP_WIDTH = 48  # = the tiny generator's text_dim
TINY_T5_WORDS = [
    *("a", "an", "the", "of", "and", "with", "dog", "dogs", "barking", "bark", "cat", "meow", "car"),
    *("engine", "wind", "noise", "rain", "birds", "chirping", "music", "piano", "guitar", "drums"),
    *("water", "splash", "people", "talking", "man", "woman", "speaking", "laugh", "footsteps", "door"),
]

Files = dict[str, dict[str, bytes]]  # repo -> path in the repo -> content


def commit_of(repo: str) -> str:
    """A stable fake commit hash per repo (40 hex digits, as the Hub's)."""
    return hashlib.sha1(f"tiny-hub:{repo}".encode()).hexdigest()


def _saved(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# -- the tiny checkpoints -----------------------------------------------------------------------


def tiny_t5_files() -> dict[str, bytes]:
    """A full T5 (encoder and decoder, like the real checkpoint) and a T5Tokenizer, as files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -1.0) for w in TINY_T5_WORDS]
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    pieces += [(c, -5.0) for c in chars + ".,!?'-"] + [("\u2581" + c, -6.0) for c in chars]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    config = T5Config(
        vocab_size=128,
        d_model=T5_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",  # flan-t5's
        tie_word_embeddings=False,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", model_max_length=512
        )
        fast.save_pretrained(tmp)
        # As in google/flan-t5-base: the T5 tokenizer class (here without the 100 sentinel tokens).
        cfg_path = Path(tmp, "tokenizer_config.json")
        cfg = json.loads(cfg_path.read_text())
        cfg.update(tokenizer_class="T5Tokenizer", extra_ids=0)
        cfg_path.write_text(json.dumps(cfg, indent=2))
        Path(tmp, "special_tokens_map.json").write_text(
            json.dumps({"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"})
        )
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


TINY_CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": CLIP_WIDTH, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "squash",
    },
}


def tiny_clip_files() -> dict[str, bytes]:
    """An open_clip CLIP (image and text towers) saved as the DFN5B repo is: config + .bin."""
    from open_clip.model import CLIP

    torch.manual_seed(0)
    model = CLIP(**TINY_CLIP_CONFIG["model_cfg"])
    return {
        "open_clip_config.json": json.dumps(TINY_CLIP_CONFIG, indent=2).encode(),
        "open_clip_pytorch_model.bin": _saved(model.state_dict()),
    }


def tiny_generator_44k_state(generator_config: dict) -> dict[str, torch.Tensor]:
    """A random tiny generator with 40 latent channels (the tiny 44.1 kHz VAE's)."""
    from selva.models.generator import Generator, GeneratorConfig

    torch.manual_seed(0)
    return Generator(GeneratorConfig.from_dict({**generator_config, "latent_dim": 40})).state_dict()


@functools.cache
def tiny_files(fixtures_dir: str) -> tuple[Files, dict[str, Any]]:
    """Every tiny repo's files (built once per process) and the configs they were made with."""
    parity = Path(fixtures_dir)
    pipe = torch.load(parity / "pipeline_16k.pt", weights_only=True)
    vae44 = torch.load(parity / "vae_44k.pt", weights_only=True)
    voc44 = torch.load(parity / "bigvgan_v2_44k.pt", weights_only=True)
    sd, cfg = pipe["state_dicts"], pipe["configs"]
    selva = {
        "weights/generator_small_16k_sup_5.pth": _saved(sd["generator"]),
        "weights/video_enc_sup_5.pth": _saved(sd["textsynch"]),
        "ext_weights/v1-16.pth": _saved(sd["vae"]),  # encoder included, as in the real file
        "ext_weights/best_netG.pt": _saved({"generator": sd["bigvgan"]}),
        "ext_weights/v1-44.pth": _saved(vae44["state_dict"]),
        "weights/generator_small_44k_sup_5.pth": _saved(tiny_generator_44k_state(cfg["generator"])),
    }
    nvidia = {
        BIGVGAN_44K_CONFIG.path: json.dumps(voc44["config"], indent=2).encode(),
        BIGVGAN_44K.path: _saved({"generator": voc44["state_dict"]}),
    }
    files = {
        REPOS["selva"]: selva,
        REPOS["bigvgan_v2"]: nvidia,
        REPOS["t5"]: tiny_t5_files(),
        REPOS["clip"]: tiny_clip_files(),
    }
    configs = {
        "16k": cfg,
        "44k": {**cfg, "generator": {**cfg["generator"], "latent_dim": 40}, "vae": vae44["config"]},
    }
    return files, configs


def tiny_variants(files: Files, configs: dict[str, Any]) -> dict[str, Variant]:
    """tiny_16k and tiny_44k: the real variants' files and repos, tiny configs, the tiny files' MD5s."""
    def tiny(f: WeightFile) -> WeightFile:
        content = files[f.repo][f.path]
        md5 = hashlib.md5(content).hexdigest() if f.md5 else None  # checked where the real file is
        return dataclasses.replace(f, size=len(content), md5=md5)

    out = {}
    for name, base, rate in ((TINY_16K, "small_16k", "16k"), (TINY_44K, "small_44k", "44k")):
        real, cfg = RELEASED[base], configs[rate]
        t5 = dataclasses.replace(real.t5, files=tuple(map(tiny, real.t5.files)), encoder_params=200_000)
        clip = dataclasses.replace(
            real.clip, config_file=tiny(real.clip.config_file), weights_file=tiny(real.clip.weights_file)
        )
        vocoder_config_file = real.vocoder_config_file and tiny(real.vocoder_config_file)
        out[name] = dataclasses.replace(
            real,
            name=name,
            generator_file=tiny(real.generator_file),
            text_synch_file=tiny(real.text_synch_file),
            vae_file=tiny(real.vae_file),
            vocoder_file=tiny(real.vocoder_file),
            vocoder_config_file=vocoder_config_file,
            generator_config=cfg["generator"],
            text_synch_config=cfg["textsynch"],
            vae_config=cfg["vae"],
            vocoder_config=cfg["bigvgan"] if rate == "16k" else None,
            t5=t5,
            clip=clip,
            description=f"tiny test model shaped like {base}",
        )
    return out


# -- the cache ----------------------------------------------------------------------------------


def repo_folder(cache_dir: Path, repo: str) -> Path:
    return Path(cache_dir) / ("models--" + repo.replace("/", "--"))


def write_cached_file(
    cache_dir: Path, repo: str, path: str, content: bytes, *, commit: str | None = None
) -> Path:
    """One file in the Hub cache layout: blobs/<sha256>, snapshots/<commit>/<path> -> blob, refs/main."""
    commit = commit or commit_of(repo)
    folder = repo_folder(cache_dir, repo)
    blob = folder / "blobs" / hashlib.sha256(content).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(content)
    pointer = folder / "snapshots" / commit / path
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() or pointer.exists():
        pointer.unlink()
    pointer.symlink_to(os.path.relpath(blob, pointer.parent))  # relative, as huggingface_hub makes them
    refs = folder / "refs" / "main"
    refs.parent.mkdir(parents=True, exist_ok=True)
    refs.write_text(commit)
    return pointer


@dataclasses.dataclass
class TinyHub:
    root: Path
    files: Files  # what the (fake) Hub serves; the cache may differ once a test breaks it
    variants: dict[str, Variant]
    calls: list[tuple[str, str, bool]] = dataclasses.field(default_factory=list)  # fake downloads

    @property
    def home(self) -> Path:  # HF_HOME
        return self.root / "hf"

    @property
    def cache_dir(self) -> Path:  # HF_HUB_CACHE
        return self.home / "hub"

    @property
    def variants_file(self) -> Path:  # SELVA_VARIANTS_FILE: the tiny variants
        return self.root / "tiny_variants.json"

    def commit(self, repo: str) -> str:
        return commit_of(repo)

    def snapshot(self, repo: str) -> Path:
        return repo_folder(self.cache_dir, repo) / "snapshots" / commit_of(repo)

    def path(self, repo: str, filename: str) -> Path:
        return self.snapshot(repo) / filename

    def remove(self, repo: str, filename: str) -> None:
        pointer = self.path(repo, filename)
        pointer.resolve().unlink()
        pointer.unlink()

    def corrupt(self, repo: str, filename: str, *, truncate: bool = False) -> Path:
        """Damage a cached file in place: flip bytes (same size) or cut it short (a partial download)."""
        blob = self.path(repo, filename).resolve()
        data = bytearray(blob.read_bytes())
        if truncate:
            data = data[: len(data) // 2]
        else:
            data[-64:] = bytes(64)
        mtime = blob.stat().st_mtime_ns
        blob.write_bytes(bytes(data))
        os.utime(blob, ns=(mtime + 10**9, mtime + 10**9))  # a new mtime even on coarse clocks
        return blob

    def env(self, *, offline: bool = True) -> dict[str, str]:
        return {
            "HF_HOME": str(self.home),
            "HF_HUB_CACHE": str(self.cache_dir),
            "HF_HUB_OFFLINE": "1" if offline else "0",
            "SELVA_STATE_DIR": str(self.root / "selva-state"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            VARIANTS_FILE_ENV: str(self.variants_file),
        }

    def activate(self, monkeypatch, *, offline: bool = True) -> None:
        """Point huggingface_hub (env and its import-time constants) at this cache, and SelVA at the
        tiny variants (an environment variable: processes started from here see them too)."""
        for key, value in self.env(offline=offline).items():
            monkeypatch.setenv(key, value)
        for key in ("SELVA_WEIGHTS_DIR", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setattr(constants, "HF_HOME", str(self.home))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(self.cache_dir))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)

    def serve(self, monkeypatch) -> None:
        """Go "online" against this fake Hub: downloads copy from `files`, nothing leaves the machine."""
        import selva.hub

        self.activate(monkeypatch, offline=False)
        monkeypatch.setattr(selva.hub, "hf_hub_download", self.fake_hf_hub_download)
        monkeypatch.setattr(selva.hub, "HfApi", lambda: _FakeApi(self))
        monkeypatch.setattr(selva.hub, "hub_unreachable", lambda *args, **kwargs: None)  # it always answers

    def fake_hf_hub_download(
        self,
        repo_id: str,
        filename: str,
        *,
        revision: str | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        tqdm_class: Any = None,
        **kwargs: Any,
    ) -> str:
        pointer = self.path(repo_id, filename)
        if local_files_only:
            if not pointer.exists():
                from huggingface_hub.errors import LocalEntryNotFoundError

                raise LocalEntryNotFoundError(f"{repo_id}/{filename} is not cached")
            return str(pointer)
        # Online, the real call asks the Hub for the file's metadata even when it is cached.
        self.calls.append((repo_id, filename, force_download))
        if pointer.exists() and not force_download:
            return str(pointer)
        content = self.files.get(repo_id, {}).get(filename)
        if content is None:
            raise EntryNotFoundError(f"404 Client Error: {filename} not found in {repo_id}")
        if tqdm_class is not None:  # as the real call's progress bar does, in two chunks
            with tqdm_class(total=len(content), unit="B", disable=True) as bar:
                bar.update(len(content) // 2)
                bar.update(len(content) - len(content) // 2)
        return str(write_cached_file(self.cache_dir, repo_id, filename, content))

    def write_weights_dir(self, dest: Path, variant: str = TINY_16K, *, text_encoders: bool = True) -> Path:
        """The variant's files in the local-folder layout (weights/, ext_weights/, <repo name>/)."""
        for role, f in self.variants[variant].all_files():
            if role in ("t5", "clip") and not text_encoders:
                continue
            target = local_path(dest, f)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.files[f.repo][f.path])
        return dest


class _FakeApi:
    def __init__(self, hub: TinyHub):
        self.hub = hub

    def list_repo_files(self, repo_id: str, *, revision: str | None = None, **kwargs: Any) -> list[str]:
        self.hub.calls.append((repo_id, "<list>", False))
        return sorted(self.hub.files.get(repo_id, {}))


def build_tiny_hub(
    root: str | Path,
    fixtures_dir: str | Path,
    *,
    repos: tuple[str, ...] | None = None,
    edit: Callable[[Files], None] | None = None,
) -> TinyHub:
    """Write the tiny repos (all, or `repos`) as a Hugging Face cache under `root/hf/hub`.

    `edit` may change a copy of the files first (rename, drop) to build odd hubs.
    The tiny variants are returned in `TinyHub.variants` and written to `TinyHub.variants_file`
    (even when `repos` leaves the cache empty); `activate` names that file in the environment.
    """
    built, configs = tiny_files(str(Path(fixtures_dir).resolve()))
    files = {repo: dict(content) for repo, content in built.items()}
    variants = tiny_variants(built, configs)
    if edit is not None:
        edit(files)
    hub = TinyHub(root=Path(root), files=files, variants=variants)
    write_variants_file(hub.variants_file, variants.values())
    if hub.cache_dir.exists():
        shutil.rmtree(hub.cache_dir)
    for repo, content in files.items():
        if repos is not None and repo not in repos:
            continue
        for path, data in content.items():
            write_cached_file(hub.cache_dir, repo, path, data)
    return hub
