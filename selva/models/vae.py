"""1-D mel VAE decoder: latent (B, C, T) -> log-mel (B, n_mels, 2T).

The decoder half of MMAudio's VAE, built from EDM2's magnitude-preserving
(MP) layers: every convolution has no bias and its weight is force-normalised
to unit norm per output channel, residual sums are rescaled so they keep unit
variance, and activations are pixel-normalised before each residual block.

The normalisation of a convolution weight depends only on the weight, so it is
folded into the stored tensor once when a checkpoint is loaded (see
`VAEDecoder._load_hook`) and forward runs plain convolutions. The checkpoint
also holds the encoder, which generation never uses: its keys are dropped at
load.
"""

import logging
import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

EPS = 1e-4  # EDM2's epsilon for normalisation
CLIP_ACT = 256.0  # activations are clamped to +-256 after each stage, as in training
MP_SILU_SCALE = 0.596  # std of silu(x) for x ~ N(0, 1): keeps the activation at unit variance
RESIDUAL_T = 0.3  # weight of the branch in the magnitude-preserving residual sum
KERNEL_SIZE = 3


@dataclass(frozen=True)
class VAEConfig:
    data_dim: int = 80  # mel bins
    embed_dim: int = 20  # latent channels
    hidden_dim: int = 384  # width of the finest level; level i has hidden_dim * ch_mult[i]
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2  # the decoder has one more per level than the encoder
    attn_layers: tuple[int, ...] = (3,)  # levels with attention after each block (3: none of 0..2)
    down_layers: tuple[int, ...] = (0,)  # encoder levels that halve time; the decoder doubles after level i+1

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VAEConfig":
        """Build from a reference hyper-parameter dict; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        return cls(**kwargs)


VAE_PRESETS: dict[str, VAEConfig] = {
    "16k": VAEConfig(data_dim=80, embed_dim=20, hidden_dim=384),
    "44k": VAEConfig(data_dim=128, embed_dim=40, hidden_dim=512),
}


# ---------------------------------------------------------------------------
# Magnitude-preserving primitives


def pixel_norm(x: torch.Tensor, dim: int = 1, eps: float = EPS) -> torch.Tensor:
    """Divide by the RMS over `dim` (plus eps); the norm is taken in float32 for half inputs."""
    rms = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32) / math.sqrt(x.shape[dim])
    return x / (rms + eps).to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x) / MP_SILU_SCALE


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = RESIDUAL_T) -> torch.Tensor:
    """(1 - t) a + t b, rescaled so that two unit-variance inputs give a unit-variance sum."""
    return torch.lerp(a, b, t) / math.sqrt((1 - t) ** 2 + t**2)


def fold_mp_weight(w: torch.Tensor) -> torch.Tensor:
    """The weight an MP convolution actually applies: each output filter scaled to norm 1.

    Equivalent to normalising every filter to unit RMS (EDM2's forced weight
    normalisation) and then dividing by sqrt(fan_in) so the output keeps the
    input's magnitude. Done in float32 and cast back.
    """
    w32 = w.float()
    fan_in = w32[0].numel()
    rms = torch.linalg.vector_norm(w32, dim=tuple(range(1, w32.ndim)), keepdim=True) / math.sqrt(fan_in)
    return (w32 / (rms + EPS) / math.sqrt(fan_in)).to(w.dtype)


class MPConv1d(nn.Conv1d):
    """Bias-free 'same' convolution; its `weight` is already folded (see `fold_mp_weight`)."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int):
        super().__init__(in_dim, out_dim, kernel_size, padding=kernel_size // 2, bias=False)


# ---------------------------------------------------------------------------
# Blocks, in the order the decoder uses them


class ResnetBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv1 = MPConv1d(in_dim, out_dim, KERNEL_SIZE)
        self.conv2 = MPConv1d(out_dim, out_dim, KERNEL_SIZE)
        # a 1x1 projection only where the width changes (the checkpoint has no other shortcut)
        self.nin_shortcut = MPConv1d(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(x)  # the shortcut also sees the normalised input
        h = self.conv2(mp_silu(self.conv1(mp_silu(x))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return mp_sum(x, h)


class AttnBlock(nn.Module):
    """Single-head self-attention over time with cosine-normalised q, k, v."""

    def __init__(self, dim: int, num_heads: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = MPConv1d(dim, dim * 3, 1)
        self.proj_out = MPConv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, T = x.shape
        # the checkpoint interleaves q, k, v per channel: channel index = (head, c, qkv)
        qkv = self.qkv(x).reshape(B, self.num_heads, -1, 3, T)  # (B, nh, hs, 3, T)
        q, k, v = pixel_norm(qkv, dim=2).unbind(3)  # each (B, nh, hs, T)
        q, k, v = (y.transpose(-1, -2) for y in (q, k, v))  # each (B, nh, T, hs)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, nh, T, hs)
        h = h.transpose(-1, -2).reshape(B, -1, T)  # (B, C, T)
        return mp_sum(x, self.proj_out(h))


class Upsample(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = MPConv1d(dim, dim, KERNEL_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest-exact")  # (B, C, 2T)
        return self.conv(x)


class UpLevel(nn.Module):
    """One resolution level: residual blocks (each optionally followed by attention), then maybe 2x."""

    def __init__(self, in_dim: int, out_dim: int, num_blocks: int, *, attn: bool, upsample: bool):
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(num_blocks)
        )
        self.attn = nn.ModuleList(AttnBlock(out_dim) for _ in range(num_blocks if attn else 0))
        self.upsample = Upsample(out_dim) if upsample else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[i](h)
            h = h.clamp(-CLIP_ACT, CLIP_ACT)
        if self.upsample is not None:
            h = self.upsample(h)
        return h


class MidBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.block_1 = ResnetBlock(dim, dim)
        self.attn_1 = AttnBlock(dim)
        self.block_2 = ResnetBlock(dim, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.block_2(self.attn_1(self.block_1(h)))
        return h.clamp(-CLIP_ACT, CLIP_ACT)


class Decoder(nn.Module):
    """Normalised latent -> normalised mel; the checkpoint's `decoder.*` keys."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        widths = [config.hidden_dim * m for m in config.ch_mult]
        upsample_levels = {i + 1 for i in config.down_layers}  # the level above each encoder downsample
        self.conv_in = MPConv1d(config.embed_dim, widths[-1], KERNEL_SIZE)
        self.mid = MidBlock(widths[-1])
        # up[i] runs at level i; the coarsest level (the last index) runs first, as in the checkpoint
        levels = []
        in_dim = widths[-1]
        for i in reversed(range(len(widths))):
            levels.append(
                UpLevel(
                    in_dim,
                    widths[i],
                    config.num_res_blocks + 1,
                    attn=i in config.attn_layers,
                    upsample=i in upsample_levels,
                )
            )
            in_dim = widths[i]
        self.up = nn.ModuleList(reversed(levels))
        self.conv_out = MPConv1d(widths[0], config.data_dim, KERNEL_SIZE)
        # scalar gain on the output (zero-initialised, used as 1 + gain)
        self.learnable_gain = nn.Parameter(torch.zeros([]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))  # (B, C_max, T)
        for level in reversed(self.up):
            h = level(h)  # (B, C_i, T * 2^k)
        # the convolution is linear and bias-free, so scaling its output equals scaling its weight
        return self.conv_out(mp_silu(h)) * (self.learnable_gain + 1)


class VAEDecoder(nn.Module):
    """Latent (B, embed_dim, T) -> log-mel (B, data_dim, T * 2 ** len(down_layers)), un-normalised.

    `data_mean`/`data_std` (1, data_dim, 1) come from the checkpoint; before
    loading they are the identity (0 and 1).
    """

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.register_buffer("data_mean", torch.zeros(1, config.data_dim, 1))
        self.register_buffer("data_std", torch.ones(1, config.data_dim, 1))
        self.decoder = Decoder(config)
        self.register_load_state_dict_pre_hook(VAEDecoder._load_hook)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        mel = self.decoder(z)  # (B, data_dim, 2T), normalised
        return mel * self.data_std + self.data_mean

    @staticmethod
    def _load_hook(module: "VAEDecoder", state_dict: dict, prefix: str, *args: Any) -> None:
        """Drop the encoder and fold the MP weight normalisation into every decoder weight.

        Runs once per `load_state_dict`: the incoming weights are the raw
        (unnormalised) checkpoint tensors, which is what the real files and the
        reference's `state_dict()` hold. Our own `state_dict()` holds folded
        weights, so it is not a checkpoint to load back (folding twice is not
        the identity).
        """
        dropped = [k for k in state_dict if k.startswith(prefix + "encoder.")]
        for k in dropped:
            del state_dict[k]
        if dropped:
            log.info("VAE: dropped %d encoder keys (%sencoder.*), unused for decoding", len(dropped), prefix)
        for name, m in module.named_modules():
            key = f"{prefix}{name}.weight"
            if isinstance(m, MPConv1d) and key in state_dict:
                state_dict[key] = fold_mp_weight(state_dict[key])
