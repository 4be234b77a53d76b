"""The work of `selva generate` and `selva batch`: clips to make, where they go, and the run.

    items_for, items_from_folder     -> list[Item] from the options (the CSV's: selva.batch_csv)
    assign_names, item_files         the files each item writes, stable across runs
    plan_items                       names, this process's shard, what is left to do (its stale
                                     .part files removed)
    run_items                        load_pipeline once, then run_loop item by item (generate_one)

An Item is one clip: one generation (with --samples candidates), or stems (`Item.stems`: one
generation per prompt, their mix and the multi-track mp4, as `selva.stems` makes them). Every
check that needs no model is made while the items are built, so a bad option or row costs no
model load. `selva.cli` parses the options and calls down here; `selva.batch_csv` reads a CSV
list into the same items and `selva.batch_ray` runs them on Ray Data. Nothing here imports torch
at module level: the models load in `load_pipeline`, only once there is work to do.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from selva import spec
from selva.cli_options import delivery_settings, model_options
from selva.names import slug, sound_file
from selva.project import PROJECT_SUFFIX, Project
from selva.spec import InputError, MediaError, SelvaError, is_out_of_memory
from selva.stems import Stem, check_stems

log = logging.getLogger(__name__)
T = TypeVar("T")

EXIT_OK, EXIT_FAILED = 0, 1  # every clip written (or there already); some failed
OOM_HINT = (
    "out of memory: try --variant small_16k, --offload on, --precision bf16 (or fp16), --device cpu, "
    "or less work per clip (a shorter --duration, fewer --samples)"
)
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg"}


# -- work items -----------------------------------------------------------------------------------


@dataclass
class Item:
    video: Path | None  # None: sound from the prompt alone
    prompt: str  # with stems: the first stem's (names and messages use it)
    where: str  # how messages name it: the path, or "LIST.csv line 4"
    negative: str = ""
    seed: int | None = None
    start: float = 0.0
    duration: float | None = None
    name: str = ""  # output stem, unique in the run
    stems: tuple[Stem, ...] = ()  # set: one generation per stem and their mix (selva.stems), not one


# (prompt, negative, gain) per stem as given: a gain of None was not given at all.
Sound = list[tuple[str, str, float | None]]


def option_sound(args: argparse.Namespace) -> Sound:
    """The --prompt, --negative and --gain options as one (prompt, negative, gain) per --prompt.

    Negatives and gains pair with the prompts in order. Without --prompt (a CSV whose rows name
    their own), they are the defaults of stem 1, 2... of every row (see `selva.batch_csv`).
    """
    prompts, negatives, gains = args.prompt or [], args.negative or [], args.gain or []
    if len(prompts) > spec.MAX_STEMS:
        raise InputError(f"give 1 to {spec.MAX_STEMS} stems (one --prompt each), got {len(prompts)}")
    for flag, values in (("--negative", negatives), ("--gain", gains)):
        if values and prompts and len(values) != len(prompts):
            raise InputError(f"give {flag} once per --prompt ({len(prompts)}) or not at all")
        if len(values) > spec.MAX_STEMS:
            raise InputError(f"give {flag} at most {spec.MAX_STEMS} times, once per stem")
    return [(p, nth(negatives, k, ""), nth(gains, k, None)) for k, p in enumerate(prompts)]


def nth(values: Sequence[T], k: int, default: T | None = None) -> T | None:
    """values[k], or `default` past the end (options given fewer times than there are stems)."""
    return values[k] if k < len(values) else default


def sound_fields(sound: Sound, args: argparse.Namespace, where: str = "", *, video: bool = True) -> dict:
    """An Item's prompt, negative and stems for `sound`, with every check that needs no model.

    One prompt without a gain is one generation (with --samples candidates); several prompts, or
    a gain, are stems, as `selva generate --prompt A --prompt B` makes them. Errors start with
    `where` (a CSV line) when given.
    """
    try:
        if len(sound) == 1 and sound[0][2] is None:
            prompt, negative, _ = sound[0]
            spec.check_prompt("the prompt", prompt)
            spec.check_prompt("the negative prompt", negative)
            return dict(prompt=prompt, negative=negative, stems=())
        if not video:
            raise InputError(
                "stems follow a video: give the VIDEO (sound from text alone takes one --prompt)"
            )
        if args.samples != 1:
            raise InputError("--samples works with one prompt; with stems each stem is one generation")
        stems = check_stems(Stem(p, n, spec.STEM_GAIN.default if g is None else g) for p, n, g in sound)
    except InputError as exc:
        if not where:
            raise
        raise InputError(f"{where}: {exc}") from None
    return dict(prompt=stems[0].prompt, negative="", stems=tuple(stems))


def items_for(videos: list[Path], args: argparse.Namespace) -> list[Item]:
    """One clip per video, every setting from the options; none: one clip from the prompt alone."""
    sound = option_sound(args)
    if not sound:
        raise InputError("give the sound to make with --prompt, e.g. --prompt 'dog barking'")
    if not videos:
        if args.duration is None:
            raise InputError("give a VIDEO, or --duration SEC to make sound from the prompt alone")
        fields = sound_fields(sound, args, video=False)
        return [Item(None, where=f"prompt {sound[0][0]!r}", **fields, **option_settings(args))]
    missing = [str(v) for v in videos if not v.is_file()]
    if missing:
        raise InputError(f"no such video: {', '.join(missing)}")
    fields = sound_fields(sound, args)
    return [Item(v, where=str(v), **fields, **option_settings(args)) for v in videos]


def items_from_folder(folder: Path, args: argparse.Namespace) -> list[Item]:
    if not args.prompt:
        raise InputError(f"{folder} is a folder: give the prompt with --prompt (or pass a CSV)")
    videos = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not videos:
        raise InputError(f"no videos ({', '.join(sorted(VIDEO_SUFFIXES))}) in {folder}")
    return items_for(videos, args)


def option_settings(args: argparse.Namespace) -> dict:
    return dict(seed=args.seed, start=args.start, duration=args.duration)


# -- names and files --------------------------------------------------------------------------------


def assign_names(items: list[Item]) -> None:
    """Output stems: the video's, plus a prompt slug when one video (or stem) has several rows.

    Names depend only on the list, so a rerun finds the same files and resumes.
    """
    stems = Counter(_stem(item) for item in items)
    for item in items:
        stem = _stem(item)
        item.name = stem if stems[stem] == 1 else f"{stem}-{slug(item.prompt, 40, empty='prompt')}"
    names = Counter(item.name for item in items)
    for i, item in enumerate(items, 1):
        if names[item.name] > 1:  # same video and prompt twice (other seeds, spans): number them
            item.name = f"{item.name}-{i}"
    if len({item.name for item in items}) < len(items):
        raise InputError("two clips would write the same output names; rename one of the videos")


def _stem(item: Item) -> str:
    return item.name or (item.video.stem if item.video is not None else slug(item.prompt, 40, empty='prompt'))


def output_paths(item: Item, args: argparse.Namespace) -> list[tuple[Path, Path | None]]:
    """(audio, video) per candidate; the `_k` suffix appears only with --samples > 1.

    Sound from the prompt alone has no video to write: its video path is None.
    """
    stems = [item.name] if args.samples == 1 else [f"{item.name}_{k}" for k in range(1, args.samples + 1)]
    return [
        (args.out / f"{s}.{args.format}", args.out / f"{s}.mp4" if item.video is not None else None)
        for s in stems
    ]


def item_files(item: Item, args: argparse.Namespace) -> list[Path]:
    """Every file `item` writes, in the order it writes them (each atomically): done once all exist.

    With stems, `selva.stems.save_stems`'s names: a FLAC per stem, the mix, its mp4, the tracks mp4.
    """
    if item.stems:
        out, name, suffix = args.out, item.name, args.format
        stems = [out / sound_file(name, k, s.prompt, suffix) for k, s in enumerate(item.stems)]
        return [*stems, out / f"{name}_mix.{suffix}", out / f"{name}_mix.mp4", out / f"{name}_tracks.mp4"]
    return [p for pair in output_paths(item, args) for p in pair if p is not None]


def _check_paths(items: list[Item], args: argparse.Namespace) -> None:
    """No item overwrites its video or another item's file (`a` with stems writes `a_mix.mp4`...)."""
    owners: dict[Path, Item] = {}
    for item in items:
        for path in item_files(item, args):
            if item.video is not None and path.resolve() == item.video.resolve():
                raise InputError(f"{path} would overwrite its input video; choose another --out")
            if path in owners:
                other = owners[path].where
                raise InputError(
                    f"{other} and {item.where} would both write {path}; rename one of the videos"
                )
            owners[path] = item


