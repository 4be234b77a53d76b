"""BigVGAN vocoder: log-mel (B, num_mels, T) -> waveform (B, 1, T * hop_length).

A stack of transposed-convolution upsamplers, each followed by anti-aliased
multi-periodicity (AMP) residual blocks: Snake/SnakeBeta periodic activations
run at twice the sample rate between Kaiser-windowed sinc low-pass filters so
they do not alias. Torch-only (no CUDA kernel).

One module serves both checkpoint layouts SelVA uses:
- v1 (16 kHz, `best_netG.pt`): tanh output, bias on the last convolution;
- v2 (44.1 kHz, Hub repo `nvidia/bigvgan_v2_44khz_128band_512x`, config.json
  + `bigvgan_generator.pt`): `use_tanh_at_final` / `use_bias_at_final` flags.
Both files wrap the state dict as `{"generator": state_dict}` and store
weight-normed convolutions; the load pre-hook unwraps and folds them so forward
runs plain convolutions.

Why not NVIDIA's `bigvgan` package (2.4.1, the latest on PyPI): it passes the
same parity fixtures once its keys are remapped (max error 6.6e-4 at 16 kHz,
3.9e-4 at 44.1 kHz; this module: 8.0e-4 and 4.2e-4), but importing the model
imports librosa, numba, scipy and matplotlib (39 more packages, about 560 MB,
and `pesq` compiled at install); its `from_pretrained` raises TypeError with
huggingface_hub 1.x and later, local folders included; and it builds with the
deprecated `torch.nn.utils.weight_norm`, so `parametrizations.weight.*`
checkpoints need a key remap anyway. Worth revisiting if a release fixes those.
"""

import logging
import math
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

SNAKE_EPS = 1e-9  # keeps 1 / beta finite; part of the trained function
LOWPASS_KERNEL = 12  # taps of the anti-aliasing filters (buffers of this size are in the checkpoints)
RESAMPLE_RATIO = 2  # activations run at twice the rate


