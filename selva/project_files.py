"""The files a rendered project is delivered as: per take, per sound, the mix, and the project file.

- `write_takes`: a take (or a sound's candidates) as FLAC and WAV, and with a
  video the span with that take as its soundtrack (`<name>_seed41.mp4`);
- `write_mix`: each sound's chosen take (`<name>_1-dog-barking.flac`), the mix
  (`<name>_mix.flac`, `<name>_mix.mp4`), the multi-track mp4 (the mix as default
  track, one titled track per sound, and "original") and the project file
  (`<name>.selva.json`), in the order a resumable batch expects: the mp4s last.

Delivery (`selva.delivery`, the project's `Mix`): every file is written at the
mix's `sample_rate` (None: the model's rate, as generated), resampled by FFmpeg
to exactly duration x rate samples. With a `loudness` target the mix is set to
it under the true-peak ceiling; where no mix file is written (one sound, its
candidates as take files) each take file is, as it is the whole soundtrack
delivered. The mix's measured loudness goes into the project (`Mix.measured`)
and the info line.

Every file is written whole or not at all (`selva.containers.atomic_write`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from selva import names
from selva.project import PROJECT_SUFFIX, Measured, Project
from selva.render import Rendered
from selva.spec import InputError, check_output_rate


def output_rate(rendered: Rendered) -> int:
    """The rate the files of `rendered` are written at: the mix's `sample_rate`, or the model's."""
    rate = rendered.project.mix.sample_rate
    return rendered.sample_rate if rate is None else check_output_rate(rate, rendered.sample_rate)


def delivered(rendered: Rendered, wave: np.ndarray) -> np.ndarray:
    """A take, sound or track as delivered: at `output_rate`, exactly duration x rate samples.

    At the model's rate the samples are the generated ones, untouched.
    """
    from selva import delivery

    rate = output_rate(rendered)
    if rate == rendered.sample_rate:
        return wave
    return delivery.resample(wave, rendered.sample_rate, rate, duration=rendered.duration)


def delivered_mix(rendered: Rendered) -> np.ndarray:
    """The mix resampled, set to the loudness target (if any) and measured.

    The measurement becomes the project's `Mix.measured` (`rendered.project` is
    replaced), so the project file and the info line say what was delivered.
    """
    wave, measured = _normalised(rendered, rendered.mix)
    _keep_measurement(rendered, measured)
    return wave


def delivered_take(rendered: Rendered, sound: int, take: int) -> np.ndarray:
    """A take delivered alone, as the whole soundtrack: resampled, at the loudness target if any.

    The chosen take's measurement becomes the project's `Mix.measured`.
    """
    wave, measured = _normalised(rendered, rendered.take_audio(sound, take))
    if rendered.project.sounds[sound].chosen == take:
        _keep_measurement(rendered, measured)
    return wave


def _normalised(rendered: Rendered, wave: np.ndarray) -> tuple[np.ndarray, Measured | None]:
    from selva import delivery

    wave = delivered(rendered, wave)
    rate, target = output_rate(rendered), rendered.project.mix.loudness
    if target is not None:
        wave, _ = delivery.normalise(wave, rate, target)
    try:
        loudness = delivery.measure(wave, rate)
    except InputError:  # a span under the meter's 0.4 s block has no integrated loudness
        return wave, None
    return wave, Measured(**loudness.as_dict())


def _keep_measurement(rendered: Rendered, measured: Measured | None) -> None:
    project = rendered.project
    rendered.project = replace(project, mix=replace(project.mix, measured=measured))


@dataclass(frozen=True)
class TakeFiles:
    """What `write_takes` wrote for one take."""

    seed: int
    audio: tuple[Path, ...]  # FLAC, then WAV
    video: Path | None  # None for sound from the prompt alone


def write_takes(
    rendered: Rendered,
    folder: str | Path,
    name: str,
    *,
    sound: int = 0,
    takes: list[int] | None = None,
    formats: tuple[str, ...] = ("flac", "wav"),
) -> list[TakeFiles]:
    """`takes` of `sound` (default: those this render made) as `name`_seed<S>.<format> and .mp4.

    Written at the output rate; with a loudness target each take is set to it
    (a take file is a whole soundtrack); the chosen take's measurement is kept.
    """
    from selva import media

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    project = rendered.project
    if takes is None:
        takes = [t for k, t in rendered.generated if k == sound]
    gain = project.mix.original_audio_gain or None
    rate = output_rate(rendered)
    written = []
    for t in takes:
        take = project.sounds[sound].takes[t]
        wave = delivered_take(rendered, sound, t)
        stem = names.take_stem(name, take)  # the seed that makes this take again
        audio = tuple(media.write_audio(folder / f"{stem}.{fmt}", wave, rate) for fmt in formats)
        video = None
        if rendered.video is not None:
            video = span_video(rendered, wave, rate, folder / f"{stem}.mp4", original_audio_gain=gain)
        written.append(TakeFiles(take.seed, audio, video))
    return written


def span_video(
    rendered: Rendered, audio: np.ndarray, rate: int, path: Path, *, original_audio_gain: float | None = None
) -> Path:
    """The rendered span of the video with `audio` as its soundtrack (the video stream copied)."""
    from selva.mux import mux

    assert rendered.video is not None  # callers check: sound from the prompt alone has no video
    return mux(
        rendered.video, audio, rate, path, start=rendered.start, duration=rendered.duration,
        original_audio_gain=original_audio_gain, info=rendered.info,
    )  # fmt: skip


@dataclass(frozen=True)
class MixFiles:
    """Where `write_mix` wrote each file."""

    sound_audio: tuple[Path, ...]  # sound k's chosen take as generated (before its gain)
    mix_audio: Path
    mix_video: Path | None  # the span with the mix as its soundtrack (video stream copied)
    tracks_video: Path | None  # the mix as default track, one track per sound, and "original"
    project: Path | None


def mix_file_names(name: str, prompts: list[str], *, audio_format: str, video: bool) -> list[str]:
    """The names `write_mix` writes, in its order (a batch checks them to resume)."""
    files = [names.sound_file(name, k, p, audio_format) for k, p in enumerate(prompts)]
    files.append(f"{name}_mix.{audio_format}")
    if video:
        files += [f"{name}_mix.mp4", f"{name}_tracks.mp4"]
    return files


def write_mix(
    rendered: Rendered,
    folder: str | Path,
    name: str,
    *,
    audio_format: str = "flac",
    project_file: bool = False,
) -> MixFiles:
    """Each sound's chosen take, the mix and (with a video) its mp4 and the multi-track mp4."""
    from selva import media, tracks

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rate = output_rate(rendered)
    mix = delivered_mix(rendered)  # first: the project file carries its measurement
    project = rendered.project
    sound_audio = tuple(
        media.write_audio(
            folder / names.sound_file(name, k, sound.prompt, audio_format),
            delivered(rendered, rendered.take_audio(k)),
            rate,
        )
        for k, sound in enumerate(project.sounds)
    )
    saved = project.save(folder / f"{name}{PROJECT_SUFFIX}") if project_file else None
    mix_audio = media.write_audio(folder / f"{name}_mix.{audio_format}", mix, rate)
    mix_video = tracks_video = None
    if rendered.video is not None:
        mix_video = span_video(rendered, mix, rate, folder / f"{name}_mix.mp4")
        extra = [(s.prompt, delivered(rendered, rendered.panned(k))) for k, s in enumerate(project.sounds)]
        if rendered.original is not None:
            extra.append(("original", delivered(rendered, rendered.original)))
        tracks_video = tracks.write_multitrack(mix_video, extra, rate, folder / f"{name}_tracks.mp4")
    return MixFiles(sound_audio, mix_audio, mix_video, tracks_video, saved)


