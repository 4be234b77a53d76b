"""A result's download bundle: one zip with everything a finished mix is delivered as.

Inside: the mixed mp4, the multi-track mp4 (none for sound from the prompt alone),
each sound's chosen take as FLAC and WAV, and the project file. Every name says the
sounds and their seeds (`1-dog-barking_seed7.flac`, `1-dog-barking_seed7+2-car-engine_seed8_mix.mp4`),
so a file taken out of the zip still says how to make it again. The takes are read
from their exact waveform files (no model runs), at the project's delivery rate.
The zip is written beside itself and renamed into place: a fault leaves no zip or a
whole one. No UI here: the app and the command line both call `write_bundle`.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

from selva import names
from selva.containers import atomic_write
from selva.project import PROJECT_SUFFIX, Project
from selva.spec import InputError

BUNDLE_SUFFIX = ".zip"
TAG_PROMPT_CHARS = 24  # each sound's prompt in a bundled name; four sounds stay under 160 characters
# Already compressed: stored as they are. The WAVs and the project file are deflated.
STORED = (".mp4", ".flac")


def sound_tag(project: Project, k: int) -> str:
    """Sound `k` (0-based) and its chosen take's seed as a file-name piece: `2-car-engine_seed8`."""
    sound = project.sounds[k]
    if sound.take is None:
        raise InputError(f"sound {k + 1} has no chosen take yet: generate it before bundling")
    return f"{k + 1}-{names.slug(sound.prompt, TAG_PROMPT_CHARS, empty='sound')}_seed{sound.take.seed}"


def project_tag(project: Project) -> str:
    """Every sound's tag, joined: what the mix, the multi-track mp4 and the project file are named by."""
    return "+".join(sound_tag(project, k) for k in range(len(project.sounds)))


def bundle_file(folder: str | Path, project: Project) -> Path:
    """Where a result's zip goes in `folder`: named for every sound and its seed (`project_tag`)."""
    return Path(folder) / f"{project_tag(project)}{BUNDLE_SUFFIX}"


def bundle_names(project: Project, *, video: bool) -> list[str]:
    """The names inside `write_bundle`'s zip, in its order."""
    tag = project_tag(project)
    files = [f"{tag}_mix.mp4", f"{tag}_tracks.mp4"] if video else []
    for k in range(len(project.sounds)):
        files += [f"{sound_tag(project, k)}.flac", f"{sound_tag(project, k)}.wav"]
    return [*files, f"{tag}{PROJECT_SUFFIX}"]


def write_bundle(
    path: str | Path,
    project: Project,
    sample_rate: int,
    *,
    project_file: str | Path,
    mix_video: str | Path | None = None,
    tracks_video: str | Path | None = None,
) -> Path:
    """The zip at `path`: the mp4s (if any), each sound's chosen take as FLAC and WAV, the project file.

    `sample_rate` is the rate the takes' waveform files hold (the model's); the takes are
    written at the project's delivery rate (`Mix.sample_rate`, None: that same rate).
    """
    from selva import delivery, media
    from selva.render import read_take

    path = Path(path)
    video = mix_video is not None
    if video and tracks_video is None:
        raise InputError("a bundle with the mixed mp4 needs the multi-track mp4 too")
    rate = project.mix.sample_rate or sample_rate
    entries = bundle_names(project, video=video)  # every sound has a chosen take
    for k, sound in enumerate(project.sounds):
        if sound.take.audio is None:  # type: ignore[union-attr]
            raise InputError(f"sound {k + 1}'s chosen take has no audio yet: generate it first")

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory() as scratch, zipfile.ZipFile(tmp, "w") as zf:
            given = [Path(mix_video), Path(tracks_video)] if video else []  # type: ignore[arg-type]
            for k, sound in enumerate(project.sounds):
                wave = read_take(sound.take.audio)  # type: ignore[union-attr]
                if rate != sample_rate:
                    wave = delivery.resample(wave, sample_rate, rate, duration=project.duration)
                for suffix in (".flac", ".wav"):
                    given.append(media.write_audio(Path(scratch) / f"{k}{suffix}", wave, rate))
            given.append(Path(project_file))
            for source, name in zip(given, entries, strict=True):
                kind = zipfile.ZIP_STORED if source.suffix in STORED else zipfile.ZIP_DEFLATED
                zf.write(source, name, compress_type=kind)

    return atomic_write(path, write)
