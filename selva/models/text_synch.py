"""TextSynch: a text-conditioned Synchformer video encoder -> sync features.

SelVA's video encoder is Synchformer's MotionFormer (a ViT-B/16 over 16-frame
segments, divided space-time attention) with text spliced in: after the last
block and its norm, every patch token of a segment cross-attends to the
projected T5 features (with a few learned "supplementary" tokens in front),
so the features keep only the motion the prompt is about. A small transformer
layer then pools each temporal slice's 14x14 patches into one token through
its own cls token, leaving 8 features per segment.

Data flow for video (B, T, 3, 224, 224) and text (B, L, text_dim):

    segments of 16 frames, stride 8     (B*S, 3, 16, 224, 224)
    3-D patch embed + cls + pos/temp     (B*S, 1 + 8*14*14, D)
    depth x divided space-time blocks    (B*S, 1 + 8*14*14, D)
    drop cls, norm                       (B*S, 8*14*14, D)
    cross-attention to the text          (B*S, 8*14*14, D)
    spatial cls pooling                  (B*S, 8, D) -> (B, S*8, D)

The reference runs one segment per call; here all segments of all batch items
go through the encoder together (optionally in chunks to bound memory). Every
stage acts on one segment at a time, so batching changes nothing but speed.
"""

import logging
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selva.models.layers import SwiGLU

log = logging.getLogger(__name__)

# checkpoint prefixes the encoder needs; the real file holds more (training leftovers)
CHECKPOINT_PREFIXES = (
    "vfeat_extractor",
    "text_proj",
    "synch_text_cross_blocks",
    "sup_text_feat",
    "empty_string_feat",
)
VIT_LN_EPS = 1e-6  # MotionFormer and its pooling layer; the cross-attention blocks use torch's 1e-5


@dataclass(frozen=True)
class MotionFormerConfig:
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: int = 4
    patch_size: int = 16
    patch_size_temp: int = 2  # frames per temporal patch
    img_size: int = 224
    num_frames: int = 16  # frames per segment

    @property
    def grid(self) -> int:  # patches per side
        return self.img_size // self.patch_size

    @property
    def num_temporal(self) -> int:  # temporal patches per segment: features per segment
        return self.num_frames // self.patch_size_temp


