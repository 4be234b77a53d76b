"""Score takes with LAION CLAP: how well a take matches its prompt, and how much it leaks others.

A take is one generated sound for one prompt. Its scores, all cosine
similarities between CLAP's audio embedding of the take and CLAP's text
embeddings (each in [-1, 1], higher is closer):

- `agreement`: with the take's own prompt;
- `leakage`: the highest similarity to its negative prompt and to the prompts
  of the other sounds of the same project (a take of "dog barking" that also
  matches "car engine" leaked). None when there is nothing to leak into: no
  negative prompt and no other prompts (others equal to the prompt itself are
  skipped: they would only repeat the agreement);
- `score`, the one number takes are ranked by:

      score = agreement - LEAKAGE_WEIGHT * max(0, leakage)     (leakage None counts as 0)

  with `selva.spec.LEAKAGE_WEIGHT` = 0.5 by default. Only positive leakage
  costs: a take that is unlike the other prompts is not rewarded for it.

Audio is mixed down to mono and resampled with PyAV (libswresample) to the
checkpoint's rate (48 kHz for CLAP). CLAP reads at most 10 s at a time, so a
longer span is cut into the fewest equal windows of at most 10 s each; each
prompt's similarity is averaged over the windows (so every second counts the
same), then leakage takes the highest of those averages. A window shorter
than the model's length is repeated to fill it, as CLAP's feature extractor
does for every short clip. Nothing here is random.

These scores are a hint for choosing among takes, not a judgement of their
quality: CLAP measures how well a sound fits a text, not how clean, synchronous
or pleasant it is.

The model (`selva.spec.SCORER_CHECKPOINT`, or another repo id or a local folder
in the transformers format) is loaded on first use by `load_scorer` and kept
resident per checkpoint and device. Its files come from the Hugging Face cache
through `selva.hub` (downloaded and verified when online); offline, missing files
raise a `WeightsError` naming them.

Scoring is an extra: callers must never let it fail a generation. Catch
`SelvaError` (missing weights, bad input) and any other `Exception` around
`load_scorer` and `Scorer.score...`, log it, and return the generation
without scores.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from selva import spec
from selva.spec import InputError, WeightsError
from selva.variants import WeightFile

if TYPE_CHECKING:
    import torch

__all__ = [
    "CLAP_FILES",
    "RankedTake",
    "Scorer",
    "TakeScore",
    "clap_files",
    "load_scorer",
    "rank_takes",
    "ranking_score",
    "resample",
    "windows",
]

log = logging.getLogger(__name__)

# What ClapModel / ClapProcessor.from_pretrained read from a LAION CLAP repo (transformers format):
# (path, other spelling, rough size). Sizes only feed messages; the weights are those of
# larger_clap_general (~194 M float32 parameters).
CLAP_FILES: tuple[tuple[str, str | None, int], ...] = (
    ("config.json", None, 8_000),
    ("model.safetensors", "pytorch_model.bin", 776_000_000),
    ("preprocessor_config.json", None, 600),
    ("tokenizer_config.json", None, 1_300),
    ("vocab.json", None, 798_000),
    ("merges.txt", None, 456_000),
)
_MAX_CHANNELS = 16  # more rows than this in a 2-D take means (samples, channels) was passed
_BATCH_WINDOWS = 8  # audio windows per forward pass: bounds activation memory on long spans


def clap_files(checkpoint: str, revision: str | None = None) -> list[WeightFile]:
    """The files of Hub repo `checkpoint` that scoring needs."""
    return [
        WeightFile(checkpoint, path, size, alt_paths=(alt,) if alt else (), revision=revision)
        for path, alt, size in CLAP_FILES
    ]


# -- scores -------------------------------------------------------------------------------------------


def ranking_score(agreement: float, leakage: float | None, weight: float = spec.LEAKAGE_WEIGHT) -> float:
    """agreement - weight * max(0, leakage); no leakage (None) costs nothing."""
    return agreement - weight * max(0.0, leakage or 0.0)


@dataclass(frozen=True)
class TakeScore:
    """One take's scores (see the module's docstring for what each measures)."""

    agreement: float  # cosine similarity with its own prompt, averaged over windows
    leakage: float | None  # highest similarity to the negative and the other prompts; None: none given
    leaked_into: str | None  # the prompt behind `leakage`
    score: float  # agreement - weight * max(0, leakage): what takes are ranked by
    windows: int  # how many windows of at most the model's length the take was cut into
    checkpoint: str  # the CLAP that scored it

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (for project files, API results and sidecar files)."""
        return asdict(self)


