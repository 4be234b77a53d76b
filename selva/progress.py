"""What a generation reports while it runs and after: progress bar text and the info line.

`ProgressReport` turns the pipeline's stage and step callbacks into
`progress(fraction, desc=...)` calls (the shape of gradio's `gr.Progress`, which
nothing here imports); `StemsProgress` does the same over several stems;
`info_line` is the one line a user reads (and pastes into a bug report) after a
run. No torch at module level: front ends import this without loading a model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from selva.spec import TRUE_PEAK_CEILING_DB

if TYPE_CHECKING:
    import torch

    from selva.pipeline import SelvaPipeline
    from selva.project import Measured
    from selva.render import Rendered

ProgressFn = Callable[..., object]  # called as progress(fraction, desc=...), as gradio's gr.Progress is


class ProgressReport:
    """The pipeline's stage and step callbacks as `progress(fraction, desc=...)` calls (gradio's shape).

    The percentage a page shows is the flow steps' share done ("step 12/25" reads 48%), windows
    included: the steps are where the time goes. The stages around them say what runs with no
    percentage (`fraction` None, which gradio shows as its text alone).
    """

    # What the user reads while each stage runs.
    STAGES = {
        "probe": "Reading video",
        "text": "Encoding prompts",
        "decode": "Decoding video",
        "text_synch": "TextSynch: following the prompted motion",
        "flow": "Generating",
        "vae": "Decoding audio",
        "vocoder": "Vocoding",
    }

    def __init__(self, progress: ProgressFn | None, steps: int):
        self.progress = progress
        self.steps = steps

    def stage(self, name: str) -> None:
        if self.progress is not None and name in self.STAGES:
            self.progress(None, desc=self.STAGES[name])

    def finish(self) -> None:
        if self.progress is not None:
            self.progress(1.0, desc="Done")

    def step(self, pipe: object, index: int, t: float, state: dict) -> None:
        """One flow step done; past 8 s also which window (batch of windows) of how many runs.

        Windows run batched, so one flow pass may carry several windows at once:
        the bar then names the first window of the pass ("windows 1-3/12").
        """
        if self.progress is None:
            return
        done = index + 1
        passes, number = state.get("passes", 1), state.get("pass", 0)
        fraction = (number * self.steps + done) / (passes * self.steps)
        where = ""
        windows = state.get("windows", 1)
        if windows > 1:
            first = state["window"] + 1
            last = first + state.get("window_count", 1) - 1
            span = f"window {first}/{windows}" if last == first else f"windows {first}-{last}/{windows}"
            where = f"{span}, "
        self.progress(fraction, desc=f"Generating: {where}step {done}/{self.steps}")


class StemsProgress(ProgressReport):
    """`ProgressReport` over several stems: stem k of n fills the k-th n-th of the bar."""

    def __init__(self, progress: ProgressFn | None, steps: int):
        super().__init__(self._scaled if progress is not None else None, steps)
        self.outer = progress
        self.index, self.count = 0, 1

    def begin(self, index: int, count: int) -> None:
        self.index, self.count = index, count

    def _scaled(self, fraction: float | None, desc: str = "") -> None:
        assert self.outer is not None
        if fraction is None:  # a stage: its text alone
            self.outer(None, desc=f"Stem {self.index + 1}/{self.count}: {desc}")
            return
        if fraction >= 1.0:
            self.outer(1.0, desc=desc)
            return
        label = f"Stem {self.index + 1}/{self.count}: {desc}"
        self.outer((self.index + fraction) / self.count, desc=label)


_STAGES = {
    "probe": "probe",
    "text": "prompts",
    "decode": "video decode",
    "text_synch": "TextSynch",
    "flow": "flow",
    "vae": "VAE",
    "vocoder": "vocoder",
}


def info_line(
    timings: dict[str, float],
    pipe: SelvaPipeline,
    *,
    seed: int,
    duration: float,
    start: float | None,
    candidates: int,
    load_seconds: float = 0.0,
) -> str:
    """Seed, span, device and seconds per stage, in one line a user can paste into a bug report.

    `start=None` says the sound came from the prompt alone.
    """
    stages = []
    for key, label in _STAGES.items():
        if key in timings:
            extra = (
                f" ({timings['flow_per_step']:.2f} s/step)"
                if key == "flow" and "flow_per_step" in timings
                else ""
            )
            stages.append(f"{label} {timings[key]:.2f} s{extra}")
    stages += [
        f"{k} {v:.2f} s"
        for k, v in timings.items()
        if k not in _STAGES and k not in ("total", "flow_per_step")
    ]
    total = timings.get("total", sum(timings.get(k, 0.0) for k in _STAGES))
    span = f"from {start:.2f} s" if start is not None else "from the prompt alone"
    rate = pipe.variant.sample_rate
    parts = [
        f"seed {seed}",
        f"{duration:.2f} s {span}",
        f"{candidates} candidate{'s' if candidates > 1 else ''} at {rate / 1000:g} kHz",
        ran_on(pipe),
        ", ".join(stages) + f"; total {total:.2f} s",
    ]
    if load_seconds:
        parts.append(f"model loaded in {load_seconds:.1f} s")
    return " · ".join(parts)


def ran_on(pipe: Any, load_seconds: float = 0.0) -> str:
    """Where a job ran ('small_16k on cuda (bf16)'), and ' · model loaded in 9.4 s' when it loaded it."""
    where = f"{pipe.variant.name} on {pipe.device} ({dtype_name(pipe.dtype)})"
    return where + (f" · model loaded in {load_seconds:.1f} s" if load_seconds else "")


def project_info(rendered: Rendered) -> str:
    """Each sound's seed and gain, the span, the original's level and any normalising, in one line."""
    project = rendered.project
    parts = [
        ", ".join(
            f"{k + 1}. {s.prompt!r} seed {s.take.seed} gain {s.gain:g}"
            for k, s in enumerate(project.sounds)
            if s.take is not None
        )
    ]
    rate = rendered.sample_rate / 1000
    parts.append(f"{rendered.duration:.2f} s from {rendered.start:.2f} s at {rate:g} kHz")
    if rendered.original is not None and project.mix.original_audio_gain:
        parts.append(f"original audio at {project.mix.original_audio_gain:g}")
    if rendered.normalised_db:
        parts.append(f"mix normalised by {rendered.normalised_db:.1f} dB")
    else:
        parts.append("mix not normalised (peak under 1.0)")
    mix = project.mix
    if mix.sample_rate is not None and mix.sample_rate != rendered.sample_rate:
        parts.append(f"delivered at {mix.sample_rate / 1000:g} kHz")
    if mix.measured is not None:
        parts.append(f"measured {_measured(mix.measured)}")
    if mix.loudness is not None:
        parts.append(f"target {mix.loudness:g} LUFS, true peak under {TRUE_PEAK_CEILING_DB:g} dBTP")
    if "total" in rendered.timings:
        parts.append(f"total {rendered.timings['total']:.2f} s")
    return " · ".join(parts)


def _measured(measured: Measured) -> str:
    """'-23.0 LUFS, -7.4 dBTP' ('-inf' for silence, which has neither)."""
    values = (measured.integrated_lufs, measured.true_peak_dbtp)
    lufs, peak = (f"{x:.1f}" if x is not None else "-inf" for x in values)
    return f"{lufs} LUFS, {peak} dBTP"


def dtype_name(dtype: torch.dtype) -> str:
    """bf16, fp16 or fp32: the names the command lines take."""
    return {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32"}.get(
        str(dtype), str(dtype)
    )
