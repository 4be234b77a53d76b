"""The work of `selva generate` and `selva batch`: clips to make, where they go, and the run.

    items_for / items_from_folder / items_from_csv   -> list[Item]   (every row checked, no model)
    assign_names, output_paths                       the files each item writes, stable across runs
    plan_items                                       names, this process's shard, skip what exists
    run_items = load_pipeline + run_loop              one model load, then item by item (generate_one)

`selva.cli` parses the options into an `argparse.Namespace` and calls down here; `selva.batch_ray`
runs the same items on Ray Data. Nothing here imports torch at module level: the models load in
`load_pipeline`, only once there is work to do.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from selva import spec
from selva.spec import InputError, MediaError, SelvaError, is_out_of_memory

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED = 0, 1  # every clip written (or there already); some failed
OOM_HINT = (
    "out of memory: try --variant small_16k, --offload on, --precision bf16 (or fp16), --device cpu, "
    "or less work per clip (a shorter --duration, fewer --samples)"
)
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg"}
CSV_COLUMNS = {"video", "prompt", "negative", "seed", "start", "duration"}


# -- values: one converter per option, shared by the flags and the CSV columns ------------------


def _ranged(limit: spec.Limit, *, cast: type = float, open_below: bool = False):
    """An argparse type for one of the spec's limits (`open_below`: the minimum itself is refused)."""

    def convert(text: str):
        try:
            value = float(text)
            if not math.isfinite(value) or (cast is int and not value.is_integer()):
                raise ValueError
            # int(text) keeps big seeds exact; int(value) takes the "7.0" that spreadsheets write.
            value = cast(text) if cast is float or text.strip().lstrip("+-").isdigit() else cast(value)
        except ValueError:
            kind = "a whole number" if cast is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if open_below and not limit.minimum < value <= limit.maximum:
            most = f" and at most {_show(limit.maximum)}" if limit.maximum < math.inf else ""
            raise argparse.ArgumentTypeError(f"must be above {_show(limit.minimum)}{most}, got {text}")
        if not limit.minimum <= value <= limit.maximum:
            if limit.maximum == math.inf:
                raise argparse.ArgumentTypeError(f"must be {_show(limit.minimum)} or more, got {text}")
            span = f"from {_show(limit.minimum)} to {_show(limit.maximum)}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {text}")
        return value

    return convert


def _show(x: float) -> str:
    return f"{x:g}" if abs(x) < 1e6 else str(int(x))


steps_arg = _ranged(spec.STEPS, cast=int)
samples_arg = _ranged(spec.NUM_SAMPLES, cast=int)
cfg_arg = _ranged(spec.CFG_STRENGTH)
seed_arg = _ranged(spec.SEED, cast=int)
start_arg = _ranged(spec.START)
# No upper bound here: the cap is --max-duration's, and the pipeline words that refusal.
duration_arg = _ranged(spec.Limit("duration", "Duration", 0.0, math.inf, None), open_below=True)
max_duration_arg = _ranged(spec.Limit("max_duration", "Max duration", 0.0, math.inf, None), open_below=True)
gain_arg = _ranged(spec.Limit("gain", "Gain", 0.0, math.inf, None))
stem_gain_arg = _ranged(spec.STEM_GAIN)


# -- work items -----------------------------------------------------------------------------------


@dataclass
class Item:
    video: Path | None  # None: sound from the prompt alone
    prompt: str
    where: str  # how messages name it: the path, or "LIST.csv line 4"
    negative: str = ""
    seed: int | None = None
    start: float = 0.0
    duration: float | None = None
    name: str = ""  # output stem, unique in the run


def items_for(videos: list[Path], args: argparse.Namespace) -> list[Item]:
    """One clip per video, every setting from the options; none: one clip from the prompt alone."""
    if not videos:
        if args.duration is None:
            raise InputError("give a VIDEO, or --duration SEC to make sound from the prompt alone")
        return [Item(None, args.prompt, f"prompt {args.prompt!r}", **_defaults(args))]
    missing = [str(v) for v in videos if not v.is_file()]
    if missing:
        raise InputError(f"no such video: {', '.join(missing)}")
    return [Item(v, args.prompt, str(v), **_defaults(args)) for v in videos]


