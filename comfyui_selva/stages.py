"""Every call the node pack makes into `SelvaPipeline`, in one place.

The nodes split the pipeline's recipe in two (sync features, then sampling)
and drive its stage methods themselves. Keeping those calls here, and the
pipeline's limits and error classes the pack uses, means a change to the
pipeline's API (hook names, where errors live) is a change to this module only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from selva import spec
from selva.loading import release_freed_memory
from selva.pipeline import SelvaPipeline
from selva.sequence import SequenceLengths
from selva.spec import CFG_STRENGTH, InputError, WeightsError

__all__ = [
    "CFG_STRENGTH", "MAX_DURATION", "MAX_SEED", "MAX_STEPS", "InputError", "SelvaPipeline", "WeightsError",
]  # fmt: skip

MAX_DURATION = spec.DEFAULT_MAX_DURATION  # what from_pretrained allows unless told otherwise
MAX_SEED = int(spec.SEED.maximum)
MAX_STEPS = int(spec.STEPS.maximum)


def load(
    variant: str,
    *,
    device: torch.device | None,
    precision: str,
    offload: str,
    weights_dir: Path | None,
) -> SelvaPipeline:
    pipe = SelvaPipeline.from_pretrained(
        variant, device=device, dtype=precision, offload=offload, weights_dir=weights_dir
    )
    # ComfyUI draws its own bar on the node; a second one in the console per step is noise.
    pipe.set_progress_bar_config(disable=True)
    return pipe


def text_synch_id(pipe: SelvaPipeline) -> str:
    """Names the video encoder checkpoint, so features are never mixed across encoders."""
    f = pipe.variant.text_synch_file
    return f"{f.repo}/{f.path}@{f.md5}"


def lengths_for(pipe: SelvaPipeline, duration: float) -> SequenceLengths:
    return SequenceLengths.from_duration(
        duration, sample_rate=pipe.variant.sample_rate, hop_length=pipe.variant.hop_length
    )


def settle_duration(pipe: SelvaPipeline, available: float, duration: float | None) -> float:
    """The span to use from `available` seconds of frames: as asked, or the pipeline's default.

    The rules (at most 8 s when automatic, at least 16 frames at 25 fps) are the
    pipeline's, so a clip gets the same span here as in the app.
    """
    if duration is not None and duration > pipe.max_duration:
        raise InputError(
            f"duration {duration:.2f} s is over the limit of {pipe.max_duration:.0f} s; pick a shorter span"
        )
    return pipe.resolve_duration(available, 0.0, duration)


@torch.inference_mode()
def sync_features(pipe: SelvaPipeline, frames: torch.Tensor, prompt: str) -> torch.Tensor:
    """uint8 frames (T, 3, 224, 224) at 25 fps -> TextSynch's sync features (1, S * 8, D) on the CPU."""
    spec.check_prompt("prompt", prompt)
    text = pipe.encode_prompt(prompt)
    return pipe.encode_video(frames.unsqueeze(0), text.t5, text.t5_mask).cpu()


@torch.inference_mode()
def generate(
    pipe: SelvaPipeline,
    sync: torch.Tensor,
    *,
    prompt: str,
    negative_prompt: str,
    duration: float,
    steps: int,
    cfg_strength: float,
    seed: int,
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """One soundtrack (N,) float32 on the CPU from sync features, as `SelvaPipeline.__call__` makes it.

    `on_step(i)` runs after flow step i (1-based); an exception it raises stops
    the generation there.
    """
    spec.GenerationRequest(
        video="", prompt=prompt, negative_prompt=negative_prompt, steps=steps,
        cfg_strength=cfg_strength, seed=seed, duration=duration,
    ).checked(max_duration=pipe.max_duration)  # fmt: skip
    lengths = lengths_for(pipe, duration)
    if sync.shape[1] < lengths.sync_len:
        raise InputError(
            f"the features hold {sync.shape[1]} sync tokens but {duration:.2f} s needs {lengths.sync_len}; "
            "extract features from a longer span"
        )
    positive, negative_clip = pipe.encode_prompts(prompt, negative_prompt)
    # TextSynch sees each 16-frame segment on its own, so the first tokens of a longer span are
    # exactly the tokens of a shorter one.
    sync_f = sync[:, : lengths.sync_len].to(pipe.device)
    x0 = pipe.prepare_latents(1, lengths.latent_len, seed)
    cond, uncond = pipe.prepare_conditions(
        sync_f, positive.clip, negative_clip, num_samples=1, lengths=lengths
    )
    def step_end(p: SelvaPipeline, i: int, t: float, state: dict) -> None:
        if on_step is not None:
            on_step(i + 1)

    latent = pipe.denoise(
        x0, cond, uncond, steps=steps, cfg_strength=cfg_strength, callback_on_step_end=step_end
    )
    audio = pipe.vocode(pipe.decode_latents(latent))
    audio = audio[0, : round(duration * pipe.sample_rate)].float().cpu().clamp(-1, 1)
    release_freed_memory()  # as the pipeline does: the vocoder's activations are large
    return audio