@dataclass(frozen=True)
class BigVGANConfig:
    num_mels: int = 80
    upsample_rates: tuple[int, ...] = (4, 4, 2, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (8, 8, 4, 4, 4, 4)
    upsample_initial_channel: int = 1536  # halves after every upsampler
    resblock: str = "1"  # only AMPBlock1 ("1") is used by the released checkpoints
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    activation: str = "snakebeta"  # "snake" | "snakebeta"
    snake_logscale: bool = True  # alpha/beta are stored as logs
    use_tanh_at_final: bool = True  # v1: tanh; v2 44k: False -> clamp to [-1, 1]
    use_bias_at_final: bool = True  # v1: True; v2 44k: False (no conv_post.bias key)

    def __post_init__(self):
        if self.resblock != "1":
            raise ValueError(f"BigVGAN resblock {self.resblock!r} is not supported (only '1')")
        if self.activation not in ("snake", "snakebeta"):
            raise ValueError(f"BigVGAN activation must be 'snake' or 'snakebeta', got {self.activation!r}")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes must have the same length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes must have the same length")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BigVGANConfig":
        """Build from a BigVGAN config (yml/json dict); training and data keys are ignored."""

        def tuples(v: Any) -> Any:
            return tuple(tuples(x) for x in v) if isinstance(v, list | tuple) else v

        names = {f.name for f in fields(cls)}
        return cls(**{k: tuples(v) for k, v in d.items() if k in names})

    @property
    def hop_length(self) -> int:
        """Output samples per mel frame."""
        return math.prod(self.upsample_rates)


BIGVGAN_PRESETS: dict[str, BigVGANConfig] = {
    # SelVA/MMAudio's own 16 kHz vocoder (`ext_weights/best_netG.pt`). The 44.1 kHz
    # one is read from the Hub repo's config.json at load time.
    "16k": BigVGANConfig(),
}


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


# ---------------------------------------------------------------------------
# Anti-aliased activation


def kaiser_sinc_filter(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """Low-pass FIR taps (1, 1, kernel_size): a Kaiser-windowed sinc, normalised to unit DC gain.

    Only the initial value of the filter buffers: the checkpoints store the
    filters and loading overwrites them.
    """
    half = kernel_size // 2
    # Kaiser's formula for the window's beta from the attenuation a transition band of this width allows
    atten = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95
    if atten > 50.0:
        beta = 0.1102 * (atten - 8.7)
    elif atten >= 21.0:
        beta = 0.5842 * (atten - 21) ** 0.4 + 0.07886 * (atten - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, periodic=False, beta=beta)
    # tap times are centred on 0 (half-sample offsets for an even length)
    t = torch.arange(-half, half) + 0.5 if kernel_size % 2 == 0 else torch.arange(kernel_size) - half
    taps = 2 * cutoff * window * torch.sinc(2 * cutoff * t)
    return (taps / taps.sum()).view(1, 1, kernel_size)


class LowPassFilter1d(nn.Module):
    """Depthwise FIR low-pass with replicate padding, optionally strided (the downsampler)."""

    def __init__(self, cutoff: float, half_width: float, stride: int = 1, kernel_size: int = LOWPASS_KERNEL):
        super().__init__()
        self.stride = stride
        self.pad_left = kernel_size // 2 - int(kernel_size % 2 == 0)
        self.pad_right = kernel_size // 2
        self.register_buffer("filter", kaiser_sinc_filter(cutoff, half_width, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        C = x.shape[1]
        x = F.pad(x, (self.pad_left, self.pad_right), mode="replicate")
        return F.conv1d(x, self.filter.expand(C, -1, -1), stride=self.stride, groups=C)


class UpSample1d(nn.Module):
    """Zero-stuffing upsampler with the low-pass as interpolation kernel: (B, C, T) -> (B, C, ratio*T).

    Computed polyphase: output phase p of every `ratio` samples only meets taps
    p, p + ratio, ..., so `ratio` short depthwise filters run over the input
    and their outputs are interleaved. The sums are those of the transposed
    convolution, without multiplying the stuffed zeros; on the CPU in bf16 the
    depthwise transposed convolution was 4x slower and half of BigVGAN's time.
    """

    def __init__(self, ratio: int = RESAMPLE_RATIO, kernel_size: int = LOWPASS_KERNEL):
        super().__init__()
        if kernel_size % ratio:
            raise ValueError(f"kernel_size {kernel_size} is not a multiple of the ratio {ratio}")
        self.ratio = ratio
        self.pad = kernel_size // ratio - 1
        # Where the wanted ratio * T samples start within the interleaved phases.
        self.offset = (kernel_size - ratio) // 2
        self.register_buffer("filter", kaiser_sinc_filter(0.5 / ratio, 0.6 / ratio, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T = x.shape
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        # phases[p] = taps p, p + ratio, ... in convolution (flipped) order: (ratio, kernel_size / ratio)
        phases = self.filter.view(-1, self.ratio).t().flip(-1)
        width = phases.shape[-1]
        y = torch.stack(
            [F.conv1d(x, phase.view(1, 1, width).expand(C, 1, width), groups=C) for phase in phases], dim=-1
        )  # (B, C, T + pad, ratio)
        y = y.flatten(-2)[..., self.offset : self.offset + self.ratio * T]
        return self.ratio * y  # the gain of `ratio` restores the energy lost to the inserted zeros


class DownSample1d(nn.Module):
    def __init__(self, ratio: int = RESAMPLE_RATIO, kernel_size: int = LOWPASS_KERNEL):
        super().__init__()
        self.lowpass = LowPassFilter1d(0.5 / ratio, 0.6 / ratio, stride=ratio, kernel_size=kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowpass(x)  # (B, C, T / ratio)


def snake_coefficients(
    alpha: torch.Tensor, beta: torch.Tensor, *, logscale: bool, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (alpha, 1 / (beta + eps)) of a snake activation, computed in float32 (or float64),
    cast to `dtype`.

    Taken in float32 because in float16 the eps (1e-9) rounds to zero and a small
    exp(beta) underflows too, so dividing in float16 can divide by zero. The
    reciprocal is clamped to the largest finite value of `dtype` (beta below
    about -11 in float16): inf would turn the sin^2 = 0 points into NaN.
    """
    work = torch.promote_types(dtype, torch.float32)
    alpha, beta = alpha.to(work), beta.to(work)
    if logscale:
        alpha, beta = alpha.exp(), beta.exp()
    limit = torch.finfo(dtype).max
    inverse = (beta + SNAKE_EPS).reciprocal().clamp(max=limit)
    return alpha.clamp(max=limit).to(dtype), inverse.to(dtype)


class Snake(nn.Module):
    """x + sin^2(alpha x) / alpha, one alpha per channel.

    `forward` is the plain definition; `Activation1d` runs the same arithmetic fused with the resampling.
    """

    def __init__(self, channels: int, logscale: bool = True):
        super().__init__()
        self.logscale = logscale
        self.alpha = nn.Parameter(torch.zeros(channels) if logscale else torch.ones(channels))

    def coefficients(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return snake_coefficients(self.alpha, self.alpha, logscale=self.logscale, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, inverse = (c[None, :, None] for c in self.coefficients(x.dtype))  # (1, C, 1)
        return x + torch.sin(x * alpha).pow(2) * inverse


class SnakeBeta(Snake):
    """x + sin^2(alpha x) / beta: frequency and magnitude of the periodic part learnt separately."""

    def __init__(self, channels: int, logscale: bool = True):
        super().__init__(channels, logscale)
        self.beta = nn.Parameter(torch.zeros(channels) if logscale else torch.ones(channels))

    def coefficients(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return snake_coefficients(self.alpha, self.beta, logscale=self.logscale, dtype=dtype)


class PreparedActivation(NamedTuple):
    """An `Activation1d`'s tensors in the form its fused path uses, for one dtype and device.

    W = kernel_size / 2 taps per phase; phase 0 / 1 are the even / odd samples of the 2x signal.
    """

    up: tuple[torch.Tensor, torch.Tensor]  # (C, 1, W) each: taps making phase 0 / 1, the 2x gain included
    down: tuple[torch.Tensor, torch.Tensor]  # (C, 1, W) each: the down filter's taps on phase 0 / 1
    alpha: torch.Tensor  # (1, C, 1)
    inverse: torch.Tensor  # (1, C, 1): 1 / (beta + eps)


def snake_resample(x: torch.Tensor, p: PreparedActivation) -> torch.Tensor:
    """downsample(snake(upsample(x))) for x (B, C, T), without building the 2x signal.

    Both resamplers are polyphase: the upsampler's even and odd output samples
    come from two depthwise filters over the input, the snake acts on each
    phase alone (it is elementwise), and the strided down filter is the sum
    of its even taps over phase 0 and its odd taps over phase 1. Nothing is
    interleaved, padded twice or scaled separately: measured on the CPU, an
    activation takes 0.5 to 0.65 of the three modules' time in a row, and the
    real-size 16 kHz vocoder about 0.8 (its dense convolutions are the rest).

    The downsampler pads the 2x signal by repeating its end samples; here
    those are the few phase samples at each end, overwritten with the end
    values. Works on its own intermediates in place (inference only).
    """
    B, C, T = x.shape
    width = p.up[0].shape[-1]
    pad = width - 1  # the upsampler's replicate padding; also where the 2x signal starts in the phases
    x = F.pad(x, (pad, pad), mode="replicate")
    z = [F.conv1d(x, taps, groups=C) for taps in p.up]  # 2 x (B, C, T + pad): the 2x signal's phases
    # Phase q sample i is 2x sample 2i + q - pad: before 0 and past 2T - 1 it must repeat the end value.
    # 2x sample 0 is phase pad % 2, index pad // 2; 2x sample 2T - 1 (= 2i + q at 2T - 1 + pad) is phase
    # (pad - 1) % 2, index T + (pad - 1) // 2. Spelt so that only T varies (compiled with a dynamic T).
    i = pad // 2
    first_value = z[pad % 2][..., i : i + 1]
    i = T + (pad - 1) // 2
    last_value = z[(pad - 1) % 2][..., i : i + 1]
    for q in (0, 1):
        z[q][..., : (pad + 1 - q) // 2] = first_value
        z[q][..., T + (pad - 1 - q) // 2 + 1 :] = last_value
    for phase in z:  # x + sin^2(alpha x) / beta, in place
        periodic = torch.mul(phase, p.alpha).sin_().square_()
        phase.addcmul_(periodic, p.inverse)
    y = F.conv1d(z[0], p.down[0], groups=C)  # (B, C, T)
    return y.add_(F.conv1d(z[1], p.down[1], groups=C))


class Activation1d(nn.Module):
    """Upsample 2x, apply the periodic activation, low-pass and downsample 2x.

    The submodules hold the checkpoint's tensors and define the arithmetic
    (`reference_forward`); `forward` runs it fused (`snake_resample`) from
    tensors prepared once per dtype and device, dropped when the module is
    moved, cast or loaded.
    """

    def __init__(self, channels: int, config: BigVGANConfig):
        super().__init__()
        act = SnakeBeta if config.activation == "snakebeta" else Snake
        self.act = act(channels, config.snake_logscale)
        self.upsample = UpSample1d()
        self.downsample = DownSample1d()
        if self.upsample.ratio != 2 or self.downsample.lowpass.stride != 2:
            raise ValueError("the fused activation resamples by 2 only")
        self._prepared: PreparedActivation | None = None
        self.register_load_state_dict_post_hook(Activation1d._forget_prepared)

    def prepare(self, dtype: torch.dtype, device: torch.device | str) -> PreparedActivation:
        """Filters and snake coefficients for `snake_resample`, made in float32, then cast; cached."""
        # Kept for calls outside the inference_mode call that may build it (as the rotary tables).
        with torch.inference_mode(False), torch.no_grad():
            channels = self.act.alpha.shape[0]
            work = torch.promote_types(dtype, torch.float32)
            up = self.upsample.filter.to(work).flatten()
            down = self.downsample.lowpass.filter.to(work).flatten()

            def depthwise(taps: torch.Tensor) -> torch.Tensor:
                return taps.expand(channels, 1, -1).contiguous().to(device, dtype)

            alpha, inverse = self.act.coefficients(dtype)
            self._prepared = PreparedActivation(
                # convolution order (flipped), times the gain of 2 restoring the energy of the zeros
                up=(depthwise(2 * up[0::2].flip(0)), depthwise(2 * up[1::2].flip(0))),
                down=(depthwise(down[0::2]), depthwise(down[1::2])),
                alpha=alpha.to(device).view(1, -1, 1),
                inverse=inverse.to(device).view(1, -1, 1),
            )
        return self._prepared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self._prepared
        if p is None or p.alpha.dtype != x.dtype or p.alpha.device != x.device:
            p = self.prepare(x.dtype, x.device)
        return snake_resample(x, p)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The unfused definition: three passes over the 2x signal."""
        return self.downsample(self.act(self.upsample(x)))

    def _apply(self, fn, recurse=True):
        self._prepared = None  # .to(), .half(), .cuda() ... replace the tensors it was made from
        return super()._apply(fn, recurse)

    @staticmethod
    def _forget_prepared(module: "Activation1d", incompatible_keys: Any) -> None:
        module._prepared = None


# ---------------------------------------------------------------------------
# Generator


class AMPBlock(nn.Module):
    """Three (act, dilated conv, act, conv) residual units at one kernel size (BigVGAN's AMPBlock1)."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...], config: BigVGANConfig):
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=get_padding(kernel_size, d))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=get_padding(kernel_size)) for _ in dilations
        )
        # activations alternate: 2i before convs1[i], 2i + 1 before convs2[i]
        self.activations = nn.ModuleList(Activation1d(channels, config) for _ in range(2 * len(dilations)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (c1, c2) in enumerate(zip(self.convs1, self.convs2, strict=True)):
            h = c1(self.activations[2 * i](x))
            h = c2(self.activations[2 * i + 1](h))
            x = x + h
        return x


class BigVGAN(nn.Module):
    """Mel (B, num_mels, T) -> waveform (B, 1, T * hop_length) in [-1, 1]."""

    def __init__(self, config: BigVGANConfig):
        super().__init__()
        self.config = config
        c0 = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.num_mels, c0, 7, padding=3)
        # ups[i][0]: the checkpoint nests each upsampler in a one-element list
        self.ups = nn.ModuleList(
            nn.ModuleList([nn.ConvTranspose1d(c0 // 2**i, c0 // 2 ** (i + 1), k, u, padding=(k - u) // 2)])
            for i, (u, k) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes, strict=True))
        )
        # resblocks[i * K + j]: stage i, kernel size j (K kernel sizes per stage)
        self.resblocks = nn.ModuleList(
            AMPBlock(c0 // 2 ** (i + 1), k, d, config)
            for i in range(len(self.ups))
            for k, d in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True)
        )
        ch = c0 // 2 ** len(self.ups)
        self.activation_post = Activation1d(ch, config)
        self.conv_post = nn.Conv1d(ch, 1, 7, padding=3, bias=config.use_bias_at_final)
        self.register_load_state_dict_pre_hook(BigVGAN._load_hook)

    def prepare(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        """Build every activation's fused tensors now (default: the weights' dtype and device).

        Forward does it lazily on first use; calling this first keeps that work
        (and its Python) out of a timed or compiled first call.
        """
        weight = self.conv_pre.weight
        for module in self.modules():
            if isinstance(module, Activation1d):
                module.prepare(dtype or weight.dtype, device or weight.device)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        K = len(self.config.resblock_kernel_sizes)
        x = self.conv_pre(mel)  # (B, C0, T)
        for i, (up,) in enumerate(self.ups):
            x = up(x)  # (B, C0 / 2^(i+1), T * prod(rates[:i+1]))
            # the K blocks see the same input; their outputs are averaged
            x = sum(self.resblocks[i * K + j](x) for j in range(K)) / K
        x = self.conv_post(self.activation_post(x))  # (B, 1, N)
        return torch.tanh(x) if self.config.use_tanh_at_final else x.clamp(-1.0, 1.0)

    @staticmethod
    def _load_hook(module: "BigVGAN", state_dict: dict, prefix: str, *args: Any) -> None:
        """Unwrap `{"generator": ...}` and fold weight norm into plain `weight` tensors.

        Accepts weight norm spelt `weight_g`/`weight_v` (torch.nn.utils.weight_norm)
        or `parametrizations.weight.original0`/`original1` (its parametrize
        version), and already-folded `weight` keys.
        """
        wrapped = state_dict.pop(prefix + "generator", None)
        if wrapped is not None:
            log.info("BigVGAN: unwrapped the checkpoint's 'generator' state dict")
            state_dict.update({prefix + k: v for k, v in wrapped.items()})
        folded = 0
        for key in [k for k in state_dict if k.startswith(prefix)]:
            for g_suffix, v_suffix in (
                (".weight_g", ".weight_v"),
                (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
            ):
                stem = key[: -len(g_suffix)]
                if key.endswith(g_suffix) and stem + v_suffix in state_dict:
                    g, v = state_dict.pop(key), state_dict.pop(stem + v_suffix)
                    state_dict[stem + ".weight"] = fold_weight_norm(g, v)
                    folded += 1
        log.debug("BigVGAN: folded weight norm into %d convolutions", folded)


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """g * v / ||v||, the norm over all dims but the first (weight_norm's dim=0), in float32."""
    v32 = v.float()
    norm = torch.linalg.vector_norm(v32, dim=tuple(range(1, v.ndim)), keepdim=True)
    return (v32 * (g.float() / norm)).to(v.dtype)
