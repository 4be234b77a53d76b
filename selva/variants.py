"""The variant registry: which files, rates and network configurations make each SelVA model.

Data only. Every fact about a variant lives here once: the Hub repos (one
table, `REPOS`), the file paths inside them with their sizes and MD5 sums,
the sample rate and hop length (every sequence length follows from them, see
`selva.sequence`), and the network configurations. `selva.hub` turns a
variant into local files, the pipeline turns those into networks.

Network configurations are plain data too: a preset name of the network's
module (`GENERATOR_PRESETS["small_16k"]`...) or a dict of hyper-parameters in
the reference's format; `selva.loading.network_config` builds the config
object. So this module, like `selva.spec` below it, imports no torch.

Tests add tiny variants with `register_variant` (see `tests/tiny_hub.py`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from selva import spec

# The one table of Hub repositories.
REPOS: dict[str, str] = {
    "selva": "jnwnlee/SelVA",  # generators, TextSynch (video encoder), VAEs, the 16 kHz BigVGAN
    "t5": "google/flan-t5-base",  # TextSynch's text encoder (encoder half only)
    "clip": "apple/DFN5B-CLIP-ViT-H-14-384",  # the generator's text encoder (text tower only)
    "bigvgan_v2": "nvidia/bigvgan_v2_44khz_128band_512x",  # the 44.1 kHz vocoder
}

DEFAULT_VARIANT = spec.DEFAULT_VARIANT

# A preset name of the network's module, or the reference's hyper-parameter dict.
NetworkConfig = str | Mapping[str, Any]


@dataclass(frozen=True)
class WeightFile:
    """One file in a Hub repo.

    `size` is in bytes: exact where known, otherwise parameters x 4 (the
    files are float32); it is only used for messages and disk estimates.
    `md5` is checked once after download (None: the repo is trusted as is).
    `alt_paths` are other spellings of the same file seen in the wild.
    `revision` pins a branch, tag or commit (None: "main").
    """

    repo: str
    path: str
    size: int
    md5: str | None = None
    alt_paths: tuple[str, ...] = ()
    revision: str | None = None

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.path, *self.alt_paths)


@dataclass(frozen=True)
class T5Spec:
    """flan-t5-base, loaded with transformers as `T5EncoderModel` (the decoder is never read)."""

    repo: str
    files: tuple[WeightFile, ...]  # config, weights and tokenizer files, all in one snapshot
    encoder_params: int  # for memory estimates
    max_length: int = 512  # the tokenizer's model_max_length for flan-t5-base


@dataclass(frozen=True)
class ClipSpec:
    """An open_clip CLIP of which only the text tower is built and loaded."""

    repo: str
    config_file: WeightFile  # open_clip_config.json
    weights_file: WeightFile  # open_clip_pytorch_model.bin or open_clip_model.safetensors
    text_params: int  # for memory estimates
    # The tokenizer ships with open_clip; SelVA/MMAudio use this name ("same as ViT-H-14").
    tokenizer: str = "ViT-H-14-378-quickgelu"

    @property
    def files(self) -> tuple[WeightFile, ...]:
        return (self.config_file, self.weights_file)


@dataclass(frozen=True)
class Variant:
    name: str
    sample_rate: int
    hop_length: int  # mel hop: 256 at 16 kHz, 512 at 44.1 kHz; one latent per two hops
    generator_file: WeightFile
    text_synch_file: WeightFile
    vae_file: WeightFile
    vocoder: Literal["bigvgan_v1", "bigvgan_v2"]
    vocoder_file: WeightFile
    generator_config: NetworkConfig
    text_synch_config: NetworkConfig
    vae_config: NetworkConfig
    # None: read from `vocoder_config_file` (BigVGAN v2 ships a config.json beside its weights).
    vocoder_config: NetworkConfig | None
    t5: T5Spec
    clip: ClipSpec
    vocoder_config_file: WeightFile | None = None
    description: str = ""

    def network_files(self) -> dict[str, WeightFile]:
        """The checkpoint files of the four SelVA networks (and the v2 vocoder's config), by role."""
        files = {
            "generator": self.generator_file,
            "text_synch": self.text_synch_file,
            "vae": self.vae_file,
            "vocoder": self.vocoder_file,
        }
        if self.vocoder_config_file is not None:
            files["vocoder_config"] = self.vocoder_config_file
        return files

    def all_files(self) -> Iterator[tuple[str, WeightFile]]:
        """(role, file) for every file inference needs; text-encoder roles are "t5" and "clip"."""
        yield from self.network_files().items()
        for f in self.t5.files:
            yield "t5", f
        for f in self.clip.files:
            yield "clip", f

    def download_bytes(self) -> int:
        return sum(f.size for _, f in self.all_files())

    def resident_bytes(self, bytes_per_param: int = 2) -> int:
        """Rough memory of every network at 2 (bf16, fp16) or 4 (fp32) bytes a weight (the files are fp32)."""
        per_param = bytes_per_param
        network_params = sum(f.size for f in self.network_files().values()) // 4
        return (network_params + self.t5.encoder_params + self.clip.text_params) * per_param


# -- the released files ---------------------------------------------------------------------------
# Sizes: exact where measured (the 16 kHz VAE and BigVGAN, the CLIP file), otherwise parameters x 4
# from the checkpoint manifests. MD5 sums from the reference download table.


def _selva(path: str, size: int, md5: str, *alt_paths: str) -> WeightFile:
    return WeightFile(REPOS["selva"], path, size, md5, alt_paths=alt_paths)


VIDEO_ENC = _selva("weights/video_enc_sup_5.pth", 539_354_624, "ff09a6dc36148536ee4db97eba081d05")
VAE_16K = _selva("ext_weights/v1-16.pth", 686_652_758, "69f56803f59a549a1a507c93859fd4d7")
VAE_44K = _selva("ext_weights/v1-44.pth", 1_221_919_752, "fab020275fa44c6589820ce025191600")
BIGVGAN_16K = _selva("ext_weights/best_netG.pt", 449_217_313, "eeaf372a38a9c31c362120aba2dde292")
BIGVGAN_44K = WeightFile(REPOS["bigvgan_v2"], "bigvgan_generator.pt", 489_000_000)
BIGVGAN_44K_CONFIG = WeightFile(REPOS["bigvgan_v2"], "config.json", 1_500)

GENERATOR_FILES = {
    "small_16k": _selva(
        "weights/generator_small_16k_sup_5.pth", 629_134_576, "1cb0f0deec52de37f67b1fd9965337d0"
    ),
    # The 44.1 kHz generators were also published as generator_<size>_44khz_sup_5.pth.
    "small_44k": _selva(
        "weights/generator_small_44k_sup_5.pth",
        629_636_576,
        "d4df8569624093ac80af99b8b7434525",
        "weights/generator_small_44khz_sup_5.pth",
    ),
    "medium_44k": _selva(
        "weights/generator_medium_44k_sup_5.pth",
        2_487_223_776,
        "e9157e62b4863ad306e89e8f3a587748",
        "weights/generator_medium_44khz_sup_5.pth",
    ),
    "large_44k": _selva(
        "weights/generator_large_44k_sup_5.pth",
        4_120_008_672,
        "ab3db08b124d3aaa53eb7a1f52f1fb3f",
        "weights/generator_large_44khz_sup_5.pth",
    ),
}

T5_BASE = T5Spec(
    repo=REPOS["t5"],
    files=tuple(
        WeightFile(REPOS["t5"], path, size)
        for path, size in (
            ("config.json", 1_400),
            ("model.safetensors", 990_345_061),  # encoder and decoder; only the encoder is read
            ("tokenizer.json", 2_424_064),
            ("tokenizer_config.json", 2_540),
            ("special_tokens_map.json", 2_201),
        )
    ),
    encoder_params=109_628_544,
)

DFN5B_CLIP = ClipSpec(
    repo=REPOS["clip"],
    config_file=WeightFile(REPOS["clip"], "open_clip_config.json", 735),
    weights_file=WeightFile(REPOS["clip"], "open_clip_pytorch_model.bin", 3_947_081_637),
    text_params=352_984_064,  # the text tower as loaded: no text projection
)


def _variant(name: str, *, rate: Literal["16k", "44k"]) -> Variant:
    common = {
        "name": name,
        "generator_file": GENERATOR_FILES[name],
        "text_synch_file": VIDEO_ENC,
        "generator_config": name,
        "text_synch_config": "sup_5",
        "vae_config": rate,
        "t5": T5_BASE,
        "clip": DFN5B_CLIP,
        "description": spec.VARIANTS[name],
    }
    if rate == "16k":
        return Variant(
            sample_rate=16_000,
            hop_length=256,
            vae_file=VAE_16K,
            vocoder="bigvgan_v1",
            vocoder_file=BIGVGAN_16K,
            vocoder_config="16k",
            **common,
        )
    return Variant(
        sample_rate=44_100,
        hop_length=512,
        vae_file=VAE_44K,
        vocoder="bigvgan_v2",
        vocoder_file=BIGVGAN_44K,
        vocoder_config=None,
        vocoder_config_file=BIGVGAN_44K_CONFIG,
        **common,
    )


VARIANTS: dict[str, Variant] = {
    name: _variant(name, rate="16k" if name.endswith("16k") else "44k") for name in spec.VARIANTS
}


def get_variant(name: str | Variant) -> Variant:
    """The registered variant called `name` (a `Variant` passes through)."""
    if isinstance(name, Variant):
        return name
    return VARIANTS[spec.check_variant(name, VARIANTS)]


def register_variant(variant: Variant, *, replace: bool = False) -> Variant:
    """Add a variant (tests add tiny ones); re-registering a name needs `replace=True`."""
    if variant.name in VARIANTS and not replace and VARIANTS[variant.name] != variant:
        raise ValueError(f"variant {variant.name!r} is already registered")
    VARIANTS[variant.name] = variant
    return variant


def human_size(n: int) -> str:
    """1_234_567_890 -> '1.23 GB' (decimal units, as the Hub shows sizes)."""
    if n < 1000:
        return f"{n} B"
    exp = min(int(math.log(n, 1000)), 4)
    value = n / 1000**exp
    unit = ("B", "kB", "MB", "GB", "TB")[exp]
    return f"{value:.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"