# -- running ----------------------------------------------------------------------------------------


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def table(self) -> str:
        per_clip = f"{self.seconds / self.done:.1f}" if self.done else "-"
        rows = {"done": self.done, "skipped": self.skipped, "failed": len(self.failed), "s/clip": per_clip}
        lines = ["", "summary"] + [f"  {name:<8}{value:>8}" for name, value in rows.items()]
        if self.failed:
            lines += ["failed clips:"] + [f"  {where}: {error}" for where, error in self.failed]
        return "\n".join(lines)


def plan_items(
    items: list[Item], args: argparse.Namespace, *, skip_existing: bool
) -> tuple[list[Item], Summary]:
    """Name the clips, take this process's shard, drop those whose outputs exist, clear stale .part files."""
    from selva.distributed import select_shard

    assign_names(items)
    _check_paths(items, args)  # on the whole list: every shard refuses the same list alike
    items = select_shard(items, args)  # after naming: names depend on the whole list, not the shard
    summary = Summary()
    pending = items
    if skip_existing:
        pending = [i for i in items if not all(p.is_file() for p in item_files(i, args))]
        summary.skipped = len(items) - len(pending)
        if summary.skipped:
            log.info("skipping %d clip(s) whose outputs exist in %s", summary.skipped, args.out)
    remove_stale_parts(pending, args)
    return pending, summary


