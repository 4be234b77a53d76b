"""The request spec: every name, default and limit a generation request has, and every error.

This is the bottom of the package and imports neither torch nor any other
heavy library, so the command line, the server and the Gradio widgets can
read their ranges from here without loading a model. The pipeline checks its
arguments with the same `Limit`s, so a value one layer accepts is accepted by
all of them and every layer words the same refusal the same way.

    req = GenerationRequest(video="dog.mp4", prompt="dog barking").checked(max_duration=30)
"""

from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

# -- errors -------------------------------------------------------------------------------------------


class SelvaError(Exception):
    """A problem the user can fix; the message names it and the fix."""


class InputError(SelvaError, ValueError):
    """An argument is out of range or of the wrong kind (prompt, steps, duration, variant...)."""


class MediaError(SelvaError):
    """A media file cannot be read or written as asked."""


class WeightsError(SelvaError):
    """Model weights are missing, corrupt or cannot be fetched."""


class DependencyError(SelvaError):
    """An installed library cannot do what we ask of it (usually a version we do not support)."""


class GenerationCancelled(SelvaError):
    """The caller's `CancelToken` stopped a generation before it finished its flow steps."""


# torch raises plain RuntimeErrors when host memory (DefaultCPUAllocator) or MPS memory runs out.
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Python's `MemoryError`, torch's `OutOfMemoryError` (CUDA), or torch's CPU and MPS messages.

    Such an error says nothing about the inputs or the files; callers must not
    report it as bad input or damaged weights.
    """
    if isinstance(exc, MemoryError) or any(c.__name__ == "OutOfMemoryError" for c in type(exc).__mro__):
        return True  # matched by name: this module does not import torch
    text = str(exc).lower()
    return any(m in text for m in _OOM_MESSAGES)


# -- cancelling ---------------------------------------------------------------------------------------


class CancelToken:
    """One call's stop button: `cancel()` from any thread; the pipeline checks it between steps.

    A token belongs to one call (or one queued request), so cancelling it never
    stops anybody else's generation. Cancelling before the call starts is fine:
    the call then stops before doing any work.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    # A pickled token (ZeroGPU hands arguments to another process) arrives as a new token in the
    # same state; cancelling the original cannot reach that copy.
    def __getstate__(self) -> bool:
        return self.cancelled

    def __setstate__(self, cancelled: bool) -> None:
        self._event = threading.Event()
        if cancelled:
            self._event.set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise GenerationCancelled("generation was cancelled")


# -- names --------------------------------------------------------------------------------------------

# The variants themselves (names, descriptions, files) are `selva.variants`'s registry.
DEFAULT_VARIANT = "small_16k"

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
OFFLOADS = ("auto", "keep_in_vram", "offload_to_cpu")
# The command line's short spellings of the offload choices.
OFFLOAD_ALIASES = {"on": "offload_to_cpu", "off": "keep_in_vram"}

# -- durations ----------------------------------------------------------------------------------------

TRAINED_DURATION = 8.0  # seconds; SelVA was trained on 8 s clips and sonifies up to that by default
SYNC_FPS = 25  # TextSynch reads 25 frames a second ...
SEGMENT_FRAMES = 16  # ... in segments of 16 frames, so a span needs at least 16 of them
MIN_DURATION = SEGMENT_FRAMES / SYNC_FPS

# Region re-roll (`selva.region`): the region is widened to whole latent frames and at least this
# many of them; an equal-power crossfade of at most REGION_MAX_FADE seconds joins the new audio to
# the take inside each edge (shorter when the region is short: at most half of it per edge).
REGION_MIN_LATENT_FRAMES = 1
REGION_MAX_FADE = 0.05
# Longer spans run as overlapping 8 s windows (selva.windows); the cap bounds one request's work.
DEFAULT_MAX_DURATION = 600.0
MAX_PROMPT_CHARS = 2000


