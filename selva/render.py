"""Render a project: generate the takes it is missing, then mix the chosen ones.

This is the one road from every front end to the pipeline: the app, MCP, the
command line and its batches, the Ray workers and `selva render` all build a
`selva.project.Project` (or add takes to one sound of it) and call `render`.

1. settle the span (the first generation fixes `duration`, so later re-rolls match it);
2. decode the span once and encode every sound's prompt through TextSynch
   (cached, so the generations below skip decoding);
3. generate the missing takes, a batch per pipeline call (take k of a batch from seed + k);
4. mix the chosen takes of the audible sounds (gain, mute, solo) with the
   video's own soundtrack, peak-normalised instead of clipped.

Take audio is kept exactly (float32 `.npy` files in a folder of takes), so a
re-roll of one sound leaves every other sound's chosen take bit for bit, and a
project file whose take files are gone is generated again batch by batch, the
same on the same machine and precision.

    project = draft_takes(Project(video="dog.mp4", sounds=(Sound("dog barking"),)), seed=1)
    rendered = render(pipe, project, Path("outputs"))
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from selva import names
from selva.project import Project, Sound, Take, take_seeds
from selva.spec import SEED, CancelToken, GenerationRequest, InputError, MediaError

if TYPE_CHECKING:
    from selva.pipeline import SelvaPipeline, StageCallback, StepCallback


def random_seed() -> int:
    """A fresh seed that leaves room for seed + k of every take of a call."""
    return random.randrange(2**31)


def draft_takes(
    project: Project,
    *,
    seed: int | None = None,
    count: int = 1,
    steps: int | None = None,
    cfg_strength: float | None = None,
    sounds: list[int] | None = None,
) -> Project:
    """`project` with `count` new, not yet generated takes on each of `sounds` (default: those with none).

    Sound number j of the list gets seeds seed + j * count + k (k < count): one
    sound's candidates are seed, seed + 1, ...; one take per sound is stems' seed + j.
    The new takes become the chosen ones.
    """
    seed = random_seed() if seed is None else seed
    SEED.check(seed)
    if sounds is None:
        sounds = [k for k, s in enumerate(project.sounds) if not s.takes]
    batch = project.next_batch()
    for j, index in enumerate(sounds):
        sound = project.sounds[index]
        base = sound.take or Take(seed=0)
        takes = [
            Take(
                seed=s,
                steps=base.steps if steps is None else steps,
                cfg_strength=base.cfg_strength if cfg_strength is None else cfg_strength,
                batch=batch + j,
            )
            for s in take_seeds(seed + j * count, count)
        ]
        SEED.check(takes[-1].seed)
        project = project.with_sound(index, sound.with_takes(takes))
    return project


@dataclass
class Rendered:
    """A rendered project: its takes' audio (sound, take) -> (N,) float32, and the mix."""

    project: Project  # with `duration` settled and every take's audio file named
    audio: dict[tuple[int, int], np.ndarray]
    mix: np.ndarray  # mono (N,) float32, or stereo (2, N) once a sound is panned; peak at most 1.0
    normalised_db: float  # 0.0, or the (negative) gain that kept the mix from clipping
    original: np.ndarray | None  # the video's own soundtrack over the span, at unit gain
    sample_rate: int
    start: float
    duration: float
    generated: list[tuple[int, int]] = field(default_factory=list)  # the takes made by this call
    timings: dict[str, float] = field(default_factory=dict)
    windows: int = 1
    info: object | None = None  # the video's probe (media.VideoInfo), reused when muxing
    # (sound, take) -> per window the flow's final normalised latents (L_w, C): the takes made here
    # (and edited), for a region re-roll (`selva.region`); kept beside their audio as `latent_file`.
    latents: dict[tuple[int, int], list[np.ndarray]] = field(default_factory=dict)

    @property
    def video(self) -> Path | None:
        return Path(self.project.video) if self.project.video is not None else None

    def panned(self, sound: int) -> np.ndarray:
        """A sound's chosen take as the mix places it: mono in the centre, else stereo (2, N)."""
        wave, pan = self.take_audio(sound), self.project.sounds[sound].pan
        if not pan:
            return wave
        from selva import delivery

        return delivery.pan(wave, pan)

    def take_audio(self, sound: int, take: int | None = None) -> np.ndarray:
        """A take's waveform; by default the sound's chosen take."""
        chosen = self.project.sounds[sound].chosen if take is None else take
        if chosen is None:
            raise InputError(f"sound {sound + 1} has no take yet")
        return self.audio[(sound, chosen)]

    @property
    def seeds(self) -> list[int]:
        """Each sound's chosen take's seed."""
        return [s.take.seed for s in self.project.sounds if s.take is not None]


