"""Small blocks shared by more than one network."""

import torch
import torch.nn.functional as F
from torch import nn


def swiglu_width(width: int, multiple_of: int = 256) -> int:
    """Hidden width of a gated MLP, as the checkpoints store it.

    A SwiGLU has three matrices instead of two, so its nominal width is cut to
    2/3 (keeping the parameter count of a plain MLP) and rounded up to a
    multiple of `multiple_of`.
    """
    width = int(2 * width / 3)
    return multiple_of * ((width + multiple_of - 1) // multiple_of)


class SwiGLU(nn.Module):
    """Gated MLP: w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, dim: int, width: int, multiple_of: int = 256):
        super().__init__()
        hidden = swiglu_width(width, multiple_of)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class ConvSwiGLU(nn.Module):
    """SwiGLU whose matrices are 1-D convolutions over time, on (B, T, C) inputs."""

    def __init__(self, dim: int, width: int, kernel_size: int = 3, multiple_of: int = 256):
        super().__init__()
        hidden = swiglu_width(width, multiple_of)
        pad = kernel_size // 2
        self.w1 = nn.Conv1d(dim, hidden, kernel_size, padding=pad, bias=False)
        self.w2 = nn.Conv1d(hidden, dim, kernel_size, padding=pad, bias=False)
        self.w3 = nn.Conv1d(dim, hidden, kernel_size, padding=pad, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # (B, C, T)
        x = self.w2(F.silu(self.w1(x)) * self.w3(x))
        return x.transpose(1, 2)  # (B, T, C)