def items_from_folder(folder: Path, args: argparse.Namespace) -> list[Item]:
    if not args.prompt:
        raise InputError(f"{folder} is a folder: give the prompt with --prompt (or pass a CSV)")
    videos = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not videos:
        raise InputError(f"no videos ({', '.join(sorted(VIDEO_SUFFIXES))}) in {folder}")
    return items_for(videos, args)


def items_from_csv(path: Path, args: argparse.Namespace) -> list[Item]:
    """Every row checked before any model loads: a typo should not cost a model load."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: Excel writes a BOM
            reader = csv.DictReader(f)
            columns = {(c or "").strip() for c in reader.fieldnames or []}
            rows = [(_clean(path, row, reader.line_num), reader.line_num) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    if not {"video", "prompt"} <= columns:
        have = ", ".join(sorted(columns)) or "none"
        raise InputError(f"{path} needs the columns video and prompt; it has: {have}")
    if columns - CSV_COLUMNS:
        unknown, allowed = ", ".join(sorted(columns - CSV_COLUMNS)), ", ".join(sorted(CSV_COLUMNS))
        raise InputError(f"{path}: unknown column(s) {unknown}; allowed: {allowed}")
    items = []
    for row, line in rows:
        where = f"{path} line {line}"
        if not row.get("video"):
            raise InputError(f"{where}: the video cell is empty")
        fields = _defaults(args)
        # A row's duration is checked against this run's cap now, before any model loads.
        capped = _ranged(spec.Limit("duration", "Duration", 0.0, args.max_duration, None), open_below=True)
        for column, convert in (("seed", seed_arg), ("start", start_arg), ("duration", capped)):
            if row.get(column):
                try:
                    fields[column] = convert(row[column])
                except argparse.ArgumentTypeError as exc:
                    raise InputError(f"{where}: {column} {exc}") from None
        fields["negative"] = row.get("negative") or fields["negative"]
        prompt = row["prompt"] or args.prompt
        if not prompt:
            raise InputError(f"{where}: the prompt cell is empty (or give a default with --prompt)")
        video = Path(row["video"]).expanduser()
        items.append(Item(path.parent / video, prompt, f"{where} ({video.name})", **fields))
    if not items:
        raise InputError(f"{path} has no rows")
    return items


def _clean(path: Path, row: dict, line: int) -> dict[str, str]:
    if None in row:  # DictReader's key for cells past the header's: an unquoted comma, most likely
        raise InputError(f"{path} line {line} has more cells than columns; quote texts with commas")
    return {k.strip(): (v or "").strip() for k, v in row.items()}


def _defaults(args: argparse.Namespace) -> dict:
    return dict(negative=args.negative or "", seed=args.seed, start=args.start, duration=args.duration)


def assign_names(items: list[Item]) -> None:
    """Output stems: the video's, plus a prompt slug when one video (or stem) has several rows.

    Names depend only on the list, so a rerun finds the same files and resumes.
    """
    stems = Counter(_stem(item) for item in items)
    for item in items:
        stem = _stem(item)
        item.name = stem if stems[stem] == 1 else f"{stem}-{_slug(item.prompt)}"
    names = Counter(item.name for item in items)
    for i, item in enumerate(items, 1):
        if names[item.name] > 1:  # same video and prompt twice (other seeds, spans): number them
            item.name = f"{item.name}-{i}"
    if len({item.name for item in items}) < len(items):
        raise InputError("two clips would write the same output names; rename one of the videos")


def _stem(item: Item) -> str:
    return item.name or (item.video.stem if item.video is not None else _slug(item.prompt))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-") or "prompt"


def output_paths(item: Item, args: argparse.Namespace) -> list[tuple[Path, Path | None]]:
    """(audio, video) per candidate; the `_k` suffix appears only with --samples > 1.

    Sound from the prompt alone has no video to write: its video path is None.
    """
    stems = [item.name] if args.samples == 1 else [f"{item.name}_{k}" for k in range(1, args.samples + 1)]
    return [
        (args.out / f"{s}.{args.format}", args.out / f"{s}.mp4" if item.video is not None else None)
        for s in stems
    ]


def _written(item: Item, args: argparse.Namespace) -> list[Path]:
    return [p for pair in output_paths(item, args) for p in pair if p is not None]


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
    """Name the clips, take this process's shard, and drop those whose outputs exist."""
    from selva.distributed import select_shard

    assign_names(items)
    items = select_shard(items, args)  # after naming: names depend on the whole list, not the shard
    for item in items:
        for path in _written(item, args):
            if item.video is not None and path.resolve() == item.video.resolve():
                raise InputError(f"{path} would overwrite its input video; choose another --out")
    summary = Summary()
    pending = items
    if skip_existing:
        pending = [i for i in items if not all(p.is_file() for p in _written(i, args))]
        summary.skipped = len(items) - len(pending)
        if summary.skipped:
            log.info("skipping %d clip(s) whose outputs exist in %s", summary.skipped, args.out)
    return pending, summary


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