# selva.containers.atomic_write (and selva.tracks) write NAME through `.NAME.<8 hex digits>.part`
# beside it and rename that into place; only a process killed outright (kill -9, power loss)
# leaves one behind.
_PART = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}\.part")


def remove_stale_parts(items: list[Item], args: argparse.Namespace) -> None:
    """Delete the temporary files a killed run left for the outputs `items` are about to write.

    Only those outputs' own: other files in the folder (another list's, a shard's) stay.
    """
    names: dict[Path, set[str]] = defaultdict(set)
    for item in items:
        for path in item_files(item, args):
            names[path.parent].add(path.name)
    removed = 0
    for folder, wanted in names.items():
        if not folder.is_dir():
            continue
        for part in folder.iterdir():
            match = _PART.fullmatch(part.name)
            if match and match["name"] in wanted and part.is_file():
                part.unlink(missing_ok=True)
                removed += 1
    if removed:
        log.info("removed %d unfinished file(s) a stopped run left in %s", removed, args.out)


def run_items(items: list[Item], args: argparse.Namespace, *, skip_existing: bool) -> int:
    pending, summary = plan_items(items, args, skip_existing=skip_existing)
    if pending:  # a finished batch reruns without loading any model
        from selva.variants import get_variant

        get_variant(args.variant)  # a misspelt variant fails before any folder is made
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the output folder {args.out}: {exc}") from None
        pipe = load_pipeline(args)
        try:
            run_loop(pipe, pending, args, summary)
        except KeyboardInterrupt:
            print_summary(summary, args)  # what finished is kept; say so before exiting
            raise
    print_summary(summary, args)
    return EXIT_FAILED if summary.failed else EXIT_OK


def run_loop(pipe, items: list[Item], args: argparse.Namespace, summary: Summary) -> None:
    # disable=None: no bars when stderr is no terminal (CI logs), where each clip's line suffices.
    bar = tqdm(
        items, desc="clips", unit="clip", disable=args.quiet or None, file=sys.stderr, dynamic_ncols=True
    )
    hinted = False
    for item in bar:
        start = time.perf_counter()
        try:
            announce = generate_one(pipe, item, args)
        except Exception as exc:  # report the clip and go on; Ctrl-C still stops the batch
            message = str(exc) if isinstance(exc, SelvaError) else f"{type(exc).__name__}: {exc}"
            log.error("%s: %s", item.where, message, exc_info=args.verbose > 0)
            if not hinted and is_out_of_memory(exc):
                log.error(OOM_HINT)  # once: the same advice under every failed clip would be noise
                hinted = True
            summary.failed.append((item.where, message))
        else:
            # Count before announcing: a Ctrl-C right after the line must not lose the clip.
            summary.done += 1
            summary.seconds += time.perf_counter() - start
            announce()
        bar.set_postfix(done=summary.done, failed=len(summary.failed), refresh=False)


