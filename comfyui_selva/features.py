"""SELVA_FEATURES: the sync features of a clip, and their cache on disk.

ComfyUI keeps a node's outputs only while the server runs and its inputs stay
the same; TextSynch over an 8 s clip costs seconds on a GPU and tens of seconds
on a CPU, so features are also kept on disk, one small file per clip and
prompt (tens of kB to a few MB), and a restarted server or another workflow
over the same clip reuses them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import tempfile
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# Bump when what a cache file holds, or how features are computed, changes: old files then miss.
CACHE_FORMAT = 1
CACHE_SUBDIR = "selva-features"
# What torch.load raises on a truncated, foreign or damaged file.
_UNREADABLE = (
    OSError,
    RuntimeError,
    EOFError,
    KeyError,
    AttributeError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
)


@dataclass(frozen=True)
class SelvaFeatures:
    """What the sampler needs from the extractor."""

    sync: torch.Tensor  # (1, S * 8, D) TextSynch output on the CPU, in the extracting pipeline's dtype
    prompt: str  # the prompt TextSynch followed
    duration: float  # seconds of video the features cover
    text_synch: str  # which TextSynch checkpoint made them (repo/path@md5)
    key: str  # the cache key (hex)


def cache_key(
    frames: torch.Tensor, *, prompt: str, fps: float, duration: float, variant: str, dtype: torch.dtype
) -> str:
    """A digest of everything the features depend on: the 25 fps frames themselves, the prompt, the
    source rate and span, the variant and the precision they are computed in."""
    meta = {
        "format": CACHE_FORMAT,
        "prompt": prompt,
        "fps": repr(float(fps)),
        "duration": repr(float(duration)),
        "variant": variant,
        "dtype": str(dtype),
        "frames": list(frames.shape),
    }
    digest = hashlib.blake2b(digest_size=20, person=b"selva-comfy")
    digest.update(json.dumps(meta, sort_keys=True).encode())
    digest.update(frames.contiguous().numpy().data)
    return digest.hexdigest()


def cache_folder(cache_dir: str) -> Path:
    """The folder cache files go to: `cache_dir`, or a folder in the system's temp dir when empty."""
    text = cache_dir.strip()
    return Path(text).expanduser() if text else Path(tempfile.gettempdir()) / CACHE_SUBDIR


def load(folder: Path, key: str) -> SelvaFeatures | None:
    """The cached features under `key`, or None when absent or unreadable (they are then recomputed)."""
    path = folder / f"{key}.pt"
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("format") != CACHE_FORMAT:
            return None
        return SelvaFeatures(
            sync=saved["sync"],
            prompt=saved["prompt"],
            duration=float(saved["duration"]),
            text_synch=saved["text_synch"],
            key=key,
        )
    except _UNREADABLE:
        log.warning("ignoring the unreadable feature cache file %s", path)
        return None


def save(folder: Path, features: SelvaFeatures) -> Path | None:
    """Write `features` under its key; a failure only costs a recomputation later, so it is logged."""
    path = folder / f"{features.key}.pt"
    # Written beside the target and renamed: a reader (another ComfyUI, a crash) never sees half a file.
    tmp = folder / f".{features.key}.{uuid.uuid4().hex[:8]}.part"
    saved = {
        "format": CACHE_FORMAT,
        "sync": features.sync,
        "prompt": features.prompt,
        "duration": features.duration,
        "text_synch": features.text_synch,
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(saved, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write the feature cache file %s: %s", path, exc)
        return None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path
