"""`benchmarks.gpu`'s check against the CPU: each stage on the device from the CPU's float32 inputs,
compared by relative L2 distance with the CPU's own output."""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

from .bench import PROMPT
from .gpu_stages import CFG_STRENGTH, lengths_of, one_window_noise, read_sync_frames


def cpu_reference(
    variant: Any, weights: Path, clip: Path, *, steps: int, duration: float, seed: int = 1
) -> dict[str, Any]:
    """Every stage's inputs and outputs from a float32 pipeline on the CPU, on the same weights."""
    import torch

    from selva.pipeline import SelvaPipeline

    ref = SelvaPipeline.from_pretrained(variant, device="cpu", dtype="fp32", weights_dir=weights)
    ref.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    with torch.inference_mode():
        n = lengths_of(ref, clip, duration)
        frames = read_sync_frames(clip, n)
        feats = ref.encode_prompt(PROMPT)
        sync_f = ref.encode_video(frames.unsqueeze(0), feats.t5, feats.t5_mask)
        cond, uncond = ref.prepare_conditions(sync_f, feats.clip, None, num_samples=1, lengths=n)
        latent = ref.denoise(
            one_window_noise(ref, n, seed), cond, uncond, steps=steps, cfg_strength=CFG_STRENGTH
        )
        mel = ref.decode_latents(latent)
        audio = ref.vocode(mel)
    seconds = time.perf_counter() - start
    del ref
    gc.collect()
    return {
        "lengths": n,
        "seed": seed,
        "steps": steps,
        "frames": frames,
        "prompt": feats,
        "sync_features": sync_f,
        "latent": latent,
        "mel": mel,
        "audio": audio,
        "cpu_s": seconds,
    }


def relative_l2(ours: Any, expected: Any) -> float:
    ours = ours.detach().float().cpu()
    return float((ours - expected).norm() / expected.norm().clamp_min(1e-12))


def check_against(pipe: Any, ref: dict[str, Any], *, tolerance: float) -> dict[str, Any]:
    """Each stage on `pipe` from the CPU's inputs to that stage, against the CPU's output."""
    import torch

    dev, n, feats = pipe.device, ref["lengths"], ref["prompt"]
    with torch.inference_mode():
        sync_f = pipe.encode_video(ref["frames"].unsqueeze(0), feats.t5, feats.t5_mask)
        cond, uncond = pipe.prepare_conditions(
            ref["sync_features"].to(dev), feats.clip.to(dev), None, num_samples=1, lengths=n
        )
        x0 = one_window_noise(pipe, n, ref["seed"])
        latent = pipe.denoise(x0, cond, uncond, steps=ref["steps"], cfg_strength=CFG_STRENGTH)
        mel = pipe.decode_latents(ref["latent"].to(dev))
        audio = pipe.vocode(ref["mel"].to(dev))
    stages = {}
    for name, ours in (("sync_features", sync_f), ("latent", latent), ("mel", mel), ("audio", audio)):
        rel = relative_l2(ours, ref[name])
        stages[name] = {"rel_l2": rel, "ok": rel <= tolerance}
    return {
        "tolerance": tolerance,
        "stages": stages,
        "all_ok": all(s["ok"] for s in stages.values()),
        "cpu_reference_s": ref["cpu_s"],
    }