def print_summary(summary: Summary, args: argparse.Namespace) -> None:
    if not args.quiet:
        print(summary.table(), flush=True)


def load_options(args: argparse.Namespace, variant: str | None = None) -> spec.LoadOptions:
    """The command line's model options as the one set every front end loads with."""
    return spec.LoadOptions(variant=variant or args.variant, **model_options(args)).checked()


def load_pipeline(args: argparse.Namespace, variant: str | None = None):
    from selva.loader import load_pipeline as load

    started = time.perf_counter()
    options = load_options(args, variant)
    log.info("loading %s models", options.variant)
    pipe = load(options)
    pipe.set_progress_bar_config(disable=args.quiet or None, file=sys.stderr, dynamic_ncols=True)
    log.info("models ready in %.1f s", time.perf_counter() - started)
    return pipe


def takes_folder(project_file: Path) -> Path:
    """Where a project file's takes live: `dog.selva.json` keeps them in `dog_takes/` beside it."""
    return project_file.parent / f"{project_name(project_file)}_takes"


def project_name(project_file: Path) -> str:
    """`dog.selva.json` (or `dog.json`) -> `dog`: the name its outputs are written under."""
    name = project_file.name
    for suffix in (PROJECT_SUFFIX, ".json"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return project_file.stem


def item_project(item: Item, args: argparse.Namespace) -> Project:
    """One clip of the batch as a project: one sound with --samples takes, or one sound per stem."""
    from selva.cli_scores import best_of_project
    from selva.render import single_sound
    from selva.stems import stems_project

    request = spec.GenerationRequest(
        item.video, item.prompt, item.negative, steps=args.steps, cfg_strength=args.cfg, seed=item.seed,
        duration=item.duration, start=item.start, num_samples=args.samples,
    )  # fmt: skip
    original = args.keep_original_audio or 0.0
    if item.stems:
        project = stems_project(replace(request, num_samples=1), item.stems, original_audio_gain=original)
    else:
        project = single_sound(request, original_audio_gain=original)
    project = replace(project, mix=delivery_settings(project.mix, args))
    return best_of_project(project, args, seed=item.seed)  # as drafted, or --best-of N takes per sound


def generate_one(pipe, item: Item, args: argparse.Namespace) -> Callable[[], None]:
    """Render and save one clip's project; returns the call that logs what was written."""
    from selva import media
    from selva.cli_scores import score_clip, write_clip_scores
    from selva.mux import mux
    from selva.project_files import delivered_take, output_rate, write_mix
    from selva.render import render

    if item.video is not None and not item.video.is_file():
        raise MediaError(f"no such video: {item.video}")
    save_project = getattr(args, "save_project", None)  # `selva generate` only
    takes = takes_folder(save_project) if save_project is not None else None
    rendered = render(pipe, item_project(item, args), takes)
    rendered, score_lines = score_clip(rendered, args, item.where)  # --score, --best-of; never fails
    written: list[Path] = []
    if item.stems:
        files = write_mix(rendered, args.out, item.name, audio_format=args.format)
        written += [*files.sound_audio, files.mix_audio]
        written += [p for p in (files.mix_video, files.tracks_video) if p is not None]
    else:
        gain = args.keep_original_audio or None
        # --best-of writes only the chosen take, under the names of a single one.
        kept = [rendered.project.sounds[0].chosen] if getattr(args, "best_of", None) else range(args.samples)
        rate = output_rate(rendered)
        for k, (audio_path, video_path) in zip(kept, output_paths(item, args), strict=True):
            # Audio first, mp4 last: an item counts as done once its last file exists.
            wave = delivered_take(rendered, 0, k)
            written.append(media.write_audio(audio_path, wave, rate))
            if video_path is not None:
                written.append(mux(
                    item.video, wave, rate, video_path, start=rendered.start,
                    duration=rendered.duration, original_audio_gain=gain, info=rendered.info,
                ))  # fmt: skip
    written += write_clip_scores(rendered.project, args.out / item.name, score_lines)
    if save_project is not None:
        written.append(rendered.project.save(save_project))
    from selva.progress import project_info

    lines = [f"{item.where} -> {', '.join(str(p) for p in written)} ({project_info(rendered)})"]
    return lambda: log.info("%s", "\n".join([*lines, *(score_lines or ())]))  # a line per scored take
