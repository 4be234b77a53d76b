"""The three SelVA nodes: load a model, extract a clip's sync features, sample audio.

They follow ComfyUI's node contract (`INPUT_TYPES`, `RETURN_TYPES`, `FUNCTION`,
`CATEGORY`; see ComfyUI's nodes.py) and its data layouts: IMAGE is a float
(frames, height, width, channels) tensor in [0, 1], AUDIO a dict holding a
float `waveform` (batch, channels, samples) and its `sample_rate`.

Extraction and sampling are two nodes because they depend on different
inputs: a new seed, step count, CFG strength or negative prompt re-runs only
the sampler, and ComfyUI keeps the features (TextSynch is the slow part).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from selva.device import OFFLOAD_STRATEGIES
from selva.variants import known_variants

from . import features as cache
from . import frames, host, loader, stages
from .features import SelvaFeatures
from .stages import CFG_STRENGTH, MAX_DURATION, MAX_SEED, MAX_STEPS, InputError, SelvaPipeline

log = logging.getLogger(__name__)

CATEGORY = "audio/SelVA"
DEFAULT_VARIANT = "medium_44k"
PRECISIONS = ("bf16", "fp16", "fp32")
DEFAULT_FPS = 30.0


def _input(kind: str | list[str], tooltip: str, **options: Any) -> tuple[str | list[str], dict[str, Any]]:
    """One input of a node as ComfyUI reads it: its type (or list of choices) and its options."""
    return (kind, {**options, "tooltip": tooltip})


def _text_input(tooltip: str) -> tuple[str | list[str], dict[str, Any]]:
    """A prompt box: several lines, empty at first."""
    return _input("STRING", tooltip, multiline=True, default="")


def _seconds_input(tooltip: str) -> tuple[str | list[str], dict[str, Any]]:
    """A span in seconds; 0 stands for "as long as the input"."""
    return _input("FLOAT", tooltip, default=0.0, min=0.0, max=MAX_DURATION, step=0.01)


class SelvaModelLoader:
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, Any]]:
        # Read at call time: SELVA_VARIANTS_FILE may name extra variants (the tests' tiny ones).
        names = list(known_variants())
        default = DEFAULT_VARIANT if DEFAULT_VARIANT in names else names[0]
        return {
            "required": {
                "variant": _input(
                    names,
                    "small_16k: 16 kHz audio; small/medium/large_44k: 44.1 kHz, larger generators are "
                    "slower and sound better. Weights: models/selva/.",
                    default=default,
                ),
                "precision": _input(
                    list(PRECISIONS),
                    "bf16 where the device has it (replaced by fp16 on GPUs without it); fp32 doubles "
                    "the memory.",
                    default="bf16",
                ),
                "offload": _input(
                    list(OFFLOAD_STRATEGIES),
                    "offload_to_cpu keeps the text encoders and the vocoder on the CPU until they run; "
                    "auto does so when the GPU is small.",
                    default="auto",
                ),
            }
        }

    RETURN_TYPES = ("SELVA_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("SelVA's networks and text encoders, loaded once and reused.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads a SelVA text-conditioned video-to-audio model from models/selva/."

    def load(self, variant: str, precision: str, offload: str) -> tuple[SelvaPipeline]:
        return (loader.load_model(variant, precision, offload),)


class SelvaFeatureExtractor:
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, Any]]:
        return {
            "required": {
                "model": _input("SELVA_MODEL", "From SelVA Model Loader."),
                "images": _input("IMAGE", "The video's frames, e.g. from Get Video Components."),
                "prompt": _text_input(
                    "The sound to generate, e.g. 'dog barking'. It chooses which visible source the "
                    "audio follows."
                ),
                "fps": _input(
                    "FLOAT",
                    "The frame rate of images: connect the fps output of Get Video Components. Frames "
                    "are resampled to 25 fps by time.",
                    default=DEFAULT_FPS,
                    min=0.01,
                    max=1000.0,
                    step=0.001,
                ),
                "duration": _seconds_input(
                    "Seconds from the first frame; 0 = the whole clip. Spans over 8 s (SelVA's training "
                    "length) run in overlapping 8 s windows, as in the app."
                ),
                "cache_dir": _input(
                    "STRING",
                    "Folder for cached features (one small file per clip and prompt); empty = the "
                    "system's temp folder.",
                    default="",
                ),
            },
            "optional": {
                "video_info": _input(
                    "VHS_VIDEOINFO",
                    "Video Helper Suite's video_info; when connected, its loaded_fps is used.",
                ),
            },
        }

    RETURN_TYPES = ("SELVA_FEATURES", "FLOAT")
    RETURN_NAMES = ("features", "duration")
    OUTPUT_TOOLTIPS = (
        "TextSynch's prompt-conditioned sync features of the clip.",
        "Seconds of video the features cover.",
    )
    FUNCTION = "extract"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Resamples the frames to 25 fps and 224 px and runs SelVA's text-conditioned video encoder, "
        "so the features follow only the motion of the prompted source."
    )

    def extract(
        self,
        model: SelvaPipeline,
        images: torch.Tensor,
        prompt: str,
        fps: float = DEFAULT_FPS,
        duration: float = 0.0,
        cache_dir: str = "",
        video_info: Mapping[str, Any] | None = None,
    ) -> tuple[SelvaFeatures, float]:
        frames.check_images(images)
        rate = frames.check_fps(_fps_of(video_info) if video_info is not None else fps)
        span = stages.settle_duration(model, frames.clip_seconds(images.shape[0], rate), duration or None)
        count = stages.lengths_for(model, span).sync_frames
        picked = frames.to_sync_frames(images, frames.source_indices(images.shape[0], rate, count))

        key = cache.cache_key(
            picked, prompt=prompt, fps=rate, duration=span, variant=model.variant.name, dtype=model.dtype
        )
        folder = cache.cache_folder(cache_dir)
        found = cache.load(folder, key)
        if found is None:
            sync = stages.sync_features(model, picked, prompt)
            found = SelvaFeatures(
                sync=sync, prompt=prompt, duration=span, text_synch=stages.text_synch_id(model), key=key
            )
            cache.save(folder, found)
        else:
            log.info("SelVA features from the cache: %s", folder / f"{key}.pt")
        return (found, found.duration)


class SelvaSampler:
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, Any]]:
        return {
            "required": {
                "model": _input("SELVA_MODEL", "From SelVA Model Loader (the extractor's model)."),
                "features": _input("SELVA_FEATURES", "From SelVA Feature Extractor."),
                "prompt": _text_input(
                    "The sound to generate; should match the extractor's prompt. Empty = the "
                    "extractor's prompt."
                ),
                "negative_prompt": _text_input("Sounds to steer away from, e.g. 'wind noise'."),
                "duration": _seconds_input(
                    "Seconds of audio; 0 = as long as the features. Shorter spans use the start of the clip."
                ),
                "steps": _input("INT", "Flow-matching (Euler) steps.", default=25, min=1, max=MAX_STEPS),
                "cfg": _input(
                    "FLOAT",
                    "Classifier-free guidance strength: higher follows the prompt and the picture more "
                    "closely.",
                    default=CFG_STRENGTH.default,
                    min=CFG_STRENGTH.minimum,
                    max=CFG_STRENGTH.maximum,
                    step=0.1,
                    round=0.01,
                ),
                "seed": _input(
                    "INT",
                    "The same seed gives the same audio on every device.",
                    default=0,
                    min=0,
                    max=MAX_SEED,
                    control_after_generate=True,
                ),
            }
        }

    RETURN_TYPES = ("AUDIO",)
    RETURN_NAMES = ("audio",)
    OUTPUT_TOOLTIPS = ("Mono audio at the model's sample rate (16 or 44.1 kHz).",)
    FUNCTION = "sample"
    CATEGORY = CATEGORY
    DESCRIPTION = "Generates audio for the clip's features with SelVA's flow-matching generator."

    def sample(
        self,
        model: SelvaPipeline,
        features: SelvaFeatures,
        prompt: str,
        negative_prompt: str,
        duration: float,
        steps: int,
        cfg: float,
        seed: int,
    ) -> tuple[dict[str, Any]]:
        if not isinstance(features, SelvaFeatures):
            kind = type(features).__name__
            raise InputError(f"features must come from SelVA Feature Extractor, got {kind}")
        if features.text_synch != stages.text_synch_id(model):
            raise InputError(
                "these features were made by another SelVA video encoder than this model's; "
                "connect the same SelVA Model Loader to the extractor and the sampler"
            )
        if not prompt.strip():
            prompt = features.prompt
        elif prompt != features.prompt:
            log.info("SelVA: the sampler's prompt differs from the one the features follow")
        span = stages.settle_duration(model, features.duration, duration) if duration else features.duration

        bar = host.progress_bar(steps)

        def on_step(done: int, total: int) -> None:
            if bar is not None:
                bar.update_absolute(done, total)
            host.raise_if_interrupted()

        host.raise_if_interrupted()
        audio = stages.generate(
            model,
            features.sync,
            prompt=prompt,
            negative_prompt=negative_prompt,
            duration=span,
            steps=steps,
            cfg_strength=cfg,
            seed=seed,
            on_step=on_step,
        )
        return ({"waveform": audio.reshape(1, 1, -1), "sample_rate": model.sample_rate},)


def _fps_of(video_info: Mapping[str, Any]) -> float:
    """The rate of the loaded frames in a Video Helper Suite video_info (loaded_fps; source_fps before)."""
    if not isinstance(video_info, Mapping):
        kind = type(video_info).__name__
        raise InputError(f"video_info must be Video Helper Suite's video_info, got {kind}")
    for name in ("loaded_fps", "source_fps"):
        if video_info.get(name):
            return video_info[name]
    raise InputError("video_info has no loaded_fps or source_fps; connect the fps output instead")


NODE_CLASS_MAPPINGS = {
    "SelvaModelLoader": SelvaModelLoader,
    "SelvaFeatureExtractor": SelvaFeatureExtractor,
    "SelvaSampler": SelvaSampler,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "SelvaModelLoader": "SelVA Model Loader",
    "SelvaFeatureExtractor": "SelVA Feature Extractor",
    "SelvaSampler": "SelVA Sampler",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
