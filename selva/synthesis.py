"""Steps 6-8 of a call: the generator's conditions and flow, the VAE decoder and the vocoder.

`Synthesizer` is a component of `SelvaPipeline` (`pipe.synthesis`), as the
`FeatureEncoder` is for steps 3-4; the pipeline's steps of the same names
(`pipe.prepare_conditions`, `pipe.denoise`, ...) call these. It gets the
pipeline's `Placement` (device, dtype, `resident` and `timed`), as the `FeatureEncoder` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from selva import sampling
from selva.features import Placement
from selva.sequence import SequenceLengths
from selva.spec import CancelToken

# diffusers' shape: called after each flow step as fn(pipe, step_index, t, {"latents": x, ...}); a
# returned dict with "latents" replaces the state.
StepCallback = Callable[[Any, int, float, dict[str, Any]], "dict[str, Any] | None"]

# Rows the vocoder takes at once on the CPU. Its activations grow with rows times samples (a 16 kHz
# window is 128k samples by up to 512 channels): batching the nine 8 s windows of a 60 s clip took
# 7.1 s per window against 4.6-5.1 s for one alone (2 cores, bf16). Window by window, 30 s and 60 s
# clips peak at 3.37 and 3.38 GB RSS, an 8 s one at 3.14 GB. Accelerators take the whole batch.
CPU_VOCODER_ROWS = 1


class Synthesizer:
    """The generator (flow), the VAE decoder (latents -> mel) and the vocoder (mel -> waveform)."""

    def __init__(
        self,
        *,
        generator: nn.Module,
        vae: nn.Module,
        vocoder: nn.Module,
        place: Placement,
    ):
        self.generator = generator
        self.vae = vae
        self.vocoder = vocoder
        self.place = place
        self.progress_bar_config: dict = {}  # tqdm options for the bar over the flow steps

    def prepare_conditions(
        self,
        sync_f: torch.Tensor | None,
        clip_text_f: torch.Tensor,
        negative_clip_text_f: torch.Tensor | None,
        *,
        num_samples: int,
        lengths: SequenceLengths,
    ):
        """Conditional and unconditional generator conditions for `num_samples` candidates.

        SelVA's generator gets no CLIP image features: the conditional branch
        uses the learned empty CLIP sequence, the prompt's CLIP text and the
        sync features; the unconditional one the learned empty sequences and
        the negative prompt's CLIP text (the negative prompt never reaches TextSynch).
        `sync_f` has one row or `num_samples`; None (no video) means the learned empty sync sequence.
        """
        gen = self.generator
        empty_clip = gen.empty_clip_feat.expand(num_samples, lengths.clip_len, -1)
        if sync_f is None:
            sync_f = gen.empty_sync_feat.expand(1, lengths.sync_len, -1)
        if sync_f.shape[0] == 1:
            sync_f = sync_f.expand(num_samples, -1, -1)
        cond = gen.preprocess_conditions(
            empty_clip.to(self.place.dtype),
            sync_f.to(self.place.dtype),
            clip_text_f.expand(num_samples, -1, -1).to(self.place.dtype),
            latent_len=lengths.latent_len,
        )
        negative = None
        if negative_clip_text_f is not None:
            negative = negative_clip_text_f.expand(num_samples, -1, -1).to(self.place.dtype)
        uncond = gen.empty_conditions(
            num_samples,
            latent_len=lengths.latent_len,
            clip_len=lengths.clip_len,
            sync_len=lengths.sync_len,
            negative_text_f=negative,
        )
        return cond, uncond

    def denoise(self, x0: torch.Tensor, cond, uncond, **kwargs: Any) -> torch.Tensor:
        """`flow`, then the latents unnormalised for the VAE (B, L, C)."""
        return self.generator.unnormalize(self.flow(x0, cond, uncond, **kwargs))

    def flow(
        self,
        x0: torch.Tensor,
        cond,
        uncond,
        *,
        steps: int,
        cfg_strength: float,
        callback_on_step_end: StepCallback | None = None,
        cancel: CancelToken | None = None,
        state: dict[str, Any] | None = None,
        caller: Any = None,
    ) -> torch.Tensor:
        """Euler flow matching from t=0 (noise) to t=1: the normalised latents (float32), the flow's own
        space (kept by `selva.region` as a take's known latents for inpainting).

        The state is kept in float32 while the network runs in the pipeline's
        dtype: rounding the state to bf16 at every step would add up. `state`'s entries
        (which windows run) are passed to the step callback beside the latents, after `caller`.
        """
        # At cfg 1 the unconditional branch has no weight: skip it.
        guided = cfg_strength != 1.0
        conditions = cond.cat(uncond) if guided else cond
        timesteps = sampling.timesteps(steps)
        x = x0.float()
        bar = tqdm(range(steps), desc="Flow steps", leave=False, **self.progress_bar_config)
        for i in bar:
            if cancel is not None:
                cancel.raise_if_cancelled()
            t, t_next = timesteps[i], timesteps[i + 1]
            x_in = torch.cat([x, x]) if guided else x
            t_in = torch.full((x_in.shape[0],), float(t), device=self.place.device, dtype=self.place.dtype)
            v = self.generator(x_in.to(self.place.dtype), t_in, conditions).float()
            if guided:
                v_cond, v_uncond = v.chunk(2)
                v = cfg_strength * v_cond + (1.0 - cfg_strength) * v_uncond
            x = sampling.euler_step(x, v, t, t_next)
            if callback_on_step_end is not None:
                changed = callback_on_step_end(caller, i, float(t_next), {**(state or {}), "latents": x})
                if changed and "latents" in changed:
                    x = changed["latents"]
        return x

    def decode_latents(self, latent: torch.Tensor, timings: dict[str, float] | None = None) -> torch.Tensor:
        """Unnormalised latents (B, L, C) -> mel (B, n_mels, 2L)."""
        with self.place.timed(timings if timings is not None else {}, "vae"):
            return self.vae(latent.transpose(1, 2).to(self.place.dtype))

    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, n_mels, T) -> waveform (B, N); on the CPU a row at a time (see CPU_VOCODER_ROWS)."""
        rows = CPU_VOCODER_ROWS if self.place.device.type == "cpu" else len(mel)
        with self.place.resident(self.vocoder):
            vocoder_dtype = next(self.vocoder.parameters()).dtype
            parts = [self.vocoder(part.to(vocoder_dtype)).squeeze(1) for part in mel.split(rows)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)
