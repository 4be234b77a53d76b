"""The command line's option values: one converter per option, shared by the flags and the CSV columns.

Each converter is an argparse type that checks with the spec's own rule
(`spec.Limit.check`, `spec.check_duration`, the delivery choices), so a value
typed in a flag and the same value in a CSV cell are refused alike, and before
any model loads.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import replace

from selva import spec
from selva.project import Mix
from selva.spec import InputError


def parse_number(text: str, *, integer: bool = False) -> float | int:
    """A finite number typed in a flag or a cell; with `integer` a whole one ("7.0" is 7)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or (integer and not value.is_integer()):
        kind = "a whole number" if integer else "a number"
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}")
    if not integer:
        return value
    # int(text) keeps big seeds exact; int(value) takes the "7.0" that spreadsheets write.
    return int(text) if text.strip().lstrip("+-").isdigit() else int(value)


def ranged(limit: spec.Limit) -> Callable[[str], float | int]:
    """An argparse type (and CSV cell converter) checking with `limit.check`: the spec's one rule."""

    def convert(text: str) -> float | int:
        value = parse_number(text, integer=limit.integer)
        try:
            return limit.check(value)
        except InputError as exc:
            # The spec names the argument as code does (cfg_strength) and shows the parsed value;
            # argparse names the flag and the CSV reader the column, and both show what was typed.
            rule = str(exc).removeprefix(f"{limit.name} ").rpartition(", got ")[0]
            raise argparse.ArgumentTypeError(f"{rule}, got {text.strip()}") from None

    return convert


def seconds_up_to(max_duration: float) -> Callable[[str], float]:
    """A duration in seconds by `spec.check_duration`: above 0, and at most `max_duration`."""

    def convert(text: str) -> float:
        value = parse_number(text)
        try:
            return spec.check_duration(value, max_duration)
        except InputError:
            raise argparse.ArgumentTypeError(_duration_rule(max_duration, text)) from None

    return convert


def _duration_rule(max_duration: float, given: str) -> str:
    if max_duration == math.inf:
        return f"must be above 0 seconds, got {given}"
    cap = f"at most {max_duration:g} s, the --max-duration cap (raise it for longer spans)"
    return f"must be above 0 and {cap}, got {given}"


steps_arg = ranged(spec.STEPS)
samples_arg = ranged(spec.NUM_SAMPLES)
cfg_arg = ranged(spec.CFG_STRENGTH)
seed_arg = ranged(spec.SEED)
start_arg = ranged(spec.START)
stem_gain_arg = ranged(spec.STEM_GAIN)
original_audio_gain_arg = ranged(spec.ORIGINAL_AUDIO_GAIN)
# The cap is --max-duration's, which argparse may read after --duration: see check_options.
duration_arg = seconds_up_to(math.inf)
max_duration_arg = seconds_up_to(math.inf)


def sample_rate_arg(text: str) -> int | str:
    """--sample-rate: a rate of `spec.OUTPUT_RATES` (48000), or "model" for the model's own."""
    if text.strip().lower() == spec.OUTPUT_RATE_MODEL:
        return spec.OUTPUT_RATE_MODEL
    try:
        return spec.check_output_rate(text, model_rate=0)  # "model" is answered above
    except InputError:
        choices = ", ".join(str(r) for r in spec.OUTPUT_RATES)
        raise argparse.ArgumentTypeError(f"choose one of {choices}, got {text.strip()}") from None


def loudness_arg(text: str) -> float | str:
    """--loudness: a target of `spec.LOUDNESS_TARGETS` in LUFS (-23, -16, -14), or "off"."""
    try:
        target = spec.check_loudness_target(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("loudness target ")) from None
    return spec.LOUDNESS_OFF if target is None else target


# A new project's delivery on the command line (generate, batch), as the flags spell it: the spec's
# output rate (48 kHz: what video editors expect; "--sample-rate model" keeps the model's) and target.
DELIVERY_DEFAULTS: tuple[int | str, float | str] = (
    spec.DEFAULT_OUTPUT_RATE,
    spec.LOUDNESS_OFF if spec.DEFAULT_LOUDNESS_TARGET is None else spec.DEFAULT_LOUDNESS_TARGET,
)


def delivery_settings(mix: Mix, args: argparse.Namespace) -> Mix:
    """`mix` with the --sample-rate and --loudness values (None: `selva render` was given none, the mix's own
    stays; generate and batch default to `DELIVERY_DEFAULTS`)."""
    changes: dict[str, object] = {}
    rate, loudness = getattr(args, "sample_rate", None), getattr(args, "loudness", None)
    if rate is not None:
        changes["sample_rate"] = None if rate == spec.OUTPUT_RATE_MODEL else rate
    if loudness is not None:
        changes["loudness"] = None if loudness == spec.LOUDNESS_OFF else loudness
    return replace(mix, **changes)


def check_options(args: argparse.Namespace) -> None:
    """What one option's type cannot check alone: --duration against --max-duration (as CSV cells are)."""
    try:
        spec.check_duration(args.duration, args.max_duration)
    except InputError:
        raise InputError(f"--duration {_duration_rule(args.max_duration, f'{args.duration:g}')}") from None


def add_limit_option(
    group: argparse._ArgumentGroup,
    flag: str,
    limit: spec.Limit,
    metavar: str,
    what: str,
    *,
    default: bool = True,
) -> None:
    """`flag` typed and ranged by `limit`, its default the spec's (or none), its range in the help."""
    span = f"{limit.minimum:g}-{limit.maximum:g}"
    shown = f"; default: {limit.default:g}" if default and limit.default is not None else ""
    group.add_argument(
        flag,
        type=ranged(limit),
        default=(int(limit.default) if limit.integer else limit.default) if default else None,
        metavar=metavar,
        help=f"{what} ({span}{shown})",
    )


# The command line's model options (`selva generate/batch/render` and `python app.py` alike), by the
# name `LoadOptions` and `PipelineSlot` give them.
MODEL_OPTIONS = ("device", "precision", "offload", "compile", "weights_dir", "revision", "max_duration")


def model_options(args: argparse.Namespace) -> dict[str, object]:
    """The parsed model options as keyword arguments of `LoadOptions` (and `PipelineSlot`)."""
    values = {name: getattr(args, name) for name in MODEL_OPTIONS}
    if values["weights_dir"] is not None:
        values["weights_dir"] = str(values["weights_dir"])
    return values
