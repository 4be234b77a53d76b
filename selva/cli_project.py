"""`selva render` and `selva edit`: the commands that work on a project file.

`render` generates the takes a project is missing and delivers its mix; `edit` re-rolls a region
of one take, then delivers the mix as `render` does; with `--bundle` both also write the download
zip. `selva.cli` parses the options and calls these; models load only after every check (a typo
costs no minutes).
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from selva.batch import EXIT_OK
from selva.cli_scores import check_score_options
from selva.spec import DEFAULT_VARIANT, InputError

if TYPE_CHECKING:
    from selva.render import Rendered

log = logging.getLogger(__name__)  # one of `selva.cli.CLI_LOGGERS`: its lines show at INFO


def cmd_render(args: argparse.Namespace) -> int:
    from selva.batch import load_pipeline, project_name, takes_folder
    from selva.cli_options import delivery_settings
    from selva.cli_scores import score_clip, write_clip_scores
    from selva.project import Project
    from selva.region import render_with_edits

    check_score_options(args)
    project = Project.load(args.project)
    project = replace(project, mix=delivery_settings(project.mix, args)).checked(max_duration=math.inf)
    variant = args.variant or project.variant or DEFAULT_VARIANT
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {args.out}: {exc}") from None
    pipe = load_pipeline(args, variant)
    rendered = render_with_edits(pipe, project, takes_folder(args.project))
    rendered, score_lines = score_clip(rendered, args, str(args.project))  # --score; never fails
    scores = write_clip_scores(rendered.project, args.out / project_name(args.project), score_lines)
    deliver(rendered, args, scores)
    for line in score_lines or ():
        log.info("%s", line)
    return EXIT_OK


def cmd_edit(args: argparse.Namespace) -> int:
    from selva.batch import load_pipeline, takes_folder
    from selva.cli_options import delivery_settings
    from selva.project import Project
    from selva.region import check_region, reroll_region
    from selva.render import random_seed
    from selva.variants import get_variant

    project = Project.load(args.project)
    project = replace(project, mix=delivery_settings(project.mix, args)).checked(max_duration=math.inf)
    variant = get_variant(args.variant or project.variant or DEFAULT_VARIANT)
    sound, take = args.sound - 1, None if args.take is None else args.take - 1
    start, end = args.region
    seed = random_seed() if args.seed is None else args.seed
    # Every check before the models load: a typo costs no minutes.
    check_region(project, sound, take, start, end, sample_rate=variant.sample_rate,
                 hop_length=variant.hop_length, prompt=args.prompt, seed=seed)  # fmt: skip
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {args.out}: {exc}") from None
    pipe = load_pipeline(args, variant.name)
    result = reroll_region(pipe, project, sound, take, start, end, seed=seed, prompt=args.prompt,
                           folder=takes_folder(args.project))  # fmt: skip
    log.info("sound %d take %d: region %s re-rolled with seed %d as take %d", args.sound,
             result.rendered.project.sounds[sound].takes[result.take].edit.source + 1,
             result.region.describe(), seed, result.take + 1)  # fmt: skip
    deliver(result.rendered, args)
    return EXIT_OK


def deliver(rendered: Rendered, args: argparse.Namespace, extra: Sequence[Path] = ()) -> None:
    """Write the mix's files into `args.out`, save the project over `args.project` and, with
    `--bundle`, the zip an editor is handed (`selva.bundle`); log what was written (and `extra`)."""
    from selva.batch import project_name
    from selva.bundle import bundle_file, write_bundle
    from selva.progress import project_info
    from selva.project_files import write_mix

    files = write_mix(rendered, args.out, project_name(args.project), audio_format=args.format)
    written = [*files.sound_audio, files.mix_audio, files.mix_video, files.tracks_video, *extra]
    rendered.project.save(args.project)  # the zip holds the project as saved, with its takes' files
    if args.bundle:
        project = rendered.project
        written.append(write_bundle(bundle_file(args.out, project), project, rendered.sample_rate,
                                    project_file=args.project, mix_video=files.mix_video,
                                    tracks_video=files.tracks_video))  # fmt: skip
    log.info("%s -> %s (%s)", args.project, ", ".join(str(p) for p in written if p), project_info(rendered))