# -- limits -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    """One numeric argument: its name in code, its label in the UI, its range and default."""

    name: str
    label: str
    minimum: float
    maximum: float
    default: float | None
    integer: bool = False

    def check(self, value: object, *, by_label: bool = False) -> float | int:
        """`value` if it is a number of the right kind inside the range, else an `InputError`.

        The message names the argument, or with `by_label` the UI's label (for a person at a form).
        """
        if self.integer:
            ok = _is_int(value) and self.minimum <= value <= self.maximum
            kind = "a whole number"
        else:
            ok = _is_number(value) and self.minimum <= value <= self.maximum
            kind = "a number"
        if not ok:
            hint = f" ({_show(self.default)} is typical)" if self.default is not None else ""
            who = self.label if by_label else self.name
            span = f"from {_show(self.minimum)} to {_show(self.maximum)}"
            if self.maximum == math.inf:
                span = f"of {_show(self.minimum)} or more"
            raise InputError(f"{who} must be {kind} {span}{hint}, got {value!r}")
        return value


STEPS = Limit("steps", "Steps", 1, 100, 25, integer=True)
CFG_STRENGTH = Limit("cfg_strength", "CFG strength", 1.0, 10.0, 4.5)
NUM_SAMPLES = Limit("num_samples", "Candidates", 1, 4, 1, integer=True)
# 2**32 - 1: seeds stay exact as JSON numbers in a browser (float64), and seed + k still fits a
# torch generator for every candidate k.
SEED = Limit("seed", "Seed", 0, 2**32 - 1, None, integer=True)
START = Limit("start", "Start (s)", 0.0, math.inf, 0.0)
# Several sources at once (selva.stems): each stem is a full generation, so a handful at most.
MAX_STEMS = 4
STEM_GAIN = Limit("gain", "Gain", 0.0, 2.0, 1.0)
# The video's own soundtrack under the new audio: 0 replaces it, 1 keeps it at its level.
ORIGINAL_AUDIO_GAIN = Limit("original_audio_gain", "Original audio level", 0.0, 2.0, 0.0)
# Constant-power stereo position of one sound: -1 is hard left, 0 the centre, 1 hard right.
PAN = Limit("pan", "Pan", -1.0, 1.0, 0.0)
# The largest request the MCP endpoint takes (streamable HTTP): the `mcp` package's own limit, which
# gradio gives no way to raise. A video sent as a data: URL grows by a third in base64, so about
# 3 MB of video fits; a larger one goes as a URL or through the HTTP API's upload.
MCP_MAX_REQUEST_BYTES = 4 * 1024 * 1024


def check_duration(duration: object, max_duration: float) -> float | None:
    """None (automatic) or a positive number of seconds up to `max_duration`."""
    if duration is None:
        return None
    if not _is_number(duration) or duration <= 0:
        raise InputError(f"duration must be positive (or None for automatic), got {duration!r}")
    if duration > max_duration:
        raise InputError(
            f"duration {duration:.2f} s is over the limit of {max_duration:g} s; "
            f"pick a shorter span (SelVA is trained on {TRAINED_DURATION:g} s clips)"
        )
    return float(duration)


def check_variant(name: object, known: Collection[str]) -> str:
    """`name` if it is one of the `known` variant names (`selva.variants.known_variants()`)."""
    if not isinstance(name, str) or name not in known:
        raise InputError(f"unknown variant {name!r}; known variants: {', '.join(known)}")
    return name


def check_prompt(name: str, text: object) -> str:
    if not isinstance(text, str):
        raise InputError(f"{name} must be a string, got {type(text).__name__}")
    if len(text) > MAX_PROMPT_CHARS:
        raise InputError(f"{name} is {len(text)} characters long; keep it to {MAX_PROMPT_CHARS} or fewer")
    return text


# -- loading ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadOptions:
    """How to load a pipeline: the one set of loading choices every front end fills in.

    `device=None` and `precision="auto"` pick for this machine; `offload="auto"`
    keeps the text encoders and vocoder on the CPU when the accelerator is small.
    `window_overlap=None` is the pipeline's default overlap of long spans' windows.
    """

    variant: str = DEFAULT_VARIANT
    device: str | None = None
    precision: str | None = "auto"  # or a torch dtype, for a pipeline loaded like another
    offload: str = "auto"
    compile: bool = False
    weights_dir: str | None = None
    revision: str | None = None
    max_duration: float = DEFAULT_MAX_DURATION
    window_overlap: float | None = None

    def checked(self) -> LoadOptions:
        """The cap checked here; device, precision and offload names are checked where they are used."""
        if not _is_number(self.max_duration) or self.max_duration < MIN_DURATION:
            raise InputError(f"max_duration must be at least {MIN_DURATION:g} s, got {self.max_duration!r}")
        return self