@dataclass(frozen=True)
class TextSynchConfig:
    text_dim: int = 768  # T5 hidden size (flan-t5-base)
    num_sup_text_tokens: int = 5  # learned tokens prepended to the text
    xattn_depth: int = 1  # text cross-attention blocks
    segment_stride: int = 8  # frames between segment starts (segments are motionformer.num_frames long)
    motionformer: MotionFormerConfig = field(default_factory=MotionFormerConfig)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TextSynchConfig":
        """Build from a reference hyper-parameter dict; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        if isinstance(kwargs.get("motionformer"), dict):
            mf_names = {f.name for f in fields(MotionFormerConfig)}
            mf = {k: v for k, v in kwargs["motionformer"].items() if k in mf_names}
            kwargs["motionformer"] = MotionFormerConfig(**mf)
        return cls(**kwargs)


TEXT_SYNCH_PRESETS: dict[str, TextSynchConfig] = {
    "sup_5": TextSynchConfig(text_dim=768, num_sup_text_tokens=5, xattn_depth=1),
}


# ---------------------------------------------------------------------------
# MotionFormer (the video encoder)
# ---------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """A strided convolution that cuts the input into non-overlapping patches."""

    def __init__(self, conv: type[nn.Conv2d] | type[nn.Conv3d], in_chans: int, dim: int, patch: tuple):
        super().__init__()
        self.proj = conv(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, t*h*w, D), time-major


class DividedAttention(nn.Module):
    """Self-attention along one axis of a (cls + frames x patches) sequence.

    Over "time" each patch attends to itself in the other frames, over "space"
    each frame's patches attend to each other; in both cases the cls token is
    an extra key for every group, and the cls query attends to all tokens.
    """

    def __init__(self, dim: int, num_heads: int, over: str):
        super().__init__()
        assert over in ("time", "space")
        self.num_heads = num_heads
        self.over = over
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        B, L, C = x.shape
        H = self.num_heads
        N = (L - 1) // frames  # patches per frame
        qkv = self.qkv(x).view(B, L, 3, H, C // H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, L, hs)

        cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # (B, H, 1, hs)

        # regroup the patch tokens: time -> (B*N, H, F, hs), space -> (B*F, H, N, hs)
        G = N if self.over == "time" else frames

        def group(t: torch.Tensor) -> torch.Tensor:
            t = t[:, :, 1:].reshape(B, H, frames, N, -1)  # (B, H, F, N, hs)
            t = t.permute(0, 3, 1, 2, 4) if self.over == "time" else t.permute(0, 2, 1, 3, 4)
            return t.reshape(B * G, H, -1, t.shape[-1])

        def with_cls(t: torch.Tensor) -> torch.Tensor:
            cls = t[:, :, :1].unsqueeze(1).expand(B, G, H, 1, -1).reshape(B * G, H, 1, -1)
            return torch.cat([cls, group(t)], dim=2)

        out = F.scaled_dot_product_attention(group(q), with_cls(k), with_cls(v))
        out = out.view(B, G, H, -1, out.shape[-1])  # time (B, N, H, F, hs), space (B, F, H, N, hs)
        out = out.permute(0, 3, 1, 2, 4) if self.over == "time" else out.permute(0, 1, 3, 2, 4)
        out = out.reshape(B, L - 1, C)
        cls_out = cls_out.transpose(1, 2).reshape(B, 1, C)
        return self.proj(torch.cat([cls_out, out], dim=1))


class ViTMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class DividedSpaceTimeBlock(nn.Module):
    """Pre-norm block: attention over time, then over space, then the MLP, each residual."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int):
        super().__init__()
        # norm3 feeds time attention, norm1 space attention, norm2 the MLP (the checkpoint's names)
        self.norm3 = nn.LayerNorm(dim, eps=VIT_LN_EPS)
        self.timeattn = DividedAttention(dim, num_heads, over="time")
        self.norm1 = nn.LayerNorm(dim, eps=VIT_LN_EPS)
        self.attn = DividedAttention(dim, num_heads, over="space")
        self.norm2 = nn.LayerNorm(dim, eps=VIT_LN_EPS)
        self.mlp = ViTMLP(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        x = x + self.timeattn(self.norm3(x), frames)
        x = x + self.attn(self.norm1(x), frames)
        return x + self.mlp(self.norm2(x))


class PackedSelfAttention(nn.Module):
    """nn.MultiheadAttention's weights (packed in_proj, out_proj), applied with SDPA."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor) -> torch.Tensor:
        B, Lq, C = x_q.shape
        H = self.num_heads
        w_q, w_kv = self.in_proj_weight.split([C, 2 * C])
        b_q, b_kv = self.in_proj_bias.split([C, 2 * C])
        q = F.linear(x_q, w_q, b_q).view(B, Lq, H, C // H).transpose(1, 2)  # (B, H, Lq, hs)
        k, v = F.linear(x_kv, w_kv, b_kv).view(B, -1, 2, H, C // H).permute(2, 0, 3, 1, 4)  # (B, H, L, hs)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, Lq, C)
        return self.out_proj(out)


class SpatialPooling(nn.Module):
    """A pre-norm transformer-encoder layer over one frame's patches plus a cls token; returns the cls.

    Only the cls row is returned and the MLP is per token, so only the cls
    query is computed: the other rows' outputs would be thrown away.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.self_attn = PackedSelfAttention(dim, num_heads)
        self.linear1 = nn.Linear(dim, dim * mlp_ratio)
        self.linear2 = nn.Linear(dim * mlp_ratio, dim)
        self.norm1 = nn.LayerNorm(dim, eps=VIT_LN_EPS)
        self.norm2 = nn.LayerNorm(dim, eps=VIT_LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, N, D) patches of one temporal slice
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        h = self.norm1(torch.cat([cls, x], dim=1))  # (B, 1+N, D)
        cls = cls + self.self_attn(h[:, :1], h)  # (B, 1, D)
        cls = cls + self.linear2(F.gelu(self.linear1(self.norm2(cls))))
        return cls[:, 0]  # (B, D)


class MotionFormer(nn.Module):
    """ViT with divided space-time attention over one 16-frame segment (`vfeat_extractor`)."""

    def __init__(self, cfg: MotionFormerConfig):
        super().__init__()
        self.cfg = cfg
        D, p = cfg.embed_dim, cfg.patch_size
        # the 2-D patch embed is never used (the 3-D one tokenises) but the checkpoint holds it
        self.patch_embed = PatchEmbed(nn.Conv2d, 3, D, (p, p))
        self.patch_embed_3d = PatchEmbed(nn.Conv3d, 3, D, (cfg.patch_size_temp, p, p))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid**2 + 1, D))  # cls + spatial, shared by frames
        self.temp_embed = nn.Parameter(torch.zeros(1, cfg.num_temporal, D))  # one per temporal patch
        self.blocks = nn.ModuleList(
            [DividedSpaceTimeBlock(D, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)]
        )
        self.norm = nn.LayerNorm(D, eps=VIT_LN_EPS)
        self.spatial_attn_agg = SpatialPooling(D, cfg.num_heads, cfg.mlp_ratio)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Segments (B, 3, num_frames, H, W) -> normed patch tokens (B, t*h*w, D), no cls."""
        B = x.shape[0]
        t = self.cfg.num_temporal
        x = self.patch_embed_3d(x)  # (B, t*h*w, D)
        # patch (f, n) gets spatial embedding n + temporal embedding f; the cls gets pos_embed[0]
        pos = self.pos_embed[:, 1:].unsqueeze(1) + self.temp_embed.unsqueeze(2)  # (1, t, h*w, D)
        x = x + pos.flatten(1, 2)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + t*h*w, D)
        for block in self.blocks:
            x = block(x, frames=t)
        return self.norm(x[:, 1:])

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, t*h*w, D) -> one token per temporal patch (B, t, D)."""
        B, _, D = x.shape
        t = self.cfg.num_temporal
        x = self.spatial_attn_agg(x.reshape(B * t, -1, D))  # (B*t, D)
        return x.view(B, t, D)


