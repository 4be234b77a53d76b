"""selva/delivery.py: stereo pan and mix, the output rate, loudness targets and the true-peak ceiling.

Every signal is synthetic and seeded; loudness is read back with pyloudnorm and
true peaks with scipy's polyphase oversampling, a filter other than the one the
module uses, so the ceiling is checked by an independent meter.
"""

import math
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pyloudnorm
import pytest
from scipy.signal import resample_poly

from selva import delivery
from selva.spec import (
    DEFAULT_OUTPUT_RATE,
    LOUDNESS_TARGETS,
    PAN,
    TRUE_PEAK_CEILING_DB,
    InputError,
)


def sine(seconds: float, rate: int, hz: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def noise(seconds: float, rate: int, level: float, seed: int = 0) -> np.ndarray:
    return (level * np.random.default_rng(seed).standard_normal(round(seconds * rate))).astype(np.float32)


def lufs(audio: np.ndarray, rate: int) -> float:
    data = audio.T if audio.ndim == 2 else audio
    return pyloudnorm.Meter(rate).integrated_loudness(data.astype(np.float64))


def scipy_true_peak(audio: np.ndarray) -> float:
    """dBTP by scipy's 4x polyphase oversampling: an independent meter."""
    up = resample_poly(np.atleast_2d(audio).astype(np.float64), 4, 1, axis=-1)
    return 20 * math.log10(max(np.abs(up).max(), np.abs(audio).max()))


def library_resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """The whole mono wave through one PyAV resampler, as a user of the library would call it."""
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=target)
    frame = av.AudioFrame.from_ndarray(wave[None], format="fltp", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
    pieces = resampler.resample(frame) + resampler.resample(None)
    return np.concatenate([p.to_ndarray()[0] for p in pieces])


# -- pan and mix --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "left", "right"), [(-1.0, 1.0, 0.0), (0.0, 0.5**0.5, 0.5**0.5), (1.0, 0.0, 1.0)]
)
def test_pan_puts_a_sound_left_centre_or_right(p, left, right):
    mono = sine(1.0, 16_000)
    stereo = delivery.pan(mono, p)
    assert stereo.shape == (2, mono.size) and stereo.dtype == np.float32
    np.testing.assert_allclose(stereo[0], mono * left, atol=1e-7)
    np.testing.assert_allclose(stereo[1], mono * right, atol=1e-7)
    if p != 0.0:  # hard-panned: the other channel is silent, not 6e-17 of the sound
        assert not stereo[1 if p < 0 else 0].any()
    else:  # equal power in both channels
        np.testing.assert_allclose(np.sum(stereo[0] ** 2), np.sum(stereo[1] ** 2), rtol=1e-6)


def test_pan_follows_the_constant_power_law_and_keeps_the_loudness():
    mono = noise(2.0, 16_000, 0.1)
    for p in np.linspace(-1, 1, 9):
        theta = (p + 1) * np.pi / 4
        left, right = delivery.pan_gains(p)
        assert (left, right) == pytest.approx((np.cos(theta), np.sin(theta)), abs=1e-12)
        assert left**2 + right**2 == pytest.approx(1.0)
        # power is kept, so BS.1770 (which sums the channels' power) reads the mono level
        assert lufs(delivery.pan(mono, p), 16_000) == pytest.approx(lufs(mono, 16_000), abs=1e-3)


@pytest.mark.parametrize("bad", [1.5, -1.01, float("nan"), "left", None, True])
def test_pan_out_of_range_is_an_input_error(bad):
    with pytest.raises(InputError, match="pan must be a number from -1 to 1"):
        delivery.pan(np.zeros(10, np.float32), bad)


def test_mix_sums_panned_gained_sounds_and_the_original():
    a, b = sine(1.0, 16_000, 440.0), sine(1.0, 16_000, 660.0)
    mixed = delivery.mix([a, b], gains=[1.0, 0.5], pans=[-1.0, 0.5])
    np.testing.assert_allclose(mixed, delivery.pan(a, -1.0) + 0.5 * delivery.pan(b, 0.5), atol=1e-7)
    # defaults: unit gains in the centre
    np.testing.assert_allclose(delivery.mix([a]), delivery.pan(a, 0.0))
    # a mono original sits in the centre like a sound at pan 0; a stereo one is added as it is
    orig = noise(1.0, 16_000, 0.05)
    with_mono = delivery.mix([a], pans=[1.0], original=orig, original_gain=0.5)
    np.testing.assert_allclose(with_mono, delivery.pan(a, 1.0) + 0.5 * delivery.pan(orig, 0.0), atol=1e-7)
    stereo_orig = np.stack([orig, -orig])
    with_stereo = delivery.mix([a], original=stereo_orig, original_gain=2.0)
    np.testing.assert_allclose(with_stereo, delivery.pan(a, 0.0) + 2.0 * stereo_orig, atol=1e-7)
    assert delivery.mix([], original=stereo_orig).shape == (2, orig.size)


