"""The project: what a user is working on, as plain data, and its versioned JSON file.

A project is a video (or none: sound from the prompts alone) and its span, up to
`MAX_SOUNDS` sounds, and the mix settings. Each sound is a prompt that picks the
source it follows, an optional negative prompt, its place in the mix (gain, pan,
mute, solo) and its takes: every generation of that sound, each with the seed,
steps and CFG strength that make it again. One take per sound is chosen for the
mix. One sound is what `selva generate` makes; several are stems.

    project = Project(video="dog.mp4", sounds=(Sound("dog barking"), Sound("car engine", gain=0.5)))
    project.save("dog.selva.json"); Project.load("dog.selva.json")

Everything here is data: nothing imports torch or numpy, so front ends build,
check and store projects without loading a model. `selva.render` generates the
takes a project is missing and writes its files.

Takes drawn in one pipeline call share a `batch` number: take k of a batch was
drawn from the batch's first seed + k (`take_seeds`), and a project whose take
audio is gone is regenerated batch by batch, so it comes out the same.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from selva import spec
from selva.spec import (
    CFG_STRENGTH,
    MAX_STEMS,
    ORIGINAL_AUDIO_GAIN,
    OUTPUT_RATES,
    PAN,
    SEED,
    STEM_GAIN,
    STEPS,
    InputError,
    check_duration,
    check_loudness_target,
    check_output_rate,
    check_prompt,
)

PROJECT_VERSION = 1
MAX_SOUNDS = MAX_STEMS
# What `selva render` and the app's download name a project file.
PROJECT_SUFFIX = ".selva.json"
# CLAP's cosines are computed in float32: a similarity may stray this far past +-1.
_COSINE_SLACK = 1e-4


def take_seeds(seed: int, count: int) -> list[int]:
    """The seeds of `count` takes drawn in one call from `seed`: take k has seed + k.

    The one rule behind candidates and stems: any take can be made again alone
    from its own seed.
    """
    return [seed + k for k in range(count)]


@dataclass(frozen=True)
class Score:
    """A take's CLAP scores (`selva.scoring` measures them; see there what each means).

    Cosine similarities from -1 to 1: `agreement` with the take's own prompt,
    `leakage` the highest one with its negative prompt and the other sounds'
    prompts (None: there were none), and `score`, what takes are ranked by. A
    hint for choosing among takes, not a judgement of their quality.
    """

    agreement: float
    leakage: float | None
    score: float
    checkpoint: str  # the CLAP that scored it: scores of different checkpoints do not compare
    leaked_into: str | None = None  # the prompt behind `leakage`

    def checked(self, where: str) -> Score:
        for name in ("agreement", "leakage"):
            value = getattr(self, name)
            if value is None and name == "leakage":
                continue
            if not _is_number(value) or abs(value) > 1 + _COSINE_SLACK:
                raise InputError(f"{where}: score {name} must be a similarity from -1 to 1, got {value!r}")
        if not _is_number(self.score):
            raise InputError(f"{where}: score must be a number, got {self.score!r}")
        if not isinstance(self.checkpoint, str) or not self.checkpoint:
            raise InputError(f"{where}: score checkpoint must name the CLAP that scored it")
        if self.leaked_into is not None and not isinstance(self.leaked_into, str):
            raise InputError(f"{where}: score leaked_into must be a prompt or null, got {self.leaked_into!r}")
        return self


@dataclass(frozen=True)
class Edit:
    """How an edited take was made from an earlier take of its sound (`selva.region`).

    Seconds `start`..`end` of the span (widened to whole latent frames) were generated anew,
    from the edited take's own `seed`, steps and CFG strength (and `prompt`, None: the sound's
    own), while the rest of take `source` stayed.
    """

    source: int  # index of the take it was made from, an earlier one of the same sound
    start: float
    end: float
    prompt: str | None = None

    def checked(self, where: str, index: int) -> Edit:
        if not isinstance(self.source, int) or isinstance(self.source, bool) or not 0 <= self.source < index:
            raise InputError(f"{where}: edit source must be an earlier take's index, got {self.source!r}")
        if not (_is_number(self.start) and _is_number(self.end) and 0 <= self.start < self.end):
            raise InputError(
                f"{where}: edit region must run from 0 s or later forward, got {self.start!r}..{self.end!r}"
            )
        if self.prompt is not None:
            check_prompt(f"{where} edit prompt", self.prompt)
        return self


@dataclass(frozen=True)
class Take:
    """One generation of a sound.

    `audio` is the file holding the take's exact waveform at the model's rate
    (written by `selva.render`; a path relative to the project file once saved),
    or None while it has not been generated.
    """

    seed: int
    steps: int = int(STEPS.default)
    cfg_strength: float = float(CFG_STRENGTH.default)
    batch: int = 0  # takes with the same batch were drawn in one call
    audio: str | None = None
    score: Score | None = None  # None until scored (`selva.project_scores`)
    edit: Edit | None = None  # None: generated whole from `seed`; else a region re-roll of another take

    def checked(self, where: str, index: int = 0) -> Take:
        _field(where, SEED, self.seed)
        _field(where, STEPS, self.steps)
        _field(where, CFG_STRENGTH, self.cfg_strength)
        if not isinstance(self.batch, int) or isinstance(self.batch, bool) or self.batch < 0:
            raise InputError(f"{where}: batch must be a whole number from 0, got {self.batch!r}")
        if self.audio is not None and not isinstance(self.audio, str):
            raise InputError(f"{where}: audio must be a file path or null, got {self.audio!r}")
        if self.score is not None:
            if not isinstance(self.score, Score):
                raise InputError(f"{where}: score must be a Score or null, got {self.score!r}")
            self.score.checked(where)
        if self.edit is not None:
            if not isinstance(self.edit, Edit):
                raise InputError(f"{where}: edit must be an Edit or null, got {self.edit!r}")
            self.edit.checked(where, index)
        return self


@dataclass(frozen=True)
class Sound:
    """One source: its prompts, its place in the mix, its takes and which one the mix uses."""

    prompt: str
    negative_prompt: str = ""
    gain: float = float(STEM_GAIN.default)
    pan: float = float(PAN.default)
    mute: bool = False
    solo: bool = False
    takes: tuple[Take, ...] = ()
    chosen: int | None = None  # index into `takes`; None before the first take

    @property
    def take(self) -> Take | None:
        """The chosen take (None before the first one)."""
        return self.takes[self.chosen] if self.chosen is not None else None

    def with_takes(self, takes: Sequence[Take], *, choose_first: bool = True) -> Sound:
        """This sound with `takes` added; the first of them becomes the chosen one (by default)."""
        chosen = len(self.takes) if choose_first or self.chosen is None else self.chosen
        return replace(self, takes=(*self.takes, *takes), chosen=chosen)

    def checked(self, where: str) -> Sound:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InputError(f"{where} needs a prompt, e.g. 'dog barking'")
        check_prompt(f"{where} prompt", self.prompt)
        check_prompt(f"{where} negative prompt", self.negative_prompt)
        _field(where, STEM_GAIN, self.gain)
        _field(where, PAN, self.pan)
        for name in ("mute", "solo"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{where}: {name} must be true or false, got {getattr(self, name)!r}")
        for k, take in enumerate(self.takes):
            take.checked(f"{where} take {k + 1}", k)
        if self.chosen is not None and not (
            isinstance(self.chosen, int) and 0 <= self.chosen < len(self.takes)
        ):
            count = len(self.takes)
            raise InputError(f"{where}: chosen take {self.chosen!r} is not one of its {count} takes")
        return self


@dataclass(frozen=True)
class Measured:
    """What a loudness meter read on the delivered mix (`selva.delivery.measure`); None for silence."""

    integrated_lufs: float | None = None  # ITU-R BS.1770 gated integrated loudness
    true_peak_dbtp: float | None = None  # 4x oversampled peak, dB of full scale

    def checked(self) -> Measured:
        for name in ("integrated_lufs", "true_peak_dbtp"):
            value = getattr(self, name)
            if value is not None and not _is_number(value):
                raise InputError(f"the mix's measured {name} must be a number or null, got {value!r}")
        return self


@dataclass(frozen=True)
class Mix:
    """How the sounds become one soundtrack, and the files it is delivered as.

    `sample_rate` is the rate every delivered file is written at: None for the
    model's own (16 or 44.1 kHz), or one of the rates in `spec.OUTPUT_RATES`
    (48000). `loudness` is the mix's integrated loudness target in LUFS (one of
    `spec.LOUDNESS_TARGETS`, with a true-peak ceiling), or None for today's
    peak-normalised level. `measured` is what the delivered mix measured when its
    files were last written (None before that).
    """

    original_audio_gain: float = float(ORIGINAL_AUDIO_GAIN.default)
    loudness: float | None = None
    sample_rate: int | None = None
    measured: Measured | None = None

    def checked(self) -> Mix:
        _field("the mix", ORIGINAL_AUDIO_GAIN, self.original_audio_gain)
        # The spec's checks also read the form's strings ("-23 LUFS", "model"); the file holds numbers.
        try:
            if isinstance(self.loudness, str):
                raise InputError(f"give a number, got {self.loudness!r}")
            check_loudness_target(self.loudness)
        except InputError as exc:
            raise InputError(f"the mix's loudness: {exc} (null: off)") from None
        if self.sample_rate is not None:
            rates = ", ".join(str(r) for r in OUTPUT_RATES if isinstance(r, int))
            wrong = InputError(
                f"the mix's sample_rate must be null (the model's rate) or {rates}, got {self.sample_rate!r}"
            )
            if not isinstance(self.sample_rate, int) or isinstance(self.sample_rate, bool):
                raise wrong
            try:
                check_output_rate(self.sample_rate, model_rate=0)  # 0: "model" is no number a file holds
            except InputError:
                raise wrong from None
        if self.measured is not None:
            if not isinstance(self.measured, Measured):
                raise InputError(f"the mix's measured loudness must be an object, got {self.measured!r}")
            self.measured.checked()
        return self


@dataclass(frozen=True)
class Project:
    """A video (or None) and its span, 1 to MAX_SOUNDS sounds, and the mix."""

    sounds: tuple[Sound, ...]
    video: str | None = None
    start: float = float(spec.START.default)
    duration: float | None = None  # None: what is left of the video after start (up to the cap)
    variant: str | None = None  # None: the pipeline at hand (a server's resident one, or the default)
    mix: Mix = field(default_factory=Mix)

    def checked(self, *, max_duration: float = spec.DEFAULT_MAX_DURATION) -> Project:
        """This project if every field is in range, else an `InputError` naming the field."""
        if not isinstance(self.sounds, tuple) or not 1 <= len(self.sounds) <= MAX_SOUNDS:
            count = len(self.sounds) if isinstance(self.sounds, (tuple, list)) else self.sounds
            raise InputError(f"a project has 1 to {MAX_SOUNDS} sounds, got {count!r}")
        for k, sound in enumerate(self.sounds):
            sound.checked(f"sound {k + 1}")
        if self.video is not None and not isinstance(self.video, str):
            raise InputError(f"video must be a file path or null, got {self.video!r}")
        if not _is_number(self.start) or self.start < 0:
            raise InputError(f"start must be 0 s or later, got {self.start!r}")
        check_duration(self.duration, max_duration)
        if self.video is None and self.duration is None:
            raise InputError("without a video, give a duration: how many seconds of sound to make")
        if self.variant is not None and (not isinstance(self.variant, str) or not self.variant):
            raise InputError(f"variant must be a name such as {spec.DEFAULT_VARIANT!r}, got {self.variant!r}")
        self.mix.checked()
        return self

    # -- editing ---------------------------------------------------------------------------------

    def with_sound(self, index: int, sound: Sound) -> Project:
        sounds = list(self.sounds)
        sounds[index] = sound
        return replace(self, sounds=tuple(sounds))

    def next_batch(self) -> int:
        """A batch number no take of this project has yet."""
        return 1 + max((t.batch for s in self.sounds for t in s.takes), default=-1)

    def audible(self) -> list[int]:
        """Indices of the sounds the mix plays: the soloed ones if any are, else the unmuted ones."""
        soloed = [k for k, s in enumerate(self.sounds) if s.solo]
        return soloed or [k for k, s in enumerate(self.sounds) if not s.mute]

    # -- the file -------------------------------------------------------------------------------

    def to_dict(self, *, relative_to: str | Path | None = None) -> dict[str, Any]:
        """JSON-ready data; take audio paths under `relative_to` are written relative to it."""
        data = asdict(self)
        data = {"version": PROJECT_VERSION, **data}
        if relative_to is not None:
            base = Path(relative_to).resolve()
            for sound in data["sounds"]:
                for take in sound["takes"]:
                    if take["audio"] is not None:
                        take["audio"] = _relative(Path(take["audio"]), base)
        return data

    @classmethod
    def from_dict(cls, data: Any, *, relative_to: str | Path | None = None) -> Project:
        """A project from `to_dict`'s data (checked); relative take paths are taken from `relative_to`."""
        if not isinstance(data, dict):
            raise InputError("a project file holds one JSON object")
        version = data.get("version")
        if version != PROJECT_VERSION:
            raise InputError(
                f"this is a version {version!r} project file; this SelVA Studio reads version "
                f"{PROJECT_VERSION} (a newer file needs a newer SelVA Studio)"
            )
        try:
            sounds = tuple(_sound(s, relative_to) for s in data["sounds"])
            mix = _mix(data.get("mix", {}))
            known = {"version", "sounds", "mix", "video", "start", "duration", "variant"}
            extra = set(data) - known
            if extra:
                raise InputError(f"unknown project fields: {', '.join(sorted(extra))}")
            rest = {k: v for k, v in data.items() if k in known - {"version", "sounds", "mix"}}
            project = cls(sounds=sounds, mix=mix, **rest)
        except (KeyError, TypeError) as exc:
            raise InputError(f"the project file is missing or misspells a field ({exc})") from None
        return project.checked(max_duration=math.inf)

    def save(self, path: str | Path) -> Path:
        """Write the project as JSON (atomically: a fault leaves the old file or none)."""
        path = Path(path)
        return write_json(path, self.to_dict(relative_to=path.parent))

    @classmethod
    def load(cls, path: str | Path) -> Project:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(f"no such project file: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read the project file {path}: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} is not a project file: line {exc.lineno}: {exc.msg}") from None
        return cls.from_dict(data, relative_to=path.parent)


