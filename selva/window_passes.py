"""Steps 5-9 over a span's windows in flow batches ("passes"): `SelvaPipeline.sample_latents` and
`SelvaPipeline.decode_windows`.

A mixin, so the steps stay the pipeline's own public methods (the call, `selva.region`, the
ComfyUI pack and the tests reach them as `pipe.<step>`), while `selva.pipeline` keeps to the call
read top to bottom. The host provides the single steps these loops run (`prepare_latents`,
`prepare_conditions`, `decode_latents`, `vocode`, `join`), its `synthesis` and `generator`,
`device`, and the `_lengths` and `_timed` helpers.
"""

from __future__ import annotations

import torch

from selva.features import StageCallback, StageReport
from selva.loading import release_freed_memory
from selva.spec import CancelToken
from selva.synthesis import StepCallback
from selva.windows import Window, window_batches

# Windows x candidates per flow batch (CFG doubles it): enough to keep an accelerator busy, bounded
# so a 10 minute clip (90 windows) does not need 90 windows of activations at once.
WINDOW_BATCH = 16


class WindowPasses:
    """The window-by-window steps of `SelvaPipeline.sample`, mixed into the pipeline."""

    @torch.inference_mode()
    def sample_latents(
        self,
        sync_f: torch.Tensor | None,
        clip_text_f: torch.Tensor,
        negative_clip_text_f: torch.Tensor | None,
        *,
        windows: list[Window],
        steps: int,
        cfg_strength: float,
        seed: int,
        num_samples: int = 1,
        only: set[int] | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_stage: StageCallback | None = None,
        cancel: CancelToken | None = None,
        timings: dict[str, float] | None = None,
    ) -> dict[int, torch.Tensor]:
        """Steps 5-7 of `sample`: window index -> normalised latents (num_samples, L_w, C), float32.

        `only`: run just the flow batches holding these windows (the batches stay as a whole call
        forms them, so their latents are the same to the bit: `selva.region` re-runs a take's flow).
        """
        stage = StageReport(callback_on_stage, cancel or CancelToken())
        timings = {} if timings is None else timings
        noise = self.prepare_latents(windows, num_samples, seed)
        batches = window_batches(windows, max(1, WINDOW_BATCH // num_samples))
        if only is not None:
            batches = [b for b in batches if any(w.index in only for w in b)]
        stage("flow")
        latents: dict[int, torch.Tensor] = {}
        with self._timed(timings, "flow"):
            for number, batch in enumerate(batches):
                rows = len(batch) * num_samples  # window-major: row w * num_samples + k
                window_sync = None
                if sync_f is not None:
                    window_sync = torch.cat([sync_f[:, w.sync_slice] for w in batch]).to(self.device)
                    window_sync = window_sync.repeat_interleave(num_samples, dim=0)
                cond, uncond = self.prepare_conditions(
                    window_sync,
                    clip_text_f,
                    negative_clip_text_f,
                    num_samples=rows,
                    lengths=self._lengths(batch[0].duration),
                )
                where = {
                    "window": batch[0].index,
                    "window_count": len(batch),
                    "windows": len(windows),
                    "pass": number,
                    "passes": len(batches),
                }
                x = self.synthesis.flow(
                    torch.cat([noise[w.index] for w in batch]),
                    cond,
                    uncond,
                    steps=steps,
                    cfg_strength=cfg_strength,
                    callback_on_step_end=callback_on_step_end,
                    cancel=stage.cancel,
                    state=where,
                    caller=self,
                )
                latents |= dict(zip([w.index for w in batch], x.split(num_samples), strict=True))
        timings["flow_per_step"] = timings["flow"] / (steps * max(1, len(batches)))
        return latents

    @torch.inference_mode()
    def decode_windows(
        self,
        latents: dict[int, torch.Tensor],
        windows: list[Window],
        *,
        num_samples: int = 1,
        callback_on_stage: StageCallback | None = None,
        timings: dict[str, float] | None = None,
    ) -> torch.Tensor:
        """Steps 8-9 of `sample`: normalised window latents (`sample_latents`) -> mel -> waveform,
        the windows joined into one track (num_samples, N) float32 on the CPU."""
        stage = StageReport(callback_on_stage, CancelToken())
        timings = {} if timings is None else timings
        # The flow's batches again: batched rows can differ from lone ones in the last bits.
        batches = window_batches(windows, max(1, WINDOW_BATCH // num_samples))
        stage("vae")
        mels = [
            self.decode_latents(
                self.generator.unnormalize(torch.cat([latents[w.index] for w in batch])), timings
            )
            for batch in batches
        ]
        stage("vocoder")
        pieces: dict[int, torch.Tensor] = {}
        with self._timed(timings, "vocoder"):
            for batch, mel in zip(batches, mels, strict=True):
                audio = self.vocode(mel).float().cpu()
                pieces |= dict(zip([w.index for w in batch], audio.split(num_samples), strict=True))
        # TextSynch's and the vocoder's activations are hundreds of MB; glibc keeps such freed
        # blocks in the heap, and an idle app would hold its worst request's peak for good.
        release_freed_memory()
        return self.join([pieces[w.index] for w in windows], windows)
