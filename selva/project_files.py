"""The files a rendered project is delivered as: per take, per sound, the mix, and the project file.

- `write_takes`: a take (or a sound's candidates) as FLAC and WAV, and with a
  video the span with that take as its soundtrack (`<name>_seed41.mp4`);
- `write_mix`: each sound's chosen take (`<name>_1-dog-barking.flac`), the mix
  (`<name>_mix.flac`, `<name>_mix.mp4`), the multi-track mp4 (the mix as default
  track, one titled track per sound, and "original") and the project file
  (`<name>.selva.json`), in the order a resumable batch expects: the mp4s last.

Every file is written whole or not at all (`selva.containers.atomic_write`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from selva import names
from selva.project import PROJECT_SUFFIX, Project
from selva.render import Rendered


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
    """`takes` of `sound` (default: those this render made) as `name`_seed<S>.<format> and .mp4."""
    from selva import media
    from selva.mux import mux

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    project = rendered.project
    if takes is None:
        takes = [t for k, t in rendered.generated if k == sound]
    gain = project.mix.original_audio_gain or None
    written = []
    for t in takes:
        take = project.sounds[sound].takes[t]
        wave = rendered.audio[(sound, t)]
        stem = f"{name}_seed{take.seed}"  # the seed that makes this take again
        audio = tuple(
            media.write_audio(folder / f"{stem}.{fmt}", wave, rendered.sample_rate) for fmt in formats
        )
        video = None
        if rendered.video is not None:
            video = mux(
                rendered.video,
                wave,
                rendered.sample_rate,
                folder / f"{stem}.mp4",
                start=rendered.start,
                duration=rendered.duration,
                original_audio_gain=gain,
                info=rendered.info,
            )
        written.append(TakeFiles(take.seed, audio, video))
    return written


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
    from selva.mux import mux

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    project = rendered.project
    sound_audio = tuple(
        media.write_audio(
            folder / names.sound_file(name, k, sound.prompt, audio_format),
            rendered.take_audio(k),
            rendered.sample_rate,
        )
        for k, sound in enumerate(project.sounds)
    )
    saved = project.save(folder / f"{name}{PROJECT_SUFFIX}") if project_file else None
    mix_audio = media.write_audio(folder / f"{name}_mix.{audio_format}", rendered.mix, rendered.sample_rate)
    mix_video = tracks_video = None
    if rendered.video is not None:
        mix_video = mux(
            rendered.video,
            rendered.mix,
            rendered.sample_rate,
            folder / f"{name}_mix.mp4",
            start=rendered.start,
            duration=rendered.duration,
            info=rendered.info,
        )
        extra = [(s.prompt, rendered.panned(k)) for k, s in enumerate(project.sounds)]
        if rendered.original is not None:
            extra.append(("original", rendered.original))
        tracks_video = tracks.write_multitrack(
            mix_video, extra, rendered.sample_rate, folder / f"{name}_tracks.mp4"
        )
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
        seed = project.sounds[k].takes[t].seed
        path = folder / f"{name}_{k + 1}_seed{seed}.flac"
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