def render(
    pipe: SelvaPipeline,
    project: Project,
    folder: str | Path | None,
    *,
    callback_on_step_end: StepCallback | None = None,
    callback_on_stage: StageCallback | None = None,
    on_sound: Callable[[int, int], None] | None = None,
    cancel: CancelToken | None = None,
    redo_edits: Callable[..., Project] | None = None,
) -> Rendered:
    """Generate `project`'s missing takes (their exact audio as files in `folder`) and mix the chosen ones.

    `folder=None` keeps the new takes' audio in the result only (their `audio` stays None).
    Region re-rolls whose audio is gone are made again by `redo_edits` (`selva.region`'s, which
    builds on this module: `selva.region.render_with_edits` passes it).

    A sound without takes gets one (a fresh seed); `on_sound(j, count)` is called
    as the j-th of `count` pipeline calls begins (for progress bars).
    """
    project = project.checked(max_duration=pipe.max_duration)
    if project.mix.measured is not None:  # it measured the last delivery; `selva.project_files` measures anew
        project = replace(project, mix=replace(project.mix, measured=None))
    if project.variant != pipe.variant.name:
        project = replace(project, variant=pipe.variant.name)
    if any(not s.takes for s in project.sounds):
        project = draft_takes(project)
    if project.video is None and project.mix.original_audio_gain:
        raise InputError("the original soundtrack comes from a video: give one, or set its level to 0")
    audio: dict[tuple[int, int], np.ndarray] = {}
    for k, sound in enumerate(project.sounds):
        for t, take in enumerate(sound.takes):
            if take.audio is not None and Path(take.audio).is_file():
                audio[(k, t)] = read_take(take.audio)
    groups = _missing_batches(project, audio)

    timings: dict[str, float] = {}
    generated: list[tuple[int, int]] = []
    latents: dict[tuple[int, int], list[np.ndarray]] = {}
    windows, info = 1, None
    sample_rate = pipe.variant.sample_rate
    if groups:
        # 2. One decode of the span for every prompt still to generate; the calls find them cached.
        prompts = list(dict.fromkeys(project.sounds[k].prompt for k, _ in groups))
        if project.video is not None and len(prompts) > 1:
            if callback_on_stage is not None:
                callback_on_stage("decode")
            pipe.sync_features(
                project.video, prompts, start=project.start, duration=project.duration, cancel=cancel
            )
        # 3. A pipeline call per batch of takes.
        for j, (k, members) in enumerate(groups):
            if on_sound is not None:
                on_sound(j, len(groups))
            sound, first = project.sounds[k], project.sounds[k].takes[members[0]]
            request = GenerationRequest(
                video=project.video,
                prompt=sound.prompt,
                negative_prompt=sound.negative_prompt,
                steps=first.steps,
                cfg_strength=first.cfg_strength,
                seed=first.seed,
                duration=project.duration,
                start=project.start,
                num_samples=len(members),
            )
            out = pipe.generate(
                request,
                callback_on_step_end=callback_on_step_end,
                callback_on_stage=callback_on_stage,
                cancel=cancel,
            )
            # The first call settles the span; every later take of the project uses the same.
            project = replace(project, duration=out.duration, start=out.start)
            windows, info = out.windows, out.info
            for name, seconds in out.timings.items():
                timings[name] = timings.get(name, 0.0) + seconds
            for row, t in enumerate(members):
                if (k, t) in audio:  # drawn again only to keep its batch whole; the kept audio stays
                    continue
                take = sound.takes[t]
                wave = out.audio[row].numpy()
                audio[(k, t)] = wave
                latents[(k, t)] = [window[row].numpy() for window in out.latents]
                if folder is not None:
                    path = Path(folder) / names.take_file(sound.prompt, take.seed)
                    write_latents(latent_file(path), latents[(k, t)])
                    take = replace(take, audio=str(write_take(path, wave)))
                    sound = replace(sound, takes=_replaced(sound.takes, t, take))
                generated.append((k, t))
            project = project.with_sound(k, sound)
    # Region re-rolls whose audio is gone, made again from their takes (earlier ones: made by now).
    edits = [(k, t) for k, s in enumerate(project.sounds) for t, x in enumerate(s.takes) if x.edit]
    if lost := [key for key in edits if key not in audio]:
        if redo_edits is None:
            k, t = lost[0]
            raise InputError(
                f"sound {k + 1} take {t + 1} is a region re-roll whose audio is gone; render the project "
                "with selva.region.render_with_edits (as `selva render` does) to make it again"
            )
        project = redo_edits(pipe, project, audio, latents, folder, cancel=cancel)
        generated += lost
    # 4. The mix.
    return mixed(
        project, audio, sample_rate, generated=generated, timings=timings, windows=windows, info=info,
        latents=latents,
    )  # fmt: skip