@dataclass(frozen=True)
class RankedTake:
    index: int  # the take's position in the list given to `rank_takes`
    rank: int  # 1 = best
    best: bool
    score: TakeScore


def rank_takes(scores: Sequence[TakeScore]) -> list[RankedTake]:
    """The takes best first by `TakeScore.score`, the first marked best; ties keep the given order."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i].score, i))
    return [RankedTake(index=i, rank=r + 1, best=r == 0, score=scores[i]) for r, i in enumerate(order)]


# -- audio --------------------------------------------------------------------------------------------


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Mono float32 `audio` at `rate` -> `target` Hz with PyAV (libswresample), length rounded exactly."""
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if rate == target:
        return audio
    import av

    frame = av.AudioFrame.from_ndarray(audio[None, :], format="flt", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target)
    pieces = [f.to_ndarray().reshape(-1) for f in (*resampler.resample(frame), *resampler.resample(None))]
    out = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    n = round(audio.size * target / rate)
    # libswresample may hand back a sample more or less than the exact ratio; the length is a fact.
    return np.pad(out[:n], (0, max(0, n - out.size))).astype(np.float32, copy=False)


def _mono(audio: Any) -> np.ndarray:
    if hasattr(audio, "detach"):  # a torch tensor, on any device
        audio = audio.detach().float().cpu().numpy()
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim == 2:  # (channels, samples)
        if a.shape[0] > _MAX_CHANNELS:
            raise InputError(
                f"audio to score must be (channels, samples); {a.shape} looks like (samples, channels): "
                "transpose it"
            )
        a = a.mean(axis=0)
    if a.ndim != 1 or a.size == 0:
        raise InputError(
            f"audio to score must be (samples,) or (channels, samples) and not empty, got {a.shape}"
        )
    if not np.isfinite(a).all():
        raise InputError("audio to score holds NaN or infinite samples")
    return a


def windows(audio: np.ndarray, length: int) -> list[np.ndarray]:
    """The fewest equal pieces of at most `length` samples (sizes differ by one sample at most)."""
    return np.array_split(audio, max(1, math.ceil(audio.size / length)))


# -- the scorer ---------------------------------------------------------------------------------------