# ---------------------------------------------------------------------------
# Text conditioning
# ---------------------------------------------------------------------------


class CrossAttention(nn.Module):
    """Queries from the video, keys/values from the text, per-head RMSNorm on q and k."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(dim, 2 * dim)
        self.q_norm = nn.RMSNorm(dim // num_heads)
        self.k_norm = nn.RMSNorm(dim // num_heads)

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        H, hs = self.num_heads, C // self.num_heads
        q = self.q_proj(x).view(B, N, H, hs).transpose(1, 2)  # (B, H, N, hs)
        # kv_proj interleaves k and v per channel: its output is laid out (H, hs, 2)
        kv = self.kv_proj(text).view(B, -1, H, hs, 2)
        k, v = kv.permute(4, 0, 2, 1, 3)  # each (B, H, L, hs), channel stride 2
        # SDPA's fused CUDA kernels need channel stride 1 (the norm copies k anyway); v is a few tokens.
        q, k, v = self.q_norm(q), self.k_norm(k), v.contiguous()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=text_mask[:, None, None, :])
        return out.transpose(1, 2).reshape(B, N, C)


class TextCrossBlock(nn.Module):
    """x + norm1(linear1(cross_attn(x, text))), then x + ffn(norm2(x)).

    The attention branch is normalised *after* its projection (the reference
    initialises norm1 to zero so the block starts as the identity).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, num_heads)
        self.linear1 = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = SwiGLU(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.norm1(self.linear1(self.attn(x, text, text_mask)))
        return x + self.ffn(self.norm2(x))


# ---------------------------------------------------------------------------
# TextSynch
# ---------------------------------------------------------------------------


class TextSynch(nn.Module):
    """Video (B, T, 3, 224, 224) in [-1, 1] + T5 features -> sync features (B, S*8, D)."""

    def __init__(self, config: TextSynchConfig):
        super().__init__()
        self.config = config
        mf = config.motionformer
        D = mf.embed_dim
        self.vfeat_extractor = MotionFormer(mf)
        # Linear, SiLU, SwiGLU: indices 0 and 2 are the checkpoint's names
        self.text_proj = nn.Sequential(nn.Linear(config.text_dim, D), nn.SiLU(), SwiGLU(D, 4 * D))
        self.synch_text_cross_blocks = nn.ModuleList(
            [TextCrossBlock(D, mf.num_heads, mf.mlp_ratio) for _ in range(config.xattn_depth)]
        )
        if config.num_sup_text_tokens > 0:
            self.sup_text_feat = nn.Parameter(torch.zeros(config.num_sup_text_tokens, config.text_dim))
        # the T5 features standing for an empty prompt (learned)
        self.empty_string_feat = nn.Parameter(torch.zeros(1, config.text_dim), requires_grad=False)
        self.register_load_state_dict_pre_hook(TextSynch._load_hook)

    @property
    def dtype(self) -> torch.dtype:
        return self.empty_string_feat.dtype

    def num_segments(self, num_frames: int) -> int:
        mf, stride = self.config.motionformer, self.config.segment_stride
        return (num_frames - mf.num_frames) // stride + 1

    def prepend_sup_tokens(
        self, text_f: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, text_dim), (B, L) -> (B, n_sup + L, text_dim), (B, n_sup + L); sup tokens always kept."""
        if self.config.num_sup_text_tokens == 0:
            return text_f, text_mask
        B = text_f.shape[0]
        sup = self.sup_text_feat.to(text_f.dtype).unsqueeze(0).expand(B, -1, -1)
        sup_mask = torch.ones(B, sup.shape[1], dtype=text_mask.dtype, device=text_mask.device)
        return torch.cat([sup, text_f], dim=1), torch.cat([sup_mask, text_mask], dim=1)

    def forward(
        self,
        video: torch.Tensor,
        text_f: torch.Tensor,
        text_mask: torch.Tensor,
        *,
        segment_chunk: int | None = None,
    ) -> torch.Tensor:
        """Sync features (B, S*8, D) for video (B, T, 3, 224, 224) in [-1, 1].

        `text_f` (B, L, text_dim) are the raw T5 features and `text_mask` (B, L)
        their attention mask (True = token); the supplementary tokens are
        prepended here. Inputs are cast to the weights' dtype. All B*S segments
        run as one batch unless `segment_chunk` bounds how many run at once.
        """
        self._check_inputs(video, text_f, text_mask, segment_chunk)
        mf = self.config.motionformer
        B, T = video.shape[:2]
        S = self.num_segments(T)
        video, text_f = video.to(self.dtype), text_f.to(self.dtype)

        text_f, text_mask = self.prepend_sup_tokens(text_f, text_mask.bool())
        text = self.text_proj(text_f)  # (B, L', D)

        # a strided view (B, S, 3, F, H, W), copied only chunk by chunk (segments overlap in memory)
        segments = video.unfold(1, mf.num_frames, self.config.segment_stride).permute(0, 1, 2, 5, 3, 4)

        chunk = segment_chunk or B * S
        out = []
        for start in range(0, B * S, chunk):
            rows = torch.arange(start, min(start + chunk, B * S), device=video.device)  # (b, s) flattened
            item, seg = rows // S, rows % S
            # each segment sees its own item's text
            out.append(self.encode_segments(segments[item, seg], text[item], text_mask[item]))  # (n, t, D)
        return torch.cat(out).view(B, S * mf.num_temporal, mf.embed_dim)  # (B, S*t, D)

    def encode_segments(
        self, segments: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        """Segments (n, 3, F, H, W), projected text (n, L', D) and mask (n, L') -> features (n, t, D).

        The whole network for a batch of segments, apart from the Python that
        cuts and batches them: the unit `selva.compile` compiles.
        """
        x = self.vfeat_extractor.encode(segments)  # (n, t*h*w, D)
        for block in self.synch_text_cross_blocks:
            x = block(x, text, text_mask)
        return self.vfeat_extractor.pool(x)  # (n, t, D)

    def _check_inputs(
        self, video: torch.Tensor, text_f: torch.Tensor, text_mask: torch.Tensor, segment_chunk: int | None
    ) -> None:
        mf = self.config.motionformer
        size = mf.img_size
        if video.ndim != 5 or tuple(video.shape[2:]) != (3, size, size):
            raise ValueError(f"video must be (B, T, 3, {size}, {size}), got {tuple(video.shape)}")
        if video.shape[1] < mf.num_frames:
            raise ValueError(f"video needs at least {mf.num_frames} frames, got {video.shape[1]}")
        B = video.shape[0]
        if text_f.ndim != 3 or text_f.shape[0] != B or text_f.shape[2] != self.config.text_dim:
            raise ValueError(f"text_f must be ({B}, L, {self.config.text_dim}), got {tuple(text_f.shape)}")
        if tuple(text_mask.shape) != tuple(text_f.shape[:2]):
            raise ValueError(f"text_mask must be {tuple(text_f.shape[:2])}, got {tuple(text_mask.shape)}")
        if segment_chunk is not None and segment_chunk < 1:
            raise ValueError(f"segment_chunk must be a positive int or None, got {segment_chunk}")

    @staticmethod
    def _load_hook(module: "TextSynch", state_dict: dict, prefix: str, *args: Any) -> None:
        """Keep only the encoder's keys: the released file may hold more (other training modules)."""
        keep = tuple(prefix + p for p in CHECKPOINT_PREFIXES)
        dropped = [k for k in state_dict if k.startswith(prefix) and not k.startswith(keep)]
        for k in dropped:
            del state_dict[k]
        if dropped:
            shown = ", ".join(dropped[:8]) + (", ..." if len(dropped) > 8 else "")
            log.info("TextSynch: dropped %d checkpoint keys not used by the encoder: %s", len(dropped), shown)