def mixed(
    project: Project, audio: dict[tuple[int, int], np.ndarray], sample_rate: int, **made: object
) -> Rendered:
    """`project` rendered from takes at hand (`audio`): the span settled, the original read, the mix.

    No model runs: a re-mix after a gain, pan, mute or solo changed calls this alone.
    `made` are the generation's own fields of `Rendered` (generated, timings, windows, info).
    """
    duration = _settled_duration(project, audio, sample_rate)
    project = replace(project, duration=duration)
    original = None
    if project.video is not None:
        from selva import tracks

        original = tracks.original_audio(project.video, project.start, duration, sample_rate)
    mix, normalised_db = mix_project(project, audio, original, round(duration * sample_rate))
    return Rendered(
        project=project,
        audio=audio,
        mix=mix,
        normalised_db=normalised_db,
        original=original,
        sample_rate=sample_rate,
        start=project.start,
        duration=duration,
        **made,
    )


def mix_project(
    project: Project, audio: dict[tuple[int, int], np.ndarray], original: np.ndarray | None, samples: int
) -> tuple[np.ndarray, float]:
    """The audible sounds' chosen takes at their gains and pans, plus the original soundtrack at its level.

    Mono (N,) while every audible sound sits in the centre, stereo (2, N) with the
    constant-power pan law (`selva.delivery`) once one does not. Peak-normalised
    instead of clipped; no model runs, so changing a gain, pan, mute, solo or the
    original's level re-mixes at once.
    """
    layers, gains, pans = [], [], []
    for k in project.audible():
        sound = project.sounds[k]
        if sound.chosen is None or (k, sound.chosen) not in audio:
            raise InputError(f"sound {k + 1} has no generated take to mix yet")
        layers.append(audio[(k, sound.chosen)])
        gains.append(sound.gain)
        pans.append(sound.pan)
    level = project.mix.original_audio_gain if original is not None else 0.0
    if any(pans):
        from selva import delivery

        stereo = delivery.mix(layers, gains=gains, pans=pans, original=original if level else None,
                              original_gain=level)  # fmt: skip
        return peak_normalised(stereo)
    if level:
        layers.append(original)
        gains.append(level)
    if not layers:  # everything muted: silence of the span's length
        return np.zeros(samples, dtype=np.float32), 0.0
    return mix_waves(layers, gains)


def mix_waves(waves: list[np.ndarray], gains: list[float]) -> tuple[np.ndarray, float]:
    """(the gained sum scaled to peak at most 1.0, the scaling in dB: 0.0 when none was needed)."""
    mix = np.zeros_like(np.asarray(waves[0], dtype=np.float32))
    for wave, gain in zip(waves, gains, strict=True):
        mix += np.float32(gain) * np.asarray(wave, dtype=np.float32)
    return peak_normalised(mix)


def peak_normalised(mix: np.ndarray) -> tuple[np.ndarray, float]:
    """`mix` scaled to peak at most 1.0, and that scaling in dB (0.0 when none was needed)."""
    peak = float(np.abs(mix).max(initial=0.0))
    if peak <= 1.0:
        return mix, 0.0
    return (mix / np.float32(peak)).astype(np.float32), 20.0 * math.log10(1.0 / peak)


