"""Several sources at once: one generation per stem on the same span, and a mix of them.

Each `Stem` is a prompt (which also picks the motion its sound follows), an
optional negative prompt and a gain. Stem k runs with seed + k, so any stem can
be reproduced alone by a single-prompt call with that seed. The span is decoded
once and TextSynch runs once per prompt on it (`SelvaPipeline.sync_features`),
before the stems are generated from the cached features; re-rolls of the same
stems hit the caches.

The mix is the gained sum of the stems, plus the video's own soundtrack at
`original_audio_gain`; it never clips: a mix peaking over 1.0 is scaled down
to peak at 1.0 and the info line says by how much.

    out = generate_stems(pipe, GenerationRequest("dog.mp4", "", seed=7),
                         [Stem("dog barking"), Stem("car engine", gain=0.5)])
    files = save_stems(out, Path("outputs"), "dog")

Importing this module loads neither torch nor a model (the server imports it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from selva.project import Mix, Project, Sound
from selva.spec import (
    MAX_STEMS,
    ORIGINAL_AUDIO_GAIN,
    STEM_GAIN,
    CancelToken,
    GenerationRequest,
    InputError,
    check_prompt,
)

if TYPE_CHECKING:
    import numpy as np

    from selva.pipeline import SelvaPipeline, StageCallback, StepCallback
    from selva.render import Rendered


@dataclass(frozen=True)
class Stem:
    """One source of a multi-source generation."""

    prompt: str
    negative_prompt: str = ""
    gain: float = float(STEM_GAIN.default)

    def checked(self, index: int = 0) -> Stem:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InputError(f"stem {index + 1} needs a prompt, e.g. 'dog barking'")
        check_prompt(f"stem {index + 1} prompt", self.prompt)
        check_prompt(f"stem {index + 1} negative prompt", self.negative_prompt)
        STEM_GAIN.check(self.gain)
        return self


def check_stems(stems: Sequence[Stem]) -> list[Stem]:
    """1 to MAX_STEMS checked stems."""
    stems = list(stems)
    if not 1 <= len(stems) <= MAX_STEMS:
        raise InputError(f"give 1 to {MAX_STEMS} stems (one prompt each), got {len(stems)}")
    return [stem.checked(k) for k, stem in enumerate(stems)]


def stems_from_form(rows: Sequence[tuple[str | None, str | None, float | None]]) -> list[Stem]:
    """(prompt, negative, gain) rows from a form -> stems; rows with an empty prompt are skipped."""
    stems = []
    for prompt, negative, gain in rows:
        if not prompt or not prompt.strip():
            continue
        value = STEM_GAIN.default if gain is None or gain == "" else float(gain)
        k = len(stems)
        try:
            STEM_GAIN.check(value, by_label=True)
        except InputError as e:
            raise InputError(f"stem {k + 1}: {e}") from None
        stems.append(Stem(prompt.strip(), (negative or "").strip(), value))
    if not stems:
        raise InputError("Type a prompt for at least one stem, e.g. 'dog barking'.")
    return check_stems(stems)


@dataclass
class StemsOutput:
    """What one multi-source call produced: mono waves (N,) float32 in [-1, 1]."""

    stems: list[Stem]
    audio: list[np.ndarray]  # stem k, before its gain
    seeds: list[int]  # stem k was drawn from seeds[k] == seed + k
    mix: np.ndarray  # gained sum (with the original soundtrack), normalised if it peaked over 1
    original: np.ndarray | None  # the video's soundtrack over the span, at unit gain
    original_audio_gain: float
    normalised_db: float  # 0.0, or the (negative) gain applied to keep the mix from clipping
    sample_rate: int
    start: float
    duration: float
    video: Path
    timings: dict[str, float] = field(default_factory=dict)
    rendered: Rendered | None = None  # the project behind these stems, for `save_stems`

    @property
    def seed(self) -> int:
        return self.seeds[0]


def generate_stems(
    pipe: SelvaPipeline,
    base: GenerationRequest,
    stems: Sequence[Stem],
    *,
    original_audio_gain: float = 0.0,
    callback_on_step_end: StepCallback | None = None,
    callback_on_stage: StageCallback | None = None,
    on_stem: Callable[[int, int], None] | None = None,
    cancel: CancelToken | None = None,
) -> StemsOutput:
    """Generate every stem on `base`'s span and settings (its prompts are ignored), then mix them.

    A project of one sound per stem rendered by `selva.render.render`. `base.seed=None`
    draws one seed; stem k uses seed + k. `on_stem(k, count)` is called as stem k starts.
    """
    from selva.render import render

    project = stems_project(base, stems, original_audio_gain=original_audio_gain)
    rendered = render(
        pipe,
        project,
        None,
        callback_on_step_end=callback_on_step_end,
        callback_on_stage=callback_on_stage,
        on_sound=on_stem,
        cancel=cancel,
    )
    return StemsOutput(
        stems=list(stems),
        audio=[rendered.take_audio(k) for k in range(len(stems))],
        seeds=rendered.seeds,
        mix=rendered.mix,
        original=rendered.original,
        original_audio_gain=float(original_audio_gain),
        normalised_db=rendered.normalised_db,
        sample_rate=rendered.sample_rate,
        start=rendered.start,
        duration=rendered.duration,
        video=Path(base.video),
        timings=rendered.timings,
        rendered=rendered,
    )


def stems_project(
    base: GenerationRequest, stems: Sequence[Stem], *, original_audio_gain: float = 0.0
) -> Project:
    """Stems as a project: one sound per stem, one take each, stem k from seed + k."""
    from selva.render import draft_takes

    stems = check_stems(stems)
    ORIGINAL_AUDIO_GAIN.check(original_audio_gain)
    if base.video is None:
        # Each stem follows its own source in the picture, and the mix and tracks are mp4s of the span.
        raise InputError(
            "stems follow sources in a video: upload one first (sound from text alone takes a single prompt)"
        )
    project = Project(
        sounds=tuple(Sound(s.prompt, s.negative_prompt, s.gain) for s in stems),
        video=str(base.video),
        start=float(base.start),
        duration=base.duration,
        mix=Mix(original_audio_gain=float(original_audio_gain)),
    )
    return draft_takes(project, seed=base.seed, steps=base.steps, cfg_strength=base.cfg_strength)


@dataclass(frozen=True)
class StemsFiles:
    """Where `save_stems` wrote each file."""

    mix_video: Path  # the span with the mix as its soundtrack (video stream copied)
    tracks_video: Path  # the mix as default track, one track per stem, and "original" if it has one
    mix_audio: Path
    stem_audio: tuple[Path, ...]  # stem k, at its gain, unnormalised
    seeds: tuple[int, ...]


def save_stems(out: StemsOutput, folder: str | Path, name: str, *, audio_format: str = "flac") -> StemsFiles:
    """Write `name`_K-prompt.FMT per stem, `name`_mix.FMT, `name`_mix.mp4 and `name`_tracks.mp4."""
    from selva.project_files import write_mix

    assert out.rendered is not None  # made by generate_stems
    files = write_mix(out.rendered, folder, name, audio_format=audio_format)
    assert files.mix_video is not None and files.tracks_video is not None  # stems have a video
    seeds = tuple(out.seeds)
    return StemsFiles(files.mix_video, files.tracks_video, files.mix_audio, files.sound_audio, seeds)


def stems_info(out: StemsOutput) -> str:
    """Seeds per stem, the span, and whether the mix was normalised, in one line."""
    from selva.progress import project_info

    assert out.rendered is not None  # made by generate_stems
    return project_info(out.rendered)