def test_mix_refuses_mismatched_inputs():
    a = np.zeros(100, np.float32)
    with pytest.raises(InputError, match="one gain and one pan per sound"):
        delivery.mix([a, a], pans=[0.0])
    with pytest.raises(InputError, match="sound 2 has 99 samples"):
        delivery.mix([a, a[:99]])
    with pytest.raises(InputError, match="sound 1 must be a mono wave"):
        delivery.mix([np.zeros((2, 100), np.float32)])
    with pytest.raises(InputError, match="original soundtrack must be"):
        delivery.mix([a], original=np.zeros((2, 50), np.float32))
    with pytest.raises(InputError, match="Gain|gain must be a number from 0 to 2"):
        delivery.mix([a], gains=[3.0])
    with pytest.raises(InputError, match="nothing to mix"):
        delivery.mix([])


def test_pan_is_a_spec_limit():
    assert (PAN.name, PAN.minimum, PAN.maximum, PAN.default) == ("pan", -1.0, 1.0, 0.0)


# -- output rate --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_rate", "duration"), [(16_000, 8.0), (44_100, 8.0), (44_100, 1.37), (16_000, 2.5)]
)
def test_48k_output_has_duration_x_48000_samples_and_is_the_library_resample(model_rate, duration):
    wave = noise(duration, model_rate, 0.2, seed=3) + sine(duration, model_rate, 1000.0, 0.3)
    out = delivery.resample(wave, model_rate, DEFAULT_OUTPUT_RATE, duration=duration)
    assert out.shape == (round(duration * 48_000),) and out.dtype == np.float32
    ref = library_resample(wave, model_rate, 48_000)
    n = min(ref.size, out.size)
    assert abs(ref.size - out.size) <= 2  # only the resampler's flushed tail differs
    np.testing.assert_array_equal(out[:n], ref[:n])  # fed in chunks, yet the same samples


def test_resample_keeps_time_zero_and_stereo():
    # a 16 kHz tone at 48 kHz is the same tone sampled at 48 kHz: no delay, no drift
    out = delivery.resample(np.stack([sine(1.0, 16_000), sine(1.0, 16_000, 300.0)]), 16_000, 48_000)
    assert out.shape == (2, 48_000)
    inner = slice(200, -200)  # the filter's edges
    np.testing.assert_allclose(out[0, inner], sine(1.0, 48_000)[inner], atol=1e-3)
    np.testing.assert_allclose(out[1, inner], sine(1.0, 48_000, 300.0)[inner], atol=1e-3)
    # the model's own rate is a copy, cut or padded to the asked duration
    wave = sine(1.0, 16_000)
    np.testing.assert_array_equal(delivery.resample(wave, 16_000, 16_000), wave)
    padded = delivery.resample(wave, 16_000, 16_000, duration=1.5)
    assert padded.size == 24_000 and not padded[16_000:].any()


def test_output_rate_choices():
    assert delivery.check_output_rate(None, 16_000) == 48_000
    assert delivery.check_output_rate(48_000, 16_000) == delivery.check_output_rate("48000", 16_000) == 48_000
    assert delivery.check_output_rate("model", 44_100) == 44_100
    for bad in (44_100, "22050", "fast", 48_000.5, True):
        with pytest.raises(InputError, match="output sample rate must be one of 48000, model"):
            delivery.check_output_rate(bad, 16_000)


# -- loudness -----------------------------------------------------------------------------------------

TAKES = {
    # loud: noise and a tone well over -23 LUFS (about -6); quiet: a soft tone and hiss near -50
    "loud": lambda rate: noise(8.0, rate, 0.35, seed=7) + sine(8.0, rate, 220.0, 0.3),
    "quiet": lambda rate: sine(8.0, rate, 523.0, 0.004) + noise(8.0, rate, 0.001, seed=8),
}


@pytest.mark.parametrize("take", sorted(TAKES))
@pytest.mark.parametrize("model_rate", [16_000, 44_100])
def test_minus_23_lufs_target_on_a_loud_and_a_quiet_take(take, model_rate):
    wave = TAKES[take](model_rate)
    stereo = delivery.mix([wave], pans=[0.3])
    before = lufs(stereo, model_rate)
    assert (before > -12) if take == "loud" else (before < -40)
    out = delivery.deliver(stereo, model_rate, output_rate=48_000, loudness_target=-23.0)
    assert out.audio.shape == (2, 8 * 48_000) and out.sample_rate == 48_000
    assert lufs(out.audio, 48_000) == pytest.approx(-23.0, abs=0.5)
    assert scipy_true_peak(out.audio) <= TRUE_PEAK_CEILING_DB
    # what the info line and the project file are given is what a meter reads
    assert out.loudness.integrated_lufs == pytest.approx(lufs(out.audio, 48_000), abs=1e-6)
    assert out.loudness.true_peak_dbtp <= TRUE_PEAK_CEILING_DB
    assert out.loudness.true_peak_dbtp == pytest.approx(scipy_true_peak(out.audio), abs=0.3)
    assert out.gain_db == pytest.approx(-23.0 - lufs(delivery.resample(stereo, model_rate, 48_000), 48_000))