# -- take files ----------------------------------------------------------------------------------


def write_take(path: Path, wave: np.ndarray) -> Path:
    """A take's exact waveform as float32 `.npy` (written then renamed: never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    try:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(wave, dtype=np.float32), allow_pickle=False)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def latent_file(take_audio: str | Path) -> Path:
    """Where a take's latents are kept: beside its audio, `<take>.latent.npz`."""
    path = Path(take_audio)
    return path.with_name(f"{path.stem}.latent.npz")


def write_latents(path: Path, latents: list[np.ndarray]) -> Path:
    """A take's per-window latents as `.npz` (w0, w1, ...; written then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **{f"w{k}": np.asarray(x, dtype=np.float32) for k, x in enumerate(latents)})
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_latents(path: str | Path) -> list[np.ndarray] | None:
    """A take's kept latents, or None when the file is missing or unreadable (they can be made again)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return [data[f"w{k}"] for k in range(len(data.files))]
    except (OSError, ValueError, KeyError):
        return None


def read_take(path: str | Path) -> np.ndarray:
    try:
        wave = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise MediaError(f"cannot read the take audio {path}: {exc}") from None
    if wave.ndim != 1 or wave.dtype != np.float32:
        raise MediaError(f"{path} is not a take's audio (float32 samples, one channel)")
    return wave


# -- helpers -------------------------------------------------------------------------------------


def _missing_batches(
    project: Project, audio: dict[tuple[int, int], np.ndarray]
) -> list[tuple[int, list[int]]]:
    """(sound, take indices) per pipeline call: every batch with a take lacking audio, whole.

    A whole batch is made again so each take comes out as it first did (batched
    rows can differ from a lone call in the last bits); a batch whose seeds do not
    run on by one (an edited file) runs take by take.
    """
    return [
        (k, members)
        for k, sound in enumerate(project.sounds)
        for members in take_calls(sound)
        if not all((k, t) in audio for t in members)
    ]


def take_calls(sound: Sound) -> list[list[int]]:
    """The sound's takes (indices) grouped as the pipeline calls that made them; edited takes left out.

    A batch is one call (take k from its first seed + k); a batch whose seeds do not
    run on by one, or whose steps or CFG differ (an edited file), was take by take.
    """
    batches: dict[int, list[int]] = {}
    for t, take in enumerate(sound.takes):
        if take.edit is None:
            batches.setdefault(take.batch, []).append(t)
    calls: list[list[int]] = []
    for members in batches.values():
        takes = [sound.takes[t] for t in members]
        same = all((x.steps, x.cfg_strength) == (takes[0].steps, takes[0].cfg_strength) for x in takes)
        if same and [x.seed for x in takes] == take_seeds(takes[0].seed, len(takes)):
            calls.append(members)
        else:
            calls += [[t] for t in members]
    return calls


def _settled_duration(project: Project, audio: dict[tuple[int, int], np.ndarray], sample_rate: int) -> float:
    if audio:
        samples = {wave.shape[0] for wave in audio.values()}
        if len(samples) > 1:
            raise MediaError(
                "the project's take files have different lengths; they come from different spans"
            )
        return samples.pop() / sample_rate if project.duration is None else float(project.duration)
    raise InputError("the project has no take to mix")


def _replaced(takes: tuple[Take, ...], index: int, take: Take) -> tuple[Take, ...]:
    out = list(takes)
    out[index] = take
    return tuple(out)


def single_sound(request: GenerationRequest, *, original_audio_gain: float = 0.0) -> Project:
    """Today's one-prompt generation as a project: one sound, `num_samples` takes from `seed`."""
    from selva.project import Mix

    project = Project(
        sounds=(Sound(request.prompt, request.negative_prompt),),
        video=str(request.video) if request.video is not None else None,
        start=float(request.start),
        duration=request.duration,
        variant=request.variant,
        mix=Mix(original_audio_gain=float(original_audio_gain or 0.0)),
    )
    return draft_takes(
        project,
        seed=request.seed,
        count=request.num_samples,
        steps=request.steps,
        cfg_strength=request.cfg_strength,
    )