@dataclass(frozen=True)
class ProjectResult:
    """A project delivered into a folder: its mix, its files, and a FLAC per take to listen to."""

    project: Project  # as rendered: every take's `audio` names its exact waveform file
    mix_video: str | None  # the span with the mix (None for sound from the prompt alone)
    tracks_video: str | None
    mix_audio: str
    project_file: str  # `<name>.selva.json`: take paths relative to it where they lie under its folder
    take_players: dict[tuple[int, int], str]  # (sound, take) -> FLAC
    info: str
    score_warning: str | None = None  # why the takes went unscored when scores were asked for

    @property
    def scores(self) -> tuple:
        """Each scored take's CLAP scores and best flag (`selva.project_scores.ScoredTake`)."""
        from selva.project_scores import scored_takes

        return scored_takes(self.project)


def deliver_project(rendered: Rendered, folder: str | Path, info: str) -> ProjectResult:
    """`write_mix` with the project file, and a FLAC per take (`<name>_2_seed41.flac`), into `folder`.

    Runs no model: the app's re-mix (a gain, pan, mute or solo changed) calls it
    with takes read back from their files.
    """
    from selva import media

    folder = Path(folder)
    project = rendered.project
    source = Path(project.video).stem if project.video is not None else "prompt"
    name = f"{names.slug(source, 24)}_{names.slug(project.sounds[0].prompt, 32)}"
    files = write_mix(rendered, folder, name, project_file=True)
    players = {}
    for (k, t), wave in sorted(rendered.audio.items()):
        path = folder / f"{names.take_stem(f'{name}_{k + 1}', project.sounds[k].takes[t])}.flac"
        players[(k, t)] = str(media.write_audio(path, wave, rendered.sample_rate))
    return ProjectResult(
        project=project,
        mix_video=None if files.mix_video is None else str(files.mix_video),
        tracks_video=None if files.tracks_video is None else str(files.tracks_video),
        mix_audio=str(files.mix_audio),
        project_file=str(files.project),
        take_players=players,
        info=info,
    )
