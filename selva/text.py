"""The two text encoders: flan-t5-base for TextSynch and CLIP's text tower for the generator.

Each is its own small component (no CLIP image tower, no T5 decoder): SelVA
gives the generator no CLIP image features, and TextSynch only needs T5's
encoder states. Both are `nn.Module`s so the pipeline can move them between
CPU and accelerator when offloading, and both take a list of prompts.

What the reference computes, and we reproduce:

- T5: tokenizer with padding to the longest prompt, truncation at the
  tokenizer's `model_max_length` (512); the encoder's last hidden states
  (B, L, 768) and the attention mask as booleans (B, L). An empty prompt is
  encoded like any other (just the end-of-sequence token).
- CLIP: open_clip's tokenizer (77 tokens, "ViT-H-14-378-quickgelu"); the
  text transformer's last hidden states after `ln_final`, without the text
  projection, L2-normalised per token: (B, 77, 1024).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from selva.loading import load_checkpoint, load_file_into
from selva.spec import DependencyError, InputError, WeightsError, is_out_of_memory
from selva.variants import DFN5B_CLIP, T5_BASE, ClipSpec, T5Spec, WeightFile

log = logging.getLogger(__name__)

CLIP_CONFIG = "open_clip_config.json"
# Weight files open_clip publishes, best first: safetensors reads only the tensors asked for.
CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# CLIP keys that only matter for the image tower or the contrastive head.
_CLIP_UNUSED_PREFIXES = ("visual.", "logit_scale", "logit_bias", "text_projection")


def _files_folder(
    files: Sequence[WeightFile], repo: str, revision: str | None, local_dir: str | Path | None
) -> Path:
    """`local_dir` as given, or the cache folder holding `files` of `repo` (fetched if missing)."""
    if local_dir is not None:
        return Path(local_dir)
    from selva.hub import fetch_files

    return fetch_files([replace(f, repo=repo) for f in files], revision=revision)


@contextlib.contextmanager
def _unreadable_as_weights_error(name: str, where: Path, library: str) -> Iterator[None]:
    """A failure to load an encoder becomes an error that says what to do.

    Damaged or incomplete files are a `WeightsError` (fetch them again); files
    that read fine but that `library` still cannot load point at a version of
    that library we do not support, a `DependencyError`: downloading gigabytes
    again would not help then.
    """
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError, SafetensorError) as exc:
        if is_out_of_memory(exc):
            raise  # the files are fine; the caller tells the user how to need less memory
        damaged = _damaged_file(where)
        if damaged is None:
            raise DependencyError(
                f"{library} {_version(library)} cannot load the {name} text encoder from {where} "
                f"although its files read fine ({type(exc).__name__}: {exc}). This is most likely a "
                f"{library} version this package does not support: install the versions "
                "requirements.txt names (pip install -r requirements.txt)."
            ) from exc
        raise WeightsError(
            f"cannot load the {name} text encoder from {where}: {damaged} is damaged or incomplete "
            f"({type(exc).__name__}: {exc}). Delete it and run `python -m selva download` "
            "(or copy it again into --weights-dir)."
        ) from exc


def _damaged_file(where: Path) -> str | None:
    """The first file under `where` (a folder or one file) that does not parse, or None.

    Reads only headers and indexes: JSON files whole, safetensors headers, the
    zip index at the end of torch checkpoints (which a truncated copy lacks).
    """
    import zipfile

    from safetensors import SafetensorError, safe_open

    files = sorted(where.iterdir()) if where.is_dir() else [where]
    for path in files:
        try:
            if path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            elif path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as fh:
                    fh.keys()
            elif path.suffix in (".bin", ".pt", ".pth"):
                with zipfile.ZipFile(path) as archive:
                    archive.namelist()
        except (OSError, ValueError, UnicodeDecodeError, SafetensorError, zipfile.BadZipFile):
            return path.name
    return None


def _version(library: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version({"open_clip": "open_clip_torch"}.get(library, library))
    except PackageNotFoundError:
        return "(version unknown)"


def _as_prompts(prompts: str | Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise InputError("prompts must be a non-empty list of strings")
    return prompts


class T5TextEncoder(nn.Module):
    """flan-t5-base's encoder: prompts -> (states (B, L, D) float, mask (B, L) bool)."""

    def __init__(self, tokenizer, model: nn.Module, *, max_length: int = 512):
        super().__init__()
        self.tokenizer = tokenizer
        self.model = model
        # transformers reports "no limit" as a huge number; SelVA's TextSynch takes at most 512 tokens.
        self.max_length = min(int(getattr(tokenizer, "model_max_length", max_length)), max_length)
        self.eval().requires_grad_(False)  # inference only

    @classmethod
    def from_pretrained(
        cls,
        repo: str = T5_BASE.repo,
        *,
        revision: str | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        local_dir: str | Path | None = None,
        spec: T5Spec = T5_BASE,
    ) -> T5TextEncoder:
        """Load tokenizer and encoder from `local_dir`, or fetch `spec`'s files of `repo` first."""
        from transformers import AutoTokenizer, T5EncoderModel

        local_dir = _files_folder(spec.files, repo, revision, local_dir)
        if dtype == torch.float16:
            # T5's feed-forward activations overflow fp16 (a known flan-t5 issue); it is small, use fp32.
            log.info("T5 runs in float32 instead of float16 (fp16 overflows in T5)")
            dtype = torch.float32
        with _unreadable_as_weights_error("flan-t5", local_dir, "transformers"):
            tokenizer = AutoTokenizer.from_pretrained(str(local_dir))
            # T5EncoderModel reads only the encoder's tensors from the full checkpoint.
            model = T5EncoderModel.from_pretrained(str(local_dir), dtype=dtype)
        model.to(device=device, dtype=dtype)
        return cls(tokenizer, model, max_length=spec.max_length)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    @torch.inference_mode()
    def forward(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(
            _as_prompts(prompts),
            max_length=self.max_length,
            padding=True,  # to the longest prompt, as the reference
            truncation=True,
            return_tensors="pt",
        )
        ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, D)
        return states, mask == 1