def load_pipeline(args: argparse.Namespace):
    from selva.pipeline import SelvaPipeline

    started = time.perf_counter()
    log.info("loading %s models", args.variant)
    pipe = SelvaPipeline.from_pretrained(
        args.variant,
        device=args.device,
        dtype=args.precision,
        offload=args.offload,
        weights_dir=args.weights_dir,
        revision=args.revision,
        max_duration=args.max_duration,
        compile=args.compile,
    )
    pipe.set_progress_bar_config(disable=args.quiet or None, file=sys.stderr, dynamic_ncols=True)
    log.info("models ready in %.1f s", time.perf_counter() - started)
    return pipe


def generate_one(pipe, item: Item, args: argparse.Namespace) -> Callable[[], None]:
    """Generate and save one clip; returns the call that logs what was written."""
    if item.video is not None and not item.video.is_file():
        raise MediaError(f"no such video: {item.video}")
    if getattr(args, "stems", None):
        return generate_stems_one(pipe, item, args)
    out = pipe(
        item.video,
        item.prompt,
        item.negative,
        steps=args.steps,
        cfg_strength=args.cfg,
        seed=item.seed,
        duration=item.duration,
        start=item.start,
        num_samples=args.samples,
    )
    written = []
    for k, (audio_path, video_path) in enumerate(output_paths(item, args)):
        # Audio first, mp4 last: an item counts as done once its last file exists.
        written.append(out.save_audio(audio_path, k))
        if video_path is not None:
            written.append(out.save_video(video_path, k, original_audio_gain=args.keep_original_audio))
    span = f"{out.start:.2f}-{out.start + out.duration:.2f} s"
    names = ", ".join(str(p) for p in written)
    return lambda: log.info("%s -> %s (seed %d, %s)", item.where, names, out.seed, span)


def generate_stems_one(pipe, item: Item, args: argparse.Namespace) -> Callable[[], None]:
    """Generate and save every stem of `args.stems` and their mix for one clip."""
    from selva.stems import generate_stems, save_stems, stems_info

    base = spec.GenerationRequest(
        item.video, item.prompt, steps=args.steps, cfg_strength=args.cfg, seed=item.seed,
        duration=item.duration, start=item.start,
    )  # fmt: skip
    gain = args.keep_original_audio or 0.0
    if gain > spec.ORIGINAL_AUDIO_GAIN.maximum:
        raise InputError(f"--keep-original-audio with stems is at most {spec.ORIGINAL_AUDIO_GAIN.maximum:g}")
    out = generate_stems(pipe, base, args.stems, original_audio_gain=gain)
    files = save_stems(out, args.out, item.name, audio_format=args.format)
    written = [*files.stem_audio, files.mix_audio, files.mix_video, files.tracks_video]
    names = ", ".join(str(p) for p in written)
    return lambda: log.info("%s -> %s (%s)", item.where, names, stems_info(out))