# -- the request --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: what to sonify and how. Plain and picklable (ZeroGPU pickles it).

    `seed=None` draws a random seed, `duration=None` sonifies what is left of
    the video after `start`, up to the server's `max_duration`; `variant=None`
    is the server's resident or default variant. `video=None` makes sound from
    the prompt alone and then needs a `duration`.
    """

    video: str | Path | None
    prompt: str
    negative_prompt: str = ""
    steps: int = int(STEPS.default)
    cfg_strength: float = CFG_STRENGTH.default
    seed: int | None = None
    duration: float | None = None
    start: float = START.default
    num_samples: int = int(NUM_SAMPLES.default)
    variant: str | None = None

    def checked(self, *, max_duration: float = DEFAULT_MAX_DURATION) -> GenerationRequest:
        """This request if every field is in range (a float cfg or start from an int is kept as given)."""
        check_prompt("prompt", self.prompt)
        check_prompt("negative_prompt", self.negative_prompt)
        STEPS.check(self.steps)
        CFG_STRENGTH.check(self.cfg_strength)
        if self.seed is not None:
            SEED.check(self.seed)
        NUM_SAMPLES.check(self.num_samples)
        if not _is_number(self.start) or self.start < 0:
            raise InputError(f"start must be 0 s or later, got {self.start!r}")
        check_duration(self.duration, max_duration)
        if self.video is None and self.duration is None:
            raise InputError("without a video, give a duration: how many seconds of sound to make")
        if self.video is not None and not isinstance(self.video, (str, Path)):
            raise InputError(
                f"video must be a file path (or None for sound from the prompt alone), got {self.video!r}"
            )
        if self.variant is not None and not isinstance(self.variant, str):
            raise InputError(f"variant must be a name such as {DEFAULT_VARIANT!r}, got {self.variant!r}")
        return self

    @classmethod
    def from_form(
        cls,
        video: str | None,
        prompt: str | None,
        negative_prompt: str | None = None,
        steps: float | None = None,
        cfg_strength: float | None = None,
        seed: float | None = None,
        duration: float | None = None,
        start: float | None = None,
        variant: str | None = None,
        num_samples: float | None = None,
        *,
        max_duration: float = DEFAULT_MAX_DURATION,
    ) -> GenerationRequest:
        """Widget or API values -> a checked request.

        Forms send whole numbers as floats and leave fields empty: empty means
        the default, a seed of -1 (any negative) means random and a duration of
        0 means automatic. Messages speak to a person at the form. No video with a
        Duration above 0 means sound from the prompt alone.
        """
        if not video and not _number(duration, None, 0.0):
            raise InputError(
                "Upload a video first: drop a clip (mp4, mov, webm...) on the Video box, "
                "or set Duration above 0 to make sound from the prompt alone."
            )
        if not prompt or not prompt.strip():
            raise InputError("Type the sound you want in Prompt, e.g. 'dog barking'.")
        seed_value = _whole(seed, SEED, -1)
        request = cls(
            video=str(video) if video else None,
            prompt=prompt.strip(),
            negative_prompt=(negative_prompt or "").strip(),
            steps=STEPS.check(_whole(steps, STEPS, STEPS.default), by_label=True),
            cfg_strength=CFG_STRENGTH.check(
                _number(cfg_strength, CFG_STRENGTH, CFG_STRENGTH.default), by_label=True
            ),
            seed=None if seed_value < 0 else SEED.check(seed_value, by_label=True),
            duration=_number(duration, None, 0.0) or None,
            start=_number(start, START, 0.0),
            variant=variant or None,
            num_samples=NUM_SAMPLES.check(
                _whole(num_samples, NUM_SAMPLES, NUM_SAMPLES.default), by_label=True
            ),
        )
        return request.checked(max_duration=max_duration)


def _whole(value: object, limit: Limit, default: float) -> int:
    if value is None or value == "":
        return int(default)
    try:
        number = _number(value, limit, default)
    except InputError:
        raise InputError(f"{limit.label} must be a whole number, got {value!r}") from None
    if not float(number).is_integer():
        raise InputError(f"{limit.label} must be a whole number, got {value}")
    return int(number)


def _number(value: object, limit: Limit | None, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        label = limit.label if limit is not None else "Duration"
        raise InputError(f"{label} must be a number, got {value!r}") from None
    return int(number) if isinstance(value, int) and not isinstance(value, bool) else number


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """A finite int or float (numpy scalars included); not a bool, a string or None."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _show(x: float) -> str:
    if x == math.inf:
        return "any"
    return f"{x:g}" if isinstance(x, float) and not float(x).is_integer() or x < 1e6 else str(int(x))