class ClipTextEncoder(nn.Module):
    """open_clip's text tower: prompts -> per-token features (B, context, width), unit norm."""

    def __init__(self, tower: nn.Module, tokenizer):
        super().__init__()
        self.tower = tower
        self.tokenizer = tokenizer
        self.eval().requires_grad_(False)  # inference only

    @classmethod
    def from_pretrained(
        cls,
        repo: str = DFN5B_CLIP.repo,
        *,
        revision: str | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        local_dir: str | Path | None = None,
        spec: ClipSpec = DFN5B_CLIP,
    ) -> ClipTextEncoder:
        """Build only the text tower from `open_clip_config.json` and load its keys from the checkpoint."""
        import open_clip

        local_dir = _files_folder(spec.files, repo, revision, local_dir)
        with _unreadable_as_weights_error("CLIP", local_dir, "open_clip"):
            tower = build_clip_text_tower(json.loads((local_dir / CLIP_CONFIG).read_text()))
        weights = next((local_dir / name for name in CLIP_WEIGHTS if (local_dir / name).is_file()), None)
        if weights is None:
            raise WeightsError(f"{local_dir} holds none of {', '.join(CLIP_WEIGHTS)}")
        load_file_into(tower, weights, device=device, dtype=dtype, read=load_clip_text_state)
        return cls(tower, open_clip.get_tokenizer(spec.tokenizer))

    @property
    def device(self) -> torch.device:
        return self.tower.token_embedding.weight.device

    @property
    def dim(self) -> int:
        return self.tower.width

    @property
    def context_length(self) -> int:
        return self.tower.context_length

    @torch.inference_mode()
    def forward(self, prompts: str | Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(_as_prompts(prompts), context_length=self.context_length)  # (B, 77) int64
        _, states = self.tower(tokens.to(self.device))  # (B, 77, width) after ln_final
        return F.normalize(states, dim=-1)


def build_clip_text_tower(config: dict) -> nn.Module:
    """open_clip's TextTransformer for `config` (open_clip_config.json), on `meta`, without projection.

    The causal mask, a non-persistent buffer, is rebuilt for real: it is not
    in the checkpoint, and everything else is loaded with `assign=True`.
    """
    from open_clip.model import _build_text_tower

    model_cfg = config.get("model_cfg", config)
    text_cfg = dict(model_cfg["text_cfg"])
    if text_cfg.get("hf_model_name"):
        raise WeightsError("CLIP models with a Hugging Face text encoder are not supported")
    # Per-token states are read before the projection, which is therefore neither built nor loaded.
    text_cfg.update(proj_type="none", output_tokens=True)
    with torch.device("meta"):
        quick_gelu = model_cfg.get("quick_gelu", False)
        tower = _build_text_tower(model_cfg["embed_dim"], text_cfg, quick_gelu=quick_gelu)
    if getattr(tower, "attn_mask", None) is not None:
        with torch.device("cpu"):
            tower.attn_mask = tower.build_causal_mask()
    return tower


def load_clip_text_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The text-tower tensors of an open_clip checkpoint; image-tower tensors are never read."""
    path = Path(path)

    def text_key(key: str) -> str | None:
        # CustomTextCLIP checkpoints keep the text tower under "text."; plain CLIP at the top level.
        key = key.removeprefix("text.")
        return None if key.startswith(_CLIP_UNUSED_PREFIXES) else key

    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with (
            _unreadable_as_weights_error("CLIP", path, "open_clip"),
            safe_open(str(path), framework="pt", device="cpu") as fh,
        ):
            names = {k: text_key(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no iterator)
            state = {name: fh.get_tensor(k) for k, name in names.items() if name is not None}
    else:
        # mmap: only the text tensors are paged in, not the 3.9 GB of the image tower.
        state = {}
        for k, v in load_checkpoint(path).items():
            name = text_key(k)
            if name is not None:
                state[name] = v
    return state
