"""Every call the node pack makes into `SelvaPipeline`, in one place.

The nodes split the pipeline's recipe in two (sync features, then sampling)
and call its public steps, the same ones `SelvaPipeline.generate` calls, so a
span over 8 s runs in the app's windows. Keeping those calls here, and the
pipeline's limits and error classes the pack uses, means a change to the
pipeline's API (hook names, where errors live) is a change to this module only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from selva import spec
from selva.features import frame_chunks
from selva.loader import load_pipeline
from selva.pipeline import SelvaPipeline
from selva.sequence import SEGMENT_FRAMES, SEGMENT_STRIDE, SequenceLengths
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
    options = spec.LoadOptions(
        variant=variant,
        device=str(device) if device is not None else None,
        precision=precision,
        offload=offload,
        weights_dir=str(weights_dir) if weights_dir is not None else None,
    )
    pipe = load_pipeline(options)  # the one loader the app, the CLI and Ray use
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

    The pipeline's span rule (`selva.windows.resolve_span`), so a clip gets the same span here
    as in the app.
    """
    return pipe.resolve_duration(available, 0.0, duration)


@torch.inference_mode()
def sync_features(pipe: SelvaPipeline, frames: torch.Tensor, prompt: str) -> torch.Tensor:
    """uint8 frames (T, 3, 224, 224) at 25 fps -> TextSynch's sync features (1, S * 8, D) on the CPU.

    Chunk by chunk, as the pipeline reads a video: a long span is never all in float at once.
    """
    spec.check_prompt("prompt", prompt)
    segments = (frames.shape[0] - SEGMENT_FRAMES) // SEGMENT_STRIDE + 1
    chunks = frame_chunks(frames, segments)
    return pipe.encode_span(chunks, [pipe.encode_prompt(prompt)])[0].cpu()


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
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """One soundtrack (N,) float32 on the CPU from sync features, by the pipeline's own steps.

    The span is planned as a call plans it (spans over 8 s run in the same windows) and
    sampled with `SelvaPipeline.sample`, so the audio is the pipeline's for these frames.
    `on_step(done, total)` runs after each flow step, counted over every window pass; an
    exception it raises stops the generation there.
    """
    req, _ = pipe.check_inputs(
        spec.GenerationRequest(
            video="", prompt=prompt, negative_prompt=negative_prompt, steps=steps,
            cfg_strength=cfg_strength, seed=seed, duration=duration,
        )
    )  # fmt: skip
    span = pipe.plan_span(None, duration=duration)
    needed = lengths_for(pipe, span.duration).sync_len
    if sync.shape[1] < needed:
        raise InputError(
            f"the features hold {sync.shape[1]} sync tokens but {duration:.2f} s needs {needed}; "
            "extract features from a longer span"
        )
    positive, negative_clip = pipe.encode_prompts(prompt, negative_prompt)

    def step_end(p: SelvaPipeline, i: int, t: float, state: dict) -> None:
        if on_step is not None:
            on_step(state["pass"] * steps + i + 1, state["passes"] * steps)

    # TextSynch sees each 16-frame segment on its own, so the first tokens of a longer span are
    # exactly the tokens of a shorter one.
    audio = pipe.sample(
        sync[:, :needed],
        positive.clip,
        negative_clip,
        windows=span.windows,
        steps=steps,
        cfg_strength=cfg_strength,
        seed=req.seed,
        callback_on_step_end=step_end,
    )
    return audio[0]
