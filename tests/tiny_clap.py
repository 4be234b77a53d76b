"""A tiny random CLAP in the layout of the real scorer repo, for `selva.scoring` tests.

`tiny_clap_files()` builds, once per process, the files `selva.scoring.CLAP_FILES`
names: a `ClapModel(ClapConfig(...))` with random weights saved by
`save_pretrained` (config.json, model.safetensors), the feature extractor's
preprocessor_config.json, and a RoBERTa byte-level BPE tokenizer written as the
real repo ships it (vocab.json, merges.txt, tokenizer_config.json). Nothing is
downloaded: the vocabulary is the 256 byte symbols, the special tokens and a few
merges for the words the tests use.

The audio tower is small but keeps CLAP's shape rules: 16 mel bins on a
64-wide spectrogram "image" (freq_ratio 4, so up to 256 frames), which fits
2 s at 48 kHz with a hop of 480 (201 frames). The scorer's window is therefore
2 s here (10 s for the real checkpoints), so short test clips already span
several windows.

`write_tiny_clap(cache_dir)` writes the files into a Hugging Face cache under
the default scorer repo id, with `tests/tiny_hub.write_cached_file`.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import torch
from tiny_hub import write_cached_file

from selva import spec

WINDOW_SECONDS = 2  # the tiny feature extractor's max_length_s
MAX_TOKENS = 32
WORDS = ("dog", "barking", "car", "engine", "rain", "birds", "music", "wind", "the", "of")


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for the bytes 0..255 (GPT-2's table)."""
    printable = {
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    }
    symbols, shifted = [], 0
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:  # control and space bytes move above 255 so every byte is a visible character
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def _merges() -> list[tuple[str, str]]:
    """Left-to-right merges that make each of `WORDS` (after a space, "Ġ") one token."""
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        piece = "Ġ"
        for ch in word:
            if (piece, ch) not in merges:
                merges.append((piece, ch))
            piece += ch
    return merges


def tokenizer_files() -> dict[str, bytes]:
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials)}
    for symbol in _byte_symbols():
        vocab.setdefault(symbol, len(vocab))
    merges = _merges()
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<mask>"] = len(vocab)
    config = {
        "tokenizer_class": "RobertaTokenizer",
        "model_max_length": MAX_TOKENS,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
        "add_prefix_space": False,
        "errors": "replace",
        "trim_offsets": True,
    }
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False).encode(),
        "merges.txt": ("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)).encode(),
        "tokenizer_config.json": json.dumps(config, indent=2).encode(),
    }


def tiny_clap_config(vocab_size: int):
    from transformers import ClapAudioConfig, ClapConfig, ClapTextConfig

    text = ClapTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=MAX_TOKENS + 2,  # RoBERTa positions start after the padding index
        projection_dim=24,
    )
    audio = ClapAudioConfig(
        num_mel_bins=16,
        spec_size=64,
        window_size=4,
        patch_size=2,
        patch_stride=2,
        patch_embeds_hidden_size=16,
        hidden_size=32,  # = patch_embeds_hidden_size * 2 ** (len(depths) - 1)
        depths=[1, 1],
        num_attention_heads=[2, 2],
        num_hidden_layers=2,
        projection_dim=24,
    )
    return ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=24)


@functools.lru_cache(maxsize=1)
def tiny_clap_files() -> dict[str, bytes]:
    """The tiny CLAP's files by path in the repo (seeded: the same bytes in every process)."""
    from transformers import ClapFeatureExtractor, ClapModel

    files = tokenizer_files()
    vocab_size = len(json.loads(files["vocab.json"]))
    torch.manual_seed(0)
    model = ClapModel(tiny_clap_config(vocab_size)).eval()
    # truncation "rand_trunc" as in larger_clap_general; the scorer never feeds more than a window.
    extractor = ClapFeatureExtractor(
        feature_size=16, max_length_s=WINDOW_SECONDS, truncation="rand_trunc", padding="repeatpad"
    )
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        extractor.save_pretrained(tmp)
        for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
            files[name] = (Path(tmp) / name).read_bytes()
    return files


def write_tiny_clap(cache_dir: str | Path, repo: str = spec.SCORER_CHECKPOINT) -> Path:
    """The tiny CLAP in a Hub cache under `repo`; returns its snapshot folder."""
    pointer = None
    for path, content in tiny_clap_files().items():
        pointer = write_cached_file(Path(cache_dir), repo, path, content)
    assert pointer is not None
    return pointer.parent
