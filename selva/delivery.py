"""What the files handed to a video editor sound like: stereo pan, output rate, loudness.

Three steps after the waveforms are made, each usable alone:

- `pan` / `mix`: every sound placed in the stereo field by the constant-power
  law (left cos(theta), right sin(theta), theta = (p + 1) * pi / 4), so a sound
  keeps its power wherever it is panned; `mix` sums panned, gained sounds and
  the video's own soundtrack into one stereo wave.
- `resample`: the model's rate (16 or 44.1 kHz) to the output rate (48 kHz by
  default) with FFmpeg's resampler through PyAV, cut to exactly
  duration x rate samples.
- `normalise` / `measure`: integrated loudness (ITU-R BS.1770, EBU R128) with
  pyloudnorm, one gain to the target, and a true-peak ceiling of -1 dBTP (that
  gain stops at the ceiling; there is no limiter, see `normalise`).

Waves are float32, mono (N,) or channels-first (C, N). Only numpy and the spec
load with this module; PyAV and pyloudnorm are imported when first used.

    stereo = mix([dog, car], gains=[1.0, 0.6], pans=[-0.5, 0.8])
    out = deliver(stereo, 16_000, output_rate=48_000, loudness_target=-23.0)
    out.loudness.integrated_lufs, out.loudness.true_peak_dbtp
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

# The two checks are pure Python and live in the spec, so the project model checks a mix without numpy.
from selva.spec import (
    ORIGINAL_AUDIO_GAIN,
    PAN,
    STEM_GAIN,
    TRUE_PEAK_CEILING_DB,
    InputError,
    check_loudness_target,
    check_output_rate,
)

__all__ = [
    "Delivered", "Loudness", "check_loudness_target", "check_output_rate", "deliver", "integrated_loudness",
    "measure", "mix", "normalise", "pan", "pan_gains", "resample", "true_peak",
]

# BS.1770's true-peak meter looks between samples at four times the rate.
TRUE_PEAK_OVERSAMPLING = 4
# Scaling to exactly the ceiling could land a float rounding above it; this keeps the promise strict.
_CEILING_MARGIN_DB = 0.01
# The resampler is fed a second at a time, so a 10-minute take at 192 kHz is never in memory at once.
_CHUNK_SECONDS = 1


# -- stereo -------------------------------------------------------------------------------------------


def pan_gains(p: float) -> tuple[float, float]:
    """(left, right) gains of the constant-power law: cos and sin of theta = (p + 1) * pi / 4.

    -1 gives (1, 0), +1 gives (0, 1), and 0 gives both 1/sqrt(2): left^2 + right^2 is
    always 1, so a sound's power, and its loudness, is the same wherever it is panned.
    """
    theta = (float(PAN.check(p)) + 1.0) * math.pi / 4.0
    # cos(pi/2) is 6e-17, not 0: a hard-panned sound must leave the other channel silent
    left = 0.0 if p == PAN.maximum else math.cos(theta)
    right = 0.0 if p == PAN.minimum else math.sin(theta)
    return left, right


def pan(mono: np.ndarray, p: float) -> np.ndarray:
    """A mono (N,) wave placed at pan `p` in [-1, 1]: stereo (2, N) float32."""
    wave = _mono(mono, "pan's input")
    left, right = pan_gains(p)
    return np.stack([wave * np.float32(left), wave * np.float32(right)])


def mix(
    sounds: Sequence[np.ndarray],
    *,
    gains: Sequence[float] | None = None,
    pans: Sequence[float] | None = None,
    original: np.ndarray | None = None,
    original_gain: float = 1.0,
) -> np.ndarray:
    """The stereo (2, N) sum of mono sounds, each at its gain and pan, plus the original soundtrack.

    `gains` default to 1 and `pans` to the centre. `original` is the video's own
    soundtrack over the same span: stereo (2, N) is added as it is, mono (N,) is
    placed in the centre like a sound at pan 0, so its balance against the new
    sounds is the one the gains say. The sum is not normalised: `deliver` sets the level.
    """
    if not sounds and original is None:
        raise InputError("nothing to mix: give at least one sound or the original soundtrack")
    gains = [STEM_GAIN.default] * len(sounds) if gains is None else list(gains)
    pans = [PAN.default] * len(sounds) if pans is None else list(pans)
    if len(gains) != len(sounds) or len(pans) != len(sounds):
        raise InputError(f"give one gain and one pan per sound: {len(sounds)} sounds, "
                         f"{len(gains)} gains, {len(pans)} pans")
    waves = [_mono(s, f"sound {k + 1}") for k, s in enumerate(sounds)]
    n = waves[0].shape[0] if waves else np.asarray(original).shape[-1]
    out = np.zeros((2, n), dtype=np.float32)
    for k, (wave, gain, p) in enumerate(zip(waves, gains, pans, strict=True)):
        if wave.shape[0] != n:
            raise InputError(f"sound {k + 1} has {wave.shape[0]} samples, sound 1 has {n}; mix equal spans")
        out += pan(wave, p) * np.float32(STEM_GAIN.check(gain))
    if original is not None:
        orig = np.asarray(original, dtype=np.float32)
        if orig.ndim == 1:
            orig = pan(orig, 0.0)
        if orig.shape != (2, n):
            raise InputError(f"the original soundtrack must be (N,) or (2, N) with N = {n}, got {orig.shape}")
        out += orig * np.float32(ORIGINAL_AUDIO_GAIN.check(original_gain))
    return out


# -- sample rate --------------------------------------------------------------------------------------


def resample(
    audio: np.ndarray, sample_rate: int, target_rate: int, *, duration: float | None = None
) -> np.ndarray:
    """`audio` at `target_rate`, exactly round(duration x target_rate) samples long.

    FFmpeg's resampler (libswresample, through PyAV) does the filtering; it keeps
    time zero where it is, and its flushed tail, a sample more or less than the
    exact length, is cut or padded with silence at the end. `duration` defaults
    to the input's own (samples / sample_rate). The shape's layout is kept.
    """
    wave = _channels(audio)
    n_out = round((wave.shape[1] / sample_rate if duration is None else duration) * target_rate)
    if target_rate == sample_rate:
        out = wave
    else:
        out = np.concatenate(list(_resampled(wave, sample_rate, target_rate)), axis=1)
    out = out[:, :n_out]
    if out.shape[1] < n_out:
        out = np.pad(out, ((0, 0), (0, n_out - out.shape[1])))
    out = np.ascontiguousarray(out, dtype=np.float32)
    return out[0] if np.ndim(audio) == 1 else out


def _resampled(wave: np.ndarray, sample_rate: int, target_rate: int):
    """The (C, n) pieces of `wave` resampled, fed a chunk at a time and flushed at the end."""
    import av

    layout = {1: "mono", 2: "stereo"}[wave.shape[0]]
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=target_rate)
    step = _CHUNK_SECONDS * sample_rate
    for at in range(0, wave.shape[1], step):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(wave[:, at : at + step]), format="fltp", layout=layout
        )
        frame.sample_rate, frame.pts, frame.time_base = sample_rate, at, Fraction(1, sample_rate)
        for piece in resampler.resample(frame):
            yield piece.to_ndarray()
    for piece in resampler.resample(None):
        yield piece.to_ndarray()


# -- loudness -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Loudness:
    """What a loudness meter reads on one output; -inf for silence."""

    integrated_lufs: float  # ITU-R BS.1770-4 gated integrated loudness
    true_peak_dbtp: float  # the largest sample of the 4x oversampled wave, in dB of full scale

    def describe(self) -> str:
        """For the info line: '-23.0 LUFS, -7.4 dBTP'."""
        return f"{_db(self.integrated_lufs)} LUFS, {_db(self.true_peak_dbtp)} dBTP"

    def as_dict(self) -> dict[str, float | None]:
        """For the project file (JSON has no -inf: silence is None), to 0.01 dB."""
        return {
            "integrated_lufs": _rounded(self.integrated_lufs),
            "true_peak_dbtp": _rounded(self.true_peak_dbtp),
        }


def integrated_loudness(audio: np.ndarray, sample_rate: int) -> float:
    """BS.1770 integrated loudness in LUFS (pyloudnorm's meter); -inf for silence.

    Stereo counts both channels, mono its one: a mono wave and the same wave
    panned anywhere by `pan` read the same.
    """
    import pyloudnorm

    wave = _channels(audio)
    meter = pyloudnorm.Meter(sample_rate)  # a meter keeps per-call state: one per measurement
    block = meter.block_size
    if wave.shape[1] <= block * sample_rate:
        seconds = wave.shape[1] / sample_rate
        raise InputError(f"loudness needs more than {block:g} s of audio, got {seconds:.3f} s")
    return float(meter.integrated_loudness(wave.T.astype(np.float64)))


def true_peak(audio: np.ndarray, sample_rate: int) -> float:
    """The true peak in dBTP: the largest magnitude of the wave oversampled 4x (or of its samples).

    The oversampling is FFmpeg's resampler (as in `resample`), a kept filter
    close to BS.1770's annex-2 meter; the samples themselves are included so a
    filter's ripple never reads lower than the plain sample peak.
    """
    wave = _channels(audio)
    peak = float(np.abs(wave).max(initial=0.0))
    for piece in _resampled(wave, sample_rate, sample_rate * TRUE_PEAK_OVERSAMPLING):
        peak = max(peak, float(np.abs(piece).max(initial=0.0)))
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf


def measure(audio: np.ndarray, sample_rate: int) -> Loudness:
    """The integrated loudness and true peak of an output, for the info line and the project file."""
    return Loudness(integrated_loudness(audio, sample_rate), true_peak(audio, sample_rate))


def normalise(
    audio: np.ndarray, sample_rate: int, target_lufs: float, *, ceiling_db: float = TRUE_PEAK_CEILING_DB
) -> tuple[np.ndarray, float]:
    """(`audio` at `target_lufs`, the gain applied in dB), with no true peak above `ceiling_db`.

    One gain for the whole wave, no limiter: where the target's gain would push a
    true peak over the ceiling, the gain stops at the ceiling and the output is
    quieter than the target (a transient-heavy take aimed at -14 LUFS, say); its
    measured loudness says by how much. A limiter would reach the target but
    reshape the transients the model made. Silence is returned as it is.
    """
    target = check_loudness_target(target_lufs)
    wave = np.asarray(audio, dtype=np.float32)
    if target is None:
        return wave, 0.0
    loudness = integrated_loudness(wave, sample_rate)
    if not math.isfinite(loudness):
        return wave, 0.0
    gain_db = target - loudness
    # the true peak scales with the gain: aim under the ceiling by the margin, never on it
    highest = ceiling_db - _CEILING_MARGIN_DB
    peak_after = true_peak(wave, sample_rate) + gain_db
    if peak_after > highest:
        gain_db -= peak_after - highest
    return (wave * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32), gain_db


# -- the whole step -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivered:
    """An output as it is written: the wave, its rate, the gain applied and what it measures."""

    audio: np.ndarray  # float32, the layout it came in, at sample_rate
    sample_rate: int
    gain_db: float  # the loudness gain (0.0 with the target off)
    loudness: Loudness


def deliver(
    audio: np.ndarray,
    sample_rate: int,
    *,
    output_rate: int,
    loudness_target: float | str | None = None,
    duration: float | None = None,
) -> Delivered:
    """Resample to `output_rate` (exactly duration x rate samples), normalise, and measure.

    The loudness is set after resampling, so the true peak is checked on the
    samples that are written. With the target off the level is left as it is.
    `output_rate` is a rate `check_output_rate` returned.
    """
    target = check_loudness_target(loudness_target)
    for name, rate in (("sample_rate", sample_rate), ("output_rate", output_rate)):
        if not (isinstance(rate, numbers.Integral) and not isinstance(rate, bool) and rate > 0):
            raise InputError(f"{name} must be a positive whole number of Hz, got {rate!r}")
    wave = resample(audio, sample_rate, output_rate, duration=duration)
    gain_db = 0.0
    if target is not None:
        wave, gain_db = normalise(wave, output_rate, target)
    return Delivered(wave, output_rate, gain_db, measure(wave, output_rate))


# -- shapes -------------------------------------------------------------------------------------------


def _mono(wave: np.ndarray, what: str) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2 and wave.shape[0] == 1:
        wave = wave[0]
    if wave.ndim != 1:
        raise InputError(f"{what} must be a mono wave (N,), got shape {wave.shape}")
    return wave


def _channels(audio: np.ndarray) -> np.ndarray:
    """(C, N) float32 for C in 1, 2, from mono (N,) or channels-first (C, N)."""
    wave = np.asarray(audio, dtype=np.float32)
    if wave.ndim == 1:
        wave = wave[None]
    if wave.ndim != 2 or wave.shape[0] not in (1, 2):
        raise InputError(f"audio must be mono (N,) or channels-first (1 or 2, N), got shape {wave.shape}")
    return wave


def _db(x: float) -> str:
    return f"{x:.1f}" if math.isfinite(x) else "-inf"


def _rounded(x: float) -> float | None:
    return round(x, 2) if math.isfinite(x) else None