class Scorer:
    """A CLAP model and its processor on one device (float32), ready to score takes.

    Build it with `load_scorer` (loaded once, then kept) or from parts for tests.
    Calls hold no state on the instance, so threads may share one scorer.
    """

    def __init__(self, model: Any, processor: Any, *, checkpoint: str = spec.SCORER_CHECKPOINT):
        self.model = model.eval()
        self.processor = processor
        self.checkpoint = checkpoint

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def sample_rate(self) -> int:
        return int(self.processor.feature_extractor.sampling_rate)

    @property
    def window_samples(self) -> int:
        """The most audio CLAP reads at once (10 s at 48 kHz for LAION's checkpoints)."""
        return int(self.processor.feature_extractor.nb_max_samples)

    def embed_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """(P, D) unit-length text embeddings."""
        import torch

        tokenizer = self.processor.tokenizer
        # Positions stop at max_position_embeddings - 2 (RoBERTa counts from after the padding index).
        limit = self.model.config.text_config.max_position_embeddings - 2
        max_length = min(limit, getattr(tokenizer, "model_max_length", limit) or limit)
        tokens = tokenizer(
            list(prompts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            out = self.model.get_text_features(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            )
        return _unit(out)

    def embed_windows(self, pieces: Sequence[np.ndarray]) -> torch.Tensor:
        """(W, D) unit-length audio embeddings of mono pieces at `sample_rate`, none over a window."""
        import torch

        extractor = self.processor.feature_extractor
        chunks = []
        for at in range(0, len(pieces), _BATCH_WINDOWS):
            batch = [np.asarray(p, dtype=np.float32) for p in pieces[at : at + _BATCH_WINDOWS]]
            features = extractor(batch, sampling_rate=self.sample_rate, return_tensors="pt")
            # No piece is longer than the model's window, so none is "longer" (fusion checkpoints'
            # extractors flag a random one otherwise, which would make scores random).
            is_longer = torch.zeros(len(batch), 1, dtype=torch.bool, device=self.device)
            mel = features["input_features"].to(self.device, torch.float32)
            with torch.inference_mode():
                out = self.model.get_audio_features(input_features=mel, is_longer=is_longer)
            chunks.append(_unit(out))
        return torch.cat(chunks)

    def score(
        self,
        audio: Any,
        sample_rate: int,
        prompt: str,
        *,
        others: Sequence[str] = (),
        negative_prompt: str = "",
    ) -> TakeScore:
        """Scores of one take: `audio` (samples,) or (channels, samples) at `sample_rate` for `prompt`.

        `others` are the prompts of the other sounds in the same project.
        """
        return self.score_takes([audio], sample_rate, prompt, others=others, negative_prompt=negative_prompt)[
            0
        ]

    def score_takes(
        self,
        takes: Sequence[Any],
        sample_rate: int,
        prompt: str,
        *,
        others: Sequence[str] = (),
        negative_prompt: str = "",
        weight: float = spec.LEAKAGE_WEIGHT,
    ) -> list[TakeScore]:
        """Scores of several takes of one prompt (candidates), the texts embedded once."""
        if not isinstance(sample_rate, int) or isinstance(sample_rate, bool) or sample_rate <= 0:
            raise InputError(f"sample_rate must be a positive whole number of Hz, got {sample_rate!r}")
        spec.check_prompt("prompt", prompt)
        if not prompt.strip():
            raise InputError("a take is scored against its prompt: the prompt is empty")
        rivals = _rivals(prompt, others, negative_prompt)
        texts = self.embed_text([prompt, *rivals])  # (1 + R, D)
        pieces: list[np.ndarray] = []
        counts: list[int] = []
        for take in takes:
            mono = resample(_mono(take), sample_rate, self.sample_rate)
            cut = windows(mono, self.window_samples)
            pieces.extend(cut)
            counts.append(len(cut))
        if not pieces:
            return []
        sims = (self.embed_windows(pieces) @ texts.T).double().cpu().numpy()  # (windows, 1 + R)
        scores = []
        at = 0
        for n in counts:
            mean = sims[at : at + n].mean(axis=0)  # each prompt's similarity averaged over the windows
            at += n
            agreement = float(mean[0])
            leakage = leaked_into = None
            if rivals:
                k = int(np.argmax(mean[1:]))
                leakage, leaked_into = float(mean[1 + k]), rivals[k]
            scores.append(
                TakeScore(
                    agreement=agreement,
                    leakage=leakage,
                    leaked_into=leaked_into,
                    score=ranking_score(agreement, leakage, weight),
                    windows=n,
                    checkpoint=self.checkpoint,
                )
            )
        return scores


def _rivals(prompt: str, others: Sequence[str], negative_prompt: str) -> list[str]:
    """The negative prompt and the other prompts, each once, without blanks or the prompt itself."""
    if isinstance(others, str):
        raise InputError("others must be a list of prompts, not one string")
    spec.check_prompt("negative_prompt", negative_prompt)
    rivals: list[str] = []
    for i, text in enumerate((negative_prompt, *others)):
        spec.check_prompt("negative_prompt" if i == 0 else f"others[{i - 1}]", text)
        text = text.strip()
        if text and text != prompt.strip() and text not in rivals:
            rivals.append(text)
    return rivals


def _unit(out: Any) -> torch.Tensor:
    """Unit-length embeddings from get_*_features: a tensor in transformers 4, `.pooler_output` in 5."""
    import torch.nn.functional as F

    tensor = out if hasattr(out, "norm") else out.pooler_output
    return F.normalize(tensor.float(), dim=-1)


# -- loading ------------------------------------------------------------------------------------------

_scorers: dict[tuple[str, str | None, str], Scorer] = {}
_load_lock = threading.Lock()


def load_scorer(
    checkpoint: str | Path | None = None, *, device: Any = None, revision: str | None = None
) -> Scorer:
    """The resident scorer for `checkpoint` (a Hub repo id or a local folder) on `device`.

    Loaded on the first call, then kept for the life of the process; `device`
    None picks CUDA, then MPS, then the CPU. Raises `WeightsError` when the files
    are missing (offline) or cannot be fetched or read.
    """
    from selva.device import choose_device

    checkpoint = str(checkpoint or spec.SCORER_CHECKPOINT)
    where = choose_device(device)
    key = (checkpoint, revision, str(where))
    with _load_lock:  # one load per key, even when several requests ask at once
        if key not in _scorers:
            _scorers[key] = _load(checkpoint, where, revision)
        return _scorers[key]


def _load(checkpoint: str, device: torch.device, revision: str | None) -> Scorer:
    import torch
    from transformers import ClapModel, ClapProcessor

    folder = _checkpoint_folder(checkpoint, revision)
    try:
        model = ClapModel.from_pretrained(folder, dtype=torch.float32)
        processor = ClapProcessor.from_pretrained(folder)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        if spec.is_out_of_memory(exc):
            raise
        raise WeightsError(
            f"cannot load the CLAP scorer {checkpoint} from {folder} ({type(exc).__name__}: {exc}). "
            "If a file there is damaged, delete it and score again online to fetch it anew."
        ) from exc
    log.info("scoring with %s on %s", checkpoint, device)
    return Scorer(model.to(device), processor, checkpoint=checkpoint)


def _checkpoint_folder(checkpoint: str, revision: str | None) -> Path:
    """A local folder as given, else the Hub cache snapshot holding the repo's scoring files."""
    from selva.hub import fetch_files, is_offline

    local = Path(checkpoint).expanduser()
    if local.is_dir():
        return local
    files = clap_files(checkpoint, revision)
    if is_offline():
        missing = _not_cached(files)
        if missing:
            raise WeightsError(_missing_message(checkpoint, missing))
    try:
        return fetch_files(files, revision=revision)
    except WeightsError as exc:
        raise WeightsError(
            f"scoring needs the CLAP checkpoint {checkpoint}, whose files could not be fetched or "
            f"read (the generation itself is not affected):\n{exc}"
        ) from exc


def _not_cached(files: Sequence[WeightFile]) -> list[WeightFile]:
    from huggingface_hub import try_to_load_from_cache

    def cached(f: WeightFile) -> bool:
        return any(isinstance(try_to_load_from_cache(f.repo, p, revision=f.revision), str) for p in f.paths)

    return [f for f in files if not cached(f)]


def _missing_message(checkpoint: str, missing: Sequence[WeightFile]) -> str:
    from huggingface_hub import constants

    from selva.variants import human_size

    lines = [
        f"Scoring needs the CLAP checkpoint {checkpoint}, and {len(missing)} of its files are not in "
        f"the Hugging Face cache ({constants.HF_HUB_CACHE}) while downloads are off (HF_HUB_OFFLINE=1):"
    ]
    lines += [f"  - {' or '.join(f.paths)} (about {human_size(f.size)})" for f in missing]
    names = " ".join(f.path for f in missing)
    lines.append(
        "Go online (unset HF_HUB_OFFLINE) and score once to download them, or fetch them with "
        f"`hf download {checkpoint} {names}`, or pass a local folder holding them as the scorer "
        "checkpoint. The generation itself does not need them."
    )
    return "\n".join(lines)
