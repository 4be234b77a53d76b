"""What a call of the pipeline gives back: the audio and how it was made, and the prompts' features."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from selva import media
from selva.spec import MediaError


@dataclass
class SelvaOutput:
    """What one call produced."""

    audio: torch.Tensor  # (num_samples, N) float32 on the CPU, in [-1, 1]
    sample_rate: int
    seed: int  # candidate k was drawn from seed + k
    duration: float
    start: float
    video: Path | None  # None when the audio came from the prompt alone
    timings: dict[str, float] = field(default_factory=dict)
    windows: int = 1  # 8 s windows the span was generated in
    info: media.VideoInfo | None = None  # the call's probe of `video`, reused when muxing
    # Per window, the flow's final normalised latents (num_samples, L_w, C) on the CPU (`selva.region`).
    latents: list[torch.Tensor] | None = None

    def save_audio(self, path: str | Path, index: int = 0) -> Path:
        """Write candidate `index` as FLAC or WAV (chosen by the suffix)."""
        return media.write_audio(path, self.audio[index], self.sample_rate)

    def save_video(
        self, path: str | Path, index: int = 0, *, original_audio_gain: float | None = None
    ) -> Path:
        """Write the source span with candidate `index` as its soundtrack (mp4, video stream copied)."""
        if self.video is None:
            raise MediaError(
                "this audio was generated from the prompt alone, so there is no video to put it in; "
                "use save_audio instead"
            )
        from selva.mux import mux

        return mux(
            self.video,
            self.audio[index],
            self.sample_rate,
            path,
            start=self.start,
            duration=self.duration,
            original_audio_gain=original_audio_gain,
            info=self.info,
        )


@dataclass
class PromptFeatures:
    t5: torch.Tensor  # (1, L, D_t5) T5 encoder states, for TextSynch
    t5_mask: torch.Tensor  # (1, L) bool
    clip: torch.Tensor  # (1, 77, D_clip) CLIP text states, for the generator
