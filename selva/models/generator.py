"""Flow-matching generator: an MMAudio-style multimodal DiT predicting the velocity of audio latents.

Three token streams take part: the audio latents, CLIP features (8 fps) and
CLIP text features. Joint blocks attend over the three concatenated streams,
each with its own weights; fused blocks then refine the latents alone. Every
block is modulated (adaLN) by a global condition (timestep + pooled CLIP and
text); the latent stream's condition also carries the sync features of the
text-conditioned Synchformer, upsampled to one per latent.

Sequence lengths are not part of the model: they come from the inputs (or the
`latent_len` argument), so one loaded network serves every duration. Rotary
tables depend only on lengths and are computed on demand, never stored.
"""

import logging
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selva.models.layers import ConvSwiGLU, SwiGLU
from selva.sequence import CLIP_FPS, SEGMENT_FRAMES, SEGMENT_STRIDE, SYNC_FPS, TOKENS_PER_SEGMENT

log = logging.getLogger(__name__)

ROPE_THETA = 10000
TIMESTEP_BASE = 10000  # the sinusoidal timestep embedding's frequency base
# Keys of the reference's derived (non-learned) tensors that some checkpoints hold.
DERIVED_KEYS = ("t_embed.freqs", "latent_rot", "clip_rot")


@dataclass(frozen=True)
class GeneratorConfig:
    latent_dim: int = 20  # audio latent channels (VAE embed_dim)
    clip_dim: int = 1024
    sync_dim: int = 768
    text_dim: int = 1024
    hidden_dim: int = 448
    depth: int = 12  # joint + fused blocks
    fused_depth: int = 8  # latent-only blocks after the joint ones
    num_heads: int = 7
    mlp_ratio: float = 4.0
    text_seq_len: int = 77  # length of the stored empty-string feature
    v2: bool = False  # MMAudio v2: SiLU input projections, timestep embedding of width hidden_dim

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GeneratorConfig":
        """Build from a reference hyper-parameter dict; unknown keys are ignored.

        The reference's latent/clip/sync sequence lengths are among the ignored
        keys: here they follow from the inputs of each call.
        """
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def __post_init__(self):
        if self.hidden_dim % self.num_heads or (self.hidden_dim // self.num_heads) % 2:
            raise ValueError(f"hidden_dim {self.hidden_dim} must split into {self.num_heads} even heads")
        if not 0 <= self.fused_depth < self.depth:
            raise ValueError(f"fused_depth {self.fused_depth} must be in [0, depth={self.depth})")

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.num_heads


_SMALL = dict(hidden_dim=448, num_heads=7, depth=12, fused_depth=8)
_MEDIUM = dict(hidden_dim=896, num_heads=14, depth=12, fused_depth=8)
_LARGE = dict(hidden_dim=896, num_heads=14, depth=21, fused_depth=14)
GENERATOR_PRESETS: dict[str, GeneratorConfig] = {
    "small_16k": GeneratorConfig(latent_dim=20, **_SMALL),
    "small_44k": GeneratorConfig(latent_dim=40, **_SMALL),
    "medium_44k": GeneratorConfig(latent_dim=40, **_MEDIUM),
    "large_44k": GeneratorConfig(latent_dim=40, **_LARGE),
    "large_44k_v2": GeneratorConfig(latent_dim=40, v2=True, **_LARGE),
}


@dataclass
class Conditions:
    """Per-clip conditioning, computed once and reused at every flow step."""

    clip_f: torch.Tensor  # (B, clip_len, D) CLIP tokens
    sync_f: torch.Tensor  # (B, latent_len, D) sync features, one per latent
    text_f: torch.Tensor  # (B, text_len, D) text tokens
    clip_f_c: torch.Tensor  # (B, D) pooled CLIP
    text_f_c: torch.Tensor  # (B, D) pooled text

    def expand(self, batch: int) -> "Conditions":
        """Broadcast batch-1 conditions to `batch` rows (a view, no copy)."""
        tensors = (getattr(self, f.name) for f in fields(self))
        return Conditions(*(t.expand(batch, *t.shape[1:]) for t in tensors))

    def cat(self, other: "Conditions") -> "Conditions":
        """Stack along the batch: `cond.cat(uncond)` runs both CFG branches in one forward."""
        return Conditions(*(torch.cat([getattr(self, f.name), getattr(other, f.name)]) for f in fields(self)))


def default_sync_len(clip_len: int) -> int:
    """The sync length of the clip whose CLIP length is `clip_len` (exact for durations in 1/8 s)."""
    frames = clip_len * SYNC_FPS // CLIP_FPS
    return ((frames - SEGMENT_FRAMES) // SEGMENT_STRIDE + 1) * TOKENS_PER_SEGMENT


# ---------------------------------------------------------------------------------------------------------
# Small pieces


class ChannelLastConv1d(nn.Conv1d):
    """Conv1d on (B, T, C) inputs; the weight keeps Conv1d's (out, in, k) layout of the checkpoints."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def rope_angles(length: int, head_dim: int, scale: float, device: torch.device) -> torch.Tensor:
    """(length, head_dim / 2, 2) cos/sin of the rotary angles, float32 (as in training).

    `scale` stretches the frequencies, so a shorter stream (CLIP at 8 fps)
    covers the same angles over the clip as the latents do.
    """
    pos = torch.arange(length, dtype=torch.float32, device=device)
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    freqs = (1.0 / ROPE_THETA**exponents) * scale
    angles = pos[:, None] * freqs[None]  # (N, hd / 2)
    return torch.stack([angles.cos(), angles.sin()], dim=-1)


@lru_cache(maxsize=32)
def rope_table(length: int, head_dim: int, scale: float, device: torch.device) -> torch.Tensor:
    """`rope_angles`, cached per length and device; never stored in the module."""
    # A cached table must stay usable outside the inference_mode call that may have created it.
    with torch.inference_mode(False):
        return rope_angles(length, head_dim, scale, device)


def rotary(length: int, head_dim: int, scale: float, device: torch.device) -> torch.Tensor:
    """The rotary table for a forward: cached when eager, computed in the graph when compiled
    (a compiled graph cannot consult a Python cache, and the table fuses into its first use)."""
    if torch.compiler.is_compiling():
        return rope_angles(length, head_dim, scale, device)
    return rope_table(length, head_dim, scale, device)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (2i, 2i + 1) of x (B, H, N, hd) by the table's angles."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (B, H, N, hd / 2, 2)
    x0, x1 = pairs.unbind(-1)
    cos, sin = table.unbind(-1)  # (N, hd / 2) each
    out = torch.stack([cos * x0 - sin * x1, sin * x0 + cos * x1], dim=-1)
    return out.flatten(-2).to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, H, N, hd) q, k, v -> (B, N, H * hd).

    SDPA's fused CUDA kernels (flash, memory-efficient) need each head's channels
    at stride 1, else it falls back to the slow math path. A fused block's v
    comes straight out of the interleaved qkv projection (channel stride 3), so
    it is copied here; q and k (normed, rotated) and the joint blocks'
    concatenations are contiguous already, and contiguous() leaves them as they are.
    """
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).flatten(2)


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of t in [0, 1] followed by an MLP."""

    def __init__(self, dim: int, freq_dim: int, max_period: float):
        super().__init__()
        self.freq_dim = freq_dim
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # Built in float32 on every call (a handful of values) with the reference's rounding: v2's
        # frequencies reach 1e4, where float32 rounding of the angles is already visible.
        exponents = torch.arange(0, self.freq_dim, 2, dtype=torch.float32, device=t.device) / self.freq_dim
        freqs = (TIMESTEP_BASE / self.max_period) * (1.0 / TIMESTEP_BASE**exponents)
        args = t.float()[:, None] * freqs[None]  # (B, freq_dim / 2)
        emb = torch.cat([args.cos(), args.sin()], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


# ---------------------------------------------------------------------------------------------------------
# Blocks


class SelfAttentionProj(nn.Module):
    """qkv projection with per-head RMS-normalised queries and keys (the attention runs in the caller)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(dim // num_heads)
        self.k_norm = nn.RMSNorm(dim // num_heads)

    def forward(
        self, x: torch.Tensor, rope: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # The checkpoints interleave q, k, v per channel: feature index = (head * hd + i) * 3 + {q,k,v}.
        qkv = self.qkv(x).unflatten(-1, (self.num_heads, -1, 3))  # (B, N, H, hd, 3)
        q, k, v = qkv.permute(4, 0, 2, 1, 3).unbind(0)  # (B, H, N, hd) each
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        return q, k, v


class DiTBlock(nn.Module):
    """adaLN-modulated transformer block, split around its attention so joint blocks can share one.

    `pre_only` blocks (the CLIP and text streams of the last joint block) only
    contribute keys and values: their outputs are never read again.
    Streams with `kernel_size > 1` (latent, CLIP) use convolutions over time in place of linear layers.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, *, kernel_size: int, pre_only: bool = False
    ):
        super().__init__()
        self.pre_only = pre_only
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = SelfAttentionProj(dim, num_heads)
        if not pre_only:
            if kernel_size == 1:
                self.linear1 = nn.Linear(dim, dim)
                self.ffn = SwiGLU(dim, int(dim * mlp_ratio))
            else:
                self.linear1 = ChannelLastConv1d(dim, dim, kernel_size, padding=kernel_size // 2)
                self.ffn = ConvSwiGLU(dim, int(dim * mlp_ratio), kernel_size=kernel_size)
            self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, (2 if pre_only else 6) * dim))

    def pre_attention(
        self, x: torch.Tensor, c: torch.Tensor, rope: torch.Tensor | None
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """x (B, N, D), c (B, 1 or N, D) -> (q, k, v), the modulation left for post_attention."""
        shift, scale, *rest = self.adaLN_modulation(c).chunk(2 if self.pre_only else 6, dim=-1)
        return self.attn(modulate(self.norm1(x), shift, scale), rope), tuple(rest)

    def post_attention(
        self, x: torch.Tensor, attn_out: torch.Tensor, mod: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        if self.pre_only:
            return x
        gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
        x = x + self.linear1(attn_out) * gate_msa
        return x + self.ffn(modulate(self.norm2(x), shift_mlp, scale_mlp)) * gate_mlp

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
        qkv, mod = self.pre_attention(x, c, rope)
        return self.post_attention(x, attention(*qkv), mod)


class JointBlock(nn.Module):
    """One attention over latent, CLIP and text tokens together, with per-stream weights."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, pre_only: bool):
        super().__init__()
        self.latent_block = DiTBlock(dim, num_heads, mlp_ratio, kernel_size=3)
        self.clip_block = DiTBlock(dim, num_heads, mlp_ratio, kernel_size=3, pre_only=pre_only)
        self.text_block = DiTBlock(dim, num_heads, mlp_ratio, kernel_size=1, pre_only=pre_only)

    def forward(
        self,
        latent: torch.Tensor,
        clip_f: torch.Tensor,
        text_f: torch.Tensor,
        global_c: torch.Tensor,
        extended_c: torch.Tensor,
        latent_rope: torch.Tensor,
        clip_rope: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # The latent stream is modulated per token (it carries the sync features); the others globally.
        x_qkv, x_mod = self.latent_block.pre_attention(latent, extended_c, latent_rope)
        c_qkv, c_mod = self.clip_block.pre_attention(clip_f, global_c, clip_rope)
        t_qkv, t_mod = self.text_block.pre_attention(text_f, global_c, None)  # text has no positions
        qkv = [torch.cat(p, dim=2) for p in zip(x_qkv, c_qkv, t_qkv, strict=True)]  # (B, H, N+Nc+Nt, hd)
        lengths = [latent.shape[1], clip_f.shape[1], text_f.shape[1]]
        x_out, c_out, t_out = attention(*qkv).split(lengths, dim=1)  # (B, N / Nc / Nt, D)
        latent = self.latent_block.post_attention(latent, x_out, x_mod)
        clip_f = self.clip_block.post_attention(clip_f, c_out, c_mod)
        text_f = self.text_block.post_attention(text_f, t_out, t_mod)
        return latent, clip_f, text_f


class FinalBlock(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.conv = ChannelLastConv1d(dim, out_dim, kernel_size=7, padding=3)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.conv(modulate(self.norm(x), shift, scale))


# ---------------------------------------------------------------------------------------------------------
# The network


def _input_projections(cfg: GeneratorConfig) -> dict[str, nn.Sequential]:
    """The four input projections; module indices follow the checkpoint keys of v1 and v2."""
    d, wide = cfg.hidden_dim, cfg.hidden_dim * 4
    act = nn.SiLU if cfg.v2 else nn.SELU
    # v2 adds a SiLU after the CLIP and text linear layers (shifting the MLP to index 2).
    mid = [nn.SiLU()] if cfg.v2 else []
    return {
        "audio_input_proj": nn.Sequential(
            ChannelLastConv1d(cfg.latent_dim, d, kernel_size=7, padding=3), act(), ConvSwiGLU(d, wide, 7)
        ),
        "clip_input_proj": nn.Sequential(nn.Linear(cfg.clip_dim, d), *mid, ConvSwiGLU(d, wide, 3)),
        "sync_input_proj": nn.Sequential(
            ChannelLastConv1d(cfg.sync_dim, d, kernel_size=7, padding=3), act(), ConvSwiGLU(d, wide, 3)
        ),
        "text_input_proj": nn.Sequential(nn.Linear(cfg.text_dim, d), *mid, SwiGLU(d, wide)),
    }


class Generator(nn.Module):
    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        cfg, d = config, config.hidden_dim
        for name, module in _input_projections(cfg).items():
            self.add_module(name, module)
        self.clip_cond_proj = nn.Linear(d, d)
        self.text_cond_proj = nn.Linear(d, d)
        self.global_cond_mlp = SwiGLU(d, d * 4)
        # One learned offset per position inside a Synchformer segment (8 tokens each).
        self.sync_pos_emb = nn.Parameter(torch.zeros(1, 1, TOKENS_PER_SEGMENT, cfg.sync_dim))
        self.final_layer = FinalBlock(d, cfg.latent_dim)
        if cfg.v2:
            self.t_embed = TimestepEmbedder(d, freq_dim=d, max_period=1)
        else:
            self.t_embed = TimestepEmbedder(d, freq_dim=256, max_period=10000)
        n_joint = cfg.depth - cfg.fused_depth
        self.joint_blocks = nn.ModuleList(
            JointBlock(d, cfg.num_heads, cfg.mlp_ratio, pre_only=i == n_joint - 1) for i in range(n_joint)
        )
        self.fused_blocks = nn.ModuleList(
            DiTBlock(d, cfg.num_heads, cfg.mlp_ratio, kernel_size=3) for _ in range(cfg.fused_depth)
        )
        # Data, not learned: latent statistics and the text encoder's features of "".
        self.register_buffer("latent_mean", torch.zeros(1, 1, cfg.latent_dim))
        self.register_buffer("latent_std", torch.ones(1, 1, cfg.latent_dim))
        self.register_buffer("empty_string_feat", torch.zeros(cfg.text_seq_len, cfg.text_dim))
        # Learned stand-ins for missing video, one vector repeated over the sequence.
        self.empty_clip_feat = nn.Parameter(torch.zeros(1, cfg.clip_dim))
        self.empty_sync_feat = nn.Parameter(torch.zeros(1, cfg.sync_dim))
        self.register_load_state_dict_pre_hook(Generator._load_hook)

    @staticmethod
    def _load_hook(module: "Generator", state_dict: dict, prefix: str, *args: Any) -> None:
        """Drop the derived tensors (timestep frequencies, rotary tables) some checkpoints hold."""
        dropped = [prefix + k for k in DERIVED_KEYS if prefix + k in state_dict]
        for k in dropped:
            del state_dict[k]
        if dropped:
            log.info("Generator: dropped derived keys %s (recomputed on the fly)", ", ".join(dropped))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """VAE latents (B, N, C) -> the unit-scale space the flow runs in."""
        return (x - self.latent_mean) / self.latent_std

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.latent_std + self.latent_mean

    def preprocess_conditions(
        self, clip_f: torch.Tensor, sync_f: torch.Tensor, text_f: torch.Tensor, *, latent_len: int
    ) -> Conditions:
        """clip_f (B, Nc, clip_dim), sync_f (B, Ns, sync_dim), text_f (B, Nt, text_dim) -> Conditions.

        Ns must be a whole number of 8-token segments; the sync features are
        stretched (nearest-exact) to `latent_len` tokens, one per latent.
        """
        if sync_f.shape[1] % TOKENS_PER_SEGMENT:
            raise ValueError(f"sync_f has {sync_f.shape[1]} tokens, not a multiple of {TOKENS_PER_SEGMENT}")
        sync_f = sync_f.unflatten(1, (-1, TOKENS_PER_SEGMENT)) + self.sync_pos_emb  # (B, S, 8, sync_dim)
        sync_f = self.sync_input_proj(sync_f.flatten(1, 2))  # (B, Ns, D)
        sync_f = F.interpolate(sync_f.transpose(1, 2), size=latent_len, mode="nearest-exact")
        sync_f = sync_f.transpose(1, 2)  # (B, latent_len, D)
        clip_f = self.clip_input_proj(clip_f)  # (B, Nc, D)
        text_f = self.text_input_proj(text_f)  # (B, Nt, D)
        return Conditions(
            clip_f=clip_f,
            sync_f=sync_f,
            text_f=text_f,
            clip_f_c=self.clip_cond_proj(clip_f.mean(dim=1)),
            text_f_c=self.text_cond_proj(text_f.mean(dim=1)),
        )

    def empty_conditions(
        self,
        batch: int,
        *,
        latent_len: int,
        clip_len: int,
        sync_len: int | None = None,
        negative_text_f: torch.Tensor | None = None,
    ) -> Conditions:
        """The unconditional branch: the learned empty CLIP and sync sequences, and as text
        `negative_text_f` (B or 1, Nt, text_dim) when given, else the stored empty-string feature.

        `sync_len` defaults to the length the sequence rules give for `clip_len`.
        """
        sync_len = default_sync_len(clip_len) if sync_len is None else sync_len
        clip = self.empty_clip_feat.expand(clip_len, -1)[None]  # (1, Nc, clip_dim)
        sync = self.empty_sync_feat.expand(sync_len, -1)[None]  # (1, Ns, sync_dim)
        text = self.empty_string_feat[None] if negative_text_f is None else negative_text_f
        # Text may have one row or `batch`: project CLIP/sync once, then broadcast everything.
        return self.preprocess_conditions(clip, sync, text, latent_len=latent_len).expand(batch)

    def forward(self, latent: torch.Tensor, t: torch.Tensor, conditions: Conditions) -> torch.Tensor:
        """Velocity of the normalised latents: latent (B, N, latent_dim), t (B,) or scalar in [0, 1]."""
        batch, latent_len, _ = latent.shape
        if conditions.sync_f.shape[1] != latent_len:
            raise ValueError(
                f"conditions were prepared for {conditions.sync_f.shape[1]} latents, got {latent_len}"
            )
        clip_len = conditions.clip_f.shape[1]
        head_dim, device = self.config.head_dim, latent.device
        latent_rope = rotary(latent_len, head_dim, 1.0, device)
        # CLIP positions are stretched so both streams span the same angles over the clip.
        clip_rope = rotary(clip_len, head_dim, latent_len / clip_len, device)

        t = t.expand(batch) if t.ndim == 0 else t
        global_c = self.global_cond_mlp(conditions.clip_f_c + conditions.text_f_c)  # (B, D)
        global_c = (self.t_embed(t) + global_c).unsqueeze(1)  # (B, 1, D)
        extended_c = global_c + conditions.sync_f  # (B, N, D)

        x = self.audio_input_proj(latent)  # (B, N, D)
        clip_f, text_f = conditions.clip_f, conditions.text_f
        for block in self.joint_blocks:
            x, clip_f, text_f = block(x, clip_f, text_f, global_c, extended_c, latent_rope, clip_rope)
        for block in self.fused_blocks:
            x = block(x, extended_c, latent_rope)
        # The final layer sees only the global condition, as the checkpoints were trained.
        return self.final_layer(x, global_c)  # (B, N, latent_dim)