# -- delivery -----------------------------------------------------------------------------------------
# What the files handed to a video editor sound like (selva.delivery): stereo, rate, loudness.

# Video audio is 48 kHz almost everywhere; "model" keeps the variant's own rate (16 or 44.1 kHz).
OUTPUT_RATE_MODEL = "model"
DEFAULT_OUTPUT_RATE = 48_000
OUTPUT_RATES: tuple[int | str, ...] = (DEFAULT_OUTPUT_RATE, OUTPUT_RATE_MODEL)

# Integrated loudness targets for a mix (ITU-R BS.1770 / EBU R128), in LUFS; None leaves the level.
LOUDNESS_OFF = "off"
LOUDNESS_TARGETS: dict[str, float | None] = {
    LOUDNESS_OFF: None,
    "-23 LUFS (EBU R128 broadcast)": -23.0,
    "-16 LUFS (podcasts, mobile)": -16.0,
    "-14 LUFS (streaming platforms)": -14.0,
}
DEFAULT_LOUDNESS_TARGET: float | None = None
# No true peak of a loudness-normalised output goes above this (EBU R128's ceiling for delivery).
TRUE_PEAK_CEILING_DB = -1.0


def check_output_rate(choice: int | str | None, model_rate: int) -> int:
    """The output sample rate for a choice in `spec.OUTPUT_RATES` (None is the default, 48 kHz).

    Accepts the form's strings ("48000", "model") as well as numbers.
    """
    if choice is None:
        choice = OUTPUT_RATES[0]
    if isinstance(choice, str) and choice.strip().lower() == OUTPUT_RATE_MODEL:
        return int(model_rate)
    try:
        rate = int(str(choice).strip()) if isinstance(choice, str) else choice
    except ValueError:
        rate = None
    if not (isinstance(rate, numbers.Integral) and not isinstance(rate, bool) and rate in OUTPUT_RATES):
        names = ", ".join(str(r) for r in OUTPUT_RATES)
        raise InputError(f"output sample rate must be one of {names} ({model_rate} Hz for "
                         f"'{OUTPUT_RATE_MODEL}'), got {choice!r}")
    return int(rate)


def check_loudness_target(value: object) -> float | None:
    """None (off) or one of the targets in `spec.LOUDNESS_TARGETS`, in LUFS.

    Accepts the labels, the numbers (-23, -23.0) and their strings ("-23", "-23 LUFS"), and "off".
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == LOUDNESS_OFF):
        return None
    if isinstance(value, str) and value in LOUDNESS_TARGETS:
        return LOUDNESS_TARGETS[value]
    number: float | None = None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip().upper().removesuffix("LUFS").strip()
        try:
            number = float(text)
        except ValueError:
            number = None
    allowed = [t for t in LOUDNESS_TARGETS.values() if t is not None]
    if number not in allowed:
        names = ", ".join([LOUDNESS_OFF, *(f"{t:g}" for t in allowed)])
        raise InputError(f"loudness target must be one of {names} (LUFS), got {value!r}")
    return number


# -- scoring ------------------------------------------------------------------------------------------
# selva.scoring: a take's agreement with its prompt and its leakage into other prompts, by CLAP.

# The CLAP checkpoint (transformers format) that scores takes; another repo id or folder per call.
SCORER_CHECKPOINT = "laion/larger_clap_general"
# score = agreement - LEAKAGE_WEIGHT * max(0, leakage): leakage costs half as much as agreement earns,
# so a loose likeness to another prompt does not outweigh a clear match to its own (a choice, untuned).
LEAKAGE_WEIGHT = 0.5
# `selva generate --best-of N`: N takes per sound, scored, the best kept (each take is a generation).
BEST_OF = Limit("best_of", "Best of", 2, 4, None, integer=True)