def write_json(path: str | Path, data: Any) -> Path:
    """`data` as indented UTF-8 JSON at `path`, written then renamed: a fault leaves the old file or none."""
    path = Path(path)
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _sound(data: Any, relative_to: str | Path | None) -> Sound:
    if not isinstance(data, dict):
        raise InputError("each sound of a project file is a JSON object")
    takes = []
    for take in data.get("takes", ()):
        if not isinstance(take, dict):
            raise InputError("each take of a project file is a JSON object")
        score = take.get("score")  # absent in files written before takes were scored
        if score is not None and not isinstance(score, dict):
            raise InputError(f"a take's score is a JSON object or null, got {score!r}")
        edit = take.get("edit")  # absent in files written before region re-rolls
        if edit is not None and not isinstance(edit, dict):
            raise InputError(f"a take's edit is a JSON object or null, got {edit!r}")
        take = Take(**{**take, "score": Score(**score) if score is not None else None,
                       "edit": Edit(**edit) if edit is not None else None})  # fmt: skip
        if take.audio is not None and relative_to is not None and not Path(take.audio).is_absolute():
            take = replace(take, audio=str(Path(relative_to) / take.audio))
        takes.append(take)
    return Sound(**{**data, "takes": tuple(takes)})


def _mix(data: Any) -> Mix:
    if not isinstance(data, dict):
        raise InputError("the mix of a project file is a JSON object")
    measured = data.get("measured")
    if isinstance(measured, dict):
        measured = Measured(**measured)
    return Mix(**{**data, "measured": measured})


def _relative(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base).as_posix()
    except ValueError:
        return str(path)


def _field(where: str, limit: spec.Limit, value: object) -> None:
    try:
        limit.check(value)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
