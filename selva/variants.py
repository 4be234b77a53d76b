"""The variant registry: which files, rates and network configurations make each SelVA model.

Data only. Every fact about a variant lives here once: the Hub repos (one
table, `REPOS`), the file paths inside them with their sizes and MD5 sums,
the sample rate, hop length and vocoder kind (written out for each variant;
every sequence length follows from the rate and hop, see `selva.sequence`),
and the network configurations. `selva.hub` turns a variant into local files,
the pipeline turns those into networks.

Network configurations are plain data too: a preset name of the network's
module (`GENERATOR_PRESETS["small_16k"]`...) or a dict of hyper-parameters in
the reference's format; `selva.loading.network_config` builds the config
object. So this module, like `selva.spec` below it, imports no torch.

The registry is read-only: `RELEASED` holds the published variants, and
`known_variants()` adds those of the JSON file the environment variable
`SELVA_VARIANTS_FILE` names (the tests' tiny ones, a user's own). A variant
is plain data both ways (`Variant.to_dict`, `Variant.from_dict`), and a child
process or Ray worker inherits the environment, so nothing is registered.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args

from selva import spec
from selva.spec import InputError

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
# The 16 kHz models use SelVA's own BigVGAN (v1); the 44.1 kHz ones nvidia's BigVGAN v2.
VocoderKind = Literal["bigvgan_v1", "bigvgan_v2"]


def _fields(cls: type, data: object, where: str) -> dict[str, Any]:
    """`data` as keyword arguments of the dataclass `cls`: an object with every required key, no other."""
    if not isinstance(data, Mapping):
        raise InputError(f"{where}: expected a JSON object, got {type(data).__name__}")
    fields = dataclasses.fields(cls)
    required = {f.name for f in fields if f.default is dataclasses.MISSING}
    missing = sorted(required - set(data))
    unknown = sorted(set(data) - {f.name for f in fields})
    if missing or unknown:
        problems = [f"missing {', '.join(missing)}"] if missing else []
        problems += [f"unknown {', '.join(unknown)}"] if unknown else []
        takes = ", ".join(f.name for f in fields)
        raise InputError(f"{where}: {'; '.join(problems)} ({cls.__name__} takes {takes})")
    return dict(data)


def _json_ready(value: Any) -> Any:
    """Tuples as lists, mappings as dicts: what JSON holds, so a round trip compares equal."""
    if isinstance(value, Mapping):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "weight file") -> WeightFile:
        kw = _fields(cls, data, where)
        if not isinstance(kw["size"], int) or kw["size"] < 0:
            raise InputError(f"{where}: size must be a whole number of bytes, got {kw['size']!r}")
        if isinstance(kw.get("alt_paths"), str):
            raise InputError(f"{where}: alt_paths must be a list of paths, got {kw['alt_paths']!r}")
        return cls(**{**kw, "alt_paths": tuple(kw.get("alt_paths", ()))})


@dataclass(frozen=True)
class T5Spec:
    """flan-t5-base, loaded with transformers as `T5EncoderModel` (the decoder is never read)."""

    repo: str
    files: tuple[WeightFile, ...]  # config, weights and tokenizer files, all in one snapshot
    encoder_params: int  # for memory estimates
    max_length: int = 512  # the tokenizer's model_max_length for flan-t5-base

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "t5") -> T5Spec:
        kw = _fields(cls, data, where)
        files = kw["files"]
        if not isinstance(files, (list, tuple)):
            raise InputError(f"{where}.files: expected a list of files, got {type(files).__name__}")
        return cls(**{**kw, "files": tuple(WeightFile.from_dict(f, where=f"{where}.files") for f in files)})


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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "clip") -> ClipSpec:
        kw = _fields(cls, data, where)
        for key in ("config_file", "weights_file"):
            kw[key] = WeightFile.from_dict(kw[key], where=f"{where}.{key}")
        return cls(**kw)


@dataclass(frozen=True)
class Variant:
    """One SelVA model: its files, audio rates, vocoder kind and network configurations."""

    name: str
    sample_rate: int
    hop_length: int  # mel hop: 256 at 16 kHz, 512 at 44.1 kHz; one latent per two hops
    generator_file: WeightFile
    text_synch_file: WeightFile
    vae_file: WeightFile
    vocoder: VocoderKind
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

    def to_dict(self) -> dict[str, Any]:
        """This variant as JSON-ready data; `Variant.from_dict` reads it back equal."""
        return _json_ready(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "variant") -> Variant:
        """A variant from `to_dict`'s data (a variants file's entry); a bad entry is an `InputError`."""
        kw = _fields(cls, data, where)
        if not isinstance(kw["name"], str) or not kw["name"].strip():
            raise InputError(f"{where}: name must be a non-empty string, got {kw['name']!r}")
        where = f"{where} ({kw['name']})"
        for key in ("sample_rate", "hop_length"):
            if not isinstance(kw[key], int) or isinstance(kw[key], bool) or kw[key] <= 0:
                raise InputError(f"{where}: {key} must be a whole number above 0, got {kw[key]!r}")
        if kw["vocoder"] not in get_args(VocoderKind):
            kinds = ", ".join(get_args(VocoderKind))
            raise InputError(f"{where}: vocoder must be one of {kinds}, got {kw['vocoder']!r}")
        for key in ("generator_config", "text_synch_config", "vae_config", "vocoder_config"):
            if not isinstance(kw[key], (str, Mapping)) and not (key == "vocoder_config" and kw[key] is None):
                raise InputError(f"{where}: {key} must be a preset name or an object, got {kw[key]!r}")
        for key in ("generator_file", "text_synch_file", "vae_file", "vocoder_file", "vocoder_config_file"):
            if kw.get(key) is not None:
                kw[key] = WeightFile.from_dict(kw[key], where=f"{where}.{key}")
        if kw["vocoder_config"] is None and kw.get("vocoder_config_file") is None:
            raise InputError(f"{where}: give a vocoder_config or a vocoder_config_file")
        kw["t5"] = T5Spec.from_dict(kw["t5"], where=f"{where}.t5")
        kw["clip"] = ClipSpec.from_dict(kw["clip"], where=f"{where}.clip")
        return cls(**kw)

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


# Every variant of one sample rate shares its VAE and vocoder; every variant the two encoders.
# Grouped by part: the rates, the VAE, the vocoder.
AUDIO_16K: dict[str, Any] = dict(
    sample_rate=16_000, hop_length=256,
    vae_file=VAE_16K, vae_config="16k",
    vocoder="bigvgan_v1", vocoder_file=BIGVGAN_16K, vocoder_config="16k",
)  # fmt: skip
AUDIO_44K: dict[str, Any] = dict(
    sample_rate=44_100, hop_length=512,
    vae_file=VAE_44K, vae_config="44k",
    vocoder="bigvgan_v2", vocoder_file=BIGVGAN_44K,
    vocoder_config_file=BIGVGAN_44K_CONFIG, vocoder_config=None,
)  # fmt: skip
ENCODERS: dict[str, Any] = dict(
    text_synch_file=VIDEO_ENC, text_synch_config="sup_5", t5=T5_BASE, clip=DFN5B_CLIP
)


def _released(name: str, description: str, audio: Mapping[str, Any]) -> Variant:
    """A released variant: its generator file and preset (both under its name), its audio, the encoders."""
    return Variant(
        name=name,
        description=description,
        generator_file=GENERATOR_FILES[name],
        generator_config=name,
        **audio,
        **ENCODERS,
    )


# The released variants, in the order the UI lists them.
RELEASED: Mapping[str, Variant] = MappingProxyType(
    {
        v.name: v
        for v in (
            _released("small_16k", "157 M generator, 16 kHz (recommended)", AUDIO_16K),
            _released("small_44k", "157 M generator, 44.1 kHz", AUDIO_44K),
            _released("medium_44k", "622 M generator, 44.1 kHz", AUDIO_44K),
            _released("large_44k", "1.03 B generator, 44.1 kHz", AUDIO_44K),
        )
    }
)


# -- the registry: the released variants and those of a variants file ----------------------------

# A JSON file of extra variants (see `write_variants_file`). An environment variable, not a call,
# so that child processes and Ray workers started from here know the same variants.
VARIANTS_FILE_ENV = "SELVA_VARIANTS_FILE"
VARIANTS_FILE_FORMAT = "selva-variants"
VARIANTS_FILE_VERSION = 1


def known_variants() -> dict[str, Variant]:
    """Every variant by name: the released ones, then those of the file `$SELVA_VARIANTS_FILE` names."""
    path = os.environ.get(VARIANTS_FILE_ENV)
    if not path:
        return dict(RELEASED)
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise InputError(
            f"cannot read the variants file {path} named by {VARIANTS_FILE_ENV}: {exc.strerror}; "
            f"fix the path or unset {VARIANTS_FILE_ENV}"
        ) from None
    return {**RELEASED, **_read_cached(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)}


def get_variant(name: str | Variant) -> Variant:
    """The known variant called `name` (a `Variant` passes through)."""
    if isinstance(name, Variant):
        return name
    known = known_variants()
    return known[spec.check_variant(name, known)]


def read_variants_file(path: str | Path) -> dict[str, Variant]:
    """The variants of a variants file, by name; a broken file is an `InputError` naming the fault."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read the variants file {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"the variants file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != VARIANTS_FILE_FORMAT:
        raise InputError(f'{path} is not a variants file: it needs "format": "{VARIANTS_FILE_FORMAT}"')
    if data.get("version") != VARIANTS_FILE_VERSION:
        raise InputError(
            f"the variants file {path} has version {data.get('version')!r}; "
            f"this SelVA reads version {VARIANTS_FILE_VERSION}"
        )
    entries = data.get("variants")
    if not isinstance(entries, list):
        raise InputError(f'the variants file {path} needs "variants": a list of variants')
    out: dict[str, Variant] = {}
    for k, entry in enumerate(entries):
        where = f"{path}, variant {k + 1}"
        variant = Variant.from_dict(entry, where=where)
        if variant.name in RELEASED or variant.name in out:
            raise InputError(f"{where}: the name {variant.name!r} is taken; give the variant another name")
        out[variant.name] = variant
    return out


def write_variants_file(path: str | Path, variants: Iterable[Variant]) -> Path:
    """Write `variants` as a variants file, atomically (a fault leaves the old file or none)."""
    path = Path(path)
    text = json.dumps(
        {
            "format": VARIANTS_FILE_FORMAT,
            "version": VARIANTS_FILE_VERSION,
            "variants": [v.to_dict() for v in variants],
        },
        indent=1,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, mtime_ns: int, size: int) -> Mapping[str, Variant]:
    # Keyed on the file's mtime and size: an edited file is read again, an unchanged one once.
    return MappingProxyType(read_variants_file(path))


def human_size(n: int) -> str:
    """1_234_567_890 -> '1.23 GB' (decimal units, as the Hub shows sizes)."""
    if n < 1000:
        return f"{n} B"
    exp = min(int(math.log(n, 1000)), 4)
    value = n / 1000**exp
    unit = ("B", "kB", "MB", "GB", "TB")[exp]
    return f"{value:.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"