def test_the_true_peak_ceiling_wins_over_the_target():
    # clicks over a quiet bed: -14 LUFS would need peaks far above 0 dBFS
    rate = 48_000
    wave = noise(8.0, rate, 0.002, seed=9)
    wave[:: rate // 2] = 0.9
    out, gain_db = delivery.normalise(wave, rate, -14.0)
    peak = scipy_true_peak(out)
    assert peak <= TRUE_PEAK_CEILING_DB and peak > TRUE_PEAK_CEILING_DB - 0.3
    assert lufs(out, rate) < -14.5  # quieter than asked, and measured as such
    assert delivery.measure(out, rate).integrated_lufs == pytest.approx(lufs(out, rate))
    assert gain_db == pytest.approx(20 * math.log10(np.abs(out).max() / np.abs(wave).max()), abs=1e-4)


def test_every_target_is_met_on_a_steady_take():
    rate = 48_000
    wave = delivery.pan(noise(4.0, rate, 0.05, seed=11), -0.2)
    for target in (t for t in LOUDNESS_TARGETS.values() if t is not None):
        out = delivery.deliver(wave, rate, output_rate=rate, loudness_target=target)
        assert lufs(out.audio, rate) == pytest.approx(target, abs=0.5)
        assert scipy_true_peak(out.audio) <= TRUE_PEAK_CEILING_DB


def test_target_off_leaves_the_level_and_still_measures():
    wave = noise(2.0, 16_000, 0.1, seed=12)
    out = delivery.deliver(wave, 16_000, output_rate=48_000, loudness_target="off")
    np.testing.assert_array_equal(out.audio, delivery.resample(wave, 16_000, 48_000))
    assert out.gain_db == 0.0
    assert out.loudness.integrated_lufs == pytest.approx(lufs(out.audio, 48_000))
    assert out.loudness.describe() == (
        f"{out.loudness.integrated_lufs:.1f} LUFS, {out.loudness.true_peak_dbtp:.1f} dBTP"
    )
    assert out.loudness.as_dict() == {
        "integrated_lufs": round(out.loudness.integrated_lufs, 2),
        "true_peak_dbtp": round(out.loudness.true_peak_dbtp, 2),
    }


def test_silence_is_left_alone():
    silent = np.zeros(48_000, np.float32)
    out, gain_db = delivery.normalise(silent, 48_000, -23.0)
    assert gain_db == 0.0 and not out.any()
    assert delivery.measure(silent, 48_000).describe() == "-inf LUFS, -inf dBTP"
    assert delivery.measure(silent, 48_000).as_dict() == {"integrated_lufs": None, "true_peak_dbtp": None}


def test_loudness_target_choices_and_errors():
    assert delivery.check_loudness_target(None) is None
    assert delivery.check_loudness_target("off") is None
    assert delivery.check_loudness_target(-23) == -23.0
    assert delivery.check_loudness_target("-16 LUFS") == -16.0
    for label, value in LOUDNESS_TARGETS.items():
        assert delivery.check_loudness_target(label) == value
    for bad in (-20.0, "loud", "", True, [-23]):
        with pytest.raises(InputError, match="loudness target must be one of off, -23, -16, -14"):
            delivery.check_loudness_target(bad)
    with pytest.raises(InputError, match="loudness target"):
        delivery.deliver(np.zeros(48_000, np.float32), 48_000, output_rate=48_000, loudness_target=-20)
    with pytest.raises(InputError, match="output_rate must be a positive whole number of Hz"):
        delivery.deliver(np.zeros(48_000, np.float32), 48_000, output_rate=0)


def test_too_short_or_badly_shaped_audio_is_an_input_error():
    with pytest.raises(InputError, match="loudness needs more than 0.4 s"):
        delivery.measure(np.zeros(4_000, np.float32), 16_000)
    with pytest.raises(InputError, match="mono .* or channels-first"):
        delivery.resample(np.zeros((3, 100), np.float32), 16_000, 48_000)


def test_importing_the_module_loads_no_torch_pyav_or_meter():
    code = (
        "import sys, selva.delivery; "
        "print(sorted(m for m in ('torch', 'av', 'pyloudnorm', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
