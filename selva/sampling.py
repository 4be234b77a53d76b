"""Euler sampling of a flow-matching model, from noise (t = 0) to data (t = 1).

The model predicts a velocity v(x, t); each step moves x by (t_next - t) * v.
Classifier-free guidance is mixed by the caller before the step, so this
module knows nothing about networks or conditions:

    ts = timesteps(steps)
    for t, t_next in zip(ts[:-1], ts[1:]):
        v = ...  # e.g. cfg * v_cond + (1 - cfg) * v_uncond
        x = euler_step(x, v, t, t_next)
"""

import torch


def timesteps(steps: int) -> torch.Tensor:
    """`steps + 1` evenly spaced times from 0 to 1 (float32, on the CPU)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(0.0, 1.0, steps + 1)


def euler_step(
    x: torch.Tensor, v: torch.Tensor, t: float | torch.Tensor, t_next: float | torch.Tensor
) -> torch.Tensor:
    """One explicit Euler step of dx/dt = v from t to t_next."""
    return x + float(t_next - t) * v
