"""The `selva` command line: sonify one clip, a list of clips, or fetch the weights.

    selva generate VIDEO [VIDEO...] --prompt TEXT [options]
    selva batch LIST.csv | FOLDER [--prompt TEXT] [options]
    selva download [--variant NAME ...]

Exit codes, for scripts:
    0    every clip was written (or its outputs already existed)
    1    one or more clips failed; the others were written (rerun to retry them)
    2    usage error or bad input: options, missing files, malformed CSV, unknown variant
    3    weights missing, corrupt or not downloadable
    4    unexpected error (out of memory, an unsupported library version, a bug); -v: traceback
    130  interrupted (Ctrl-C); finished clips are kept (a batch rerun resumes)
    143  terminated (SIGTERM); as 130
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from selva import spec
from selva.spec import (
    DEFAULT_VARIANT,
    DependencyError,
    InputError,
    MediaError,
    SelvaError,
    WeightsError,
    is_out_of_memory,
)

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_WEIGHTS, EXIT_UNEXPECTED = 0, 1, 2, 3, 4
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM, as shells report them
EXIT_CODES = """exit codes:
  0    every clip was written (or its outputs already existed)
  1    one or more clips failed; the others were written (rerun to retry them)
  2    usage error or bad input: options, missing files, malformed CSV, unknown variant
  3    weights missing, corrupt or not downloadable
  4    unexpected error (out of memory, an unsupported library version, a bug); -v: traceback
  130  interrupted (Ctrl-C); finished clips are kept (a batch rerun resumes)
  143  terminated (SIGTERM); as 130
"""
OOM_HINT = (
    "out of memory: try --variant small_16k, --offload on, --precision bf16 (or fp16), --device cpu, "
    "or less work per clip (a shorter --duration, fewer --samples)"
)
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg"}
CSV_COLUMNS = {"video", "prompt", "negative", "seed", "start", "duration"}
PRECISIONS = spec.PRECISIONS
OFFLOADS = (*spec.OFFLOADS, *spec.OFFLOAD_ALIASES)


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


# -- the parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from selva import __version__

    shared = dict(epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    about = "SelVA: generate the sound of the source a prompt names, for one video or many."
    parser = argparse.ArgumentParser(prog="selva", description=about, **shared)
    parser.add_argument("--version", action="version", version=f"selva {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    about = (
        "Write OUT/<stem>.flac and OUT/<stem>.mp4 per video (OUT/<stem>_<k>.* with --samples).\n"
        "With no VIDEO, make --duration seconds of sound from the prompt alone: OUT may then\n"
        "be the audio file itself (x.flac, x.wav) or a folder.\n"
        "With several --prompt: OUT/<stem>_<k>-<prompt>.flac per stem, OUT/<stem>_mix.flac and .mp4,\n"
        "and OUT/<stem>_tracks.mp4 (the mix as default track, one track per stem, 'original')."
    )
    p = sub.add_parser("generate", help="sonify videos with one prompt", description=about, **shared)
    p.add_argument("videos", nargs="*", type=Path, metavar="VIDEO")
    p.add_argument(
        "--prompt",
        required=True,
        action="append",
        metavar="TEXT",
        help="the sound to make, e.g. 'dog barking'; repeat for stems (up to 4) and a mix",
    )
    _generation_options(p, repeatable=True)
    p.add_argument(
        "--gain",
        type=stem_gain_arg,
        action="append",
        metavar="GAIN",
        help="with several --prompt: each stem's level in the mix, in order (default: 1 each)",
    )

    about = (
        "LIST.csv has the columns video and prompt, and optionally negative, seed, start and\n"
        "duration; video paths are relative to the CSV's folder. Empty cells take the matching\n"
        "option. A FOLDER is sonified with --prompt. Clips whose outputs exist are skipped."
    )
    p = sub.add_parser("batch", help="sonify a CSV list or a folder (resumable)", description=about, **shared)
    p.add_argument("source", type=Path, metavar="LIST.csv|FOLDER")
    p.add_argument("--prompt", metavar="TEXT", help="prompt for a folder, or for CSV rows without one")
    p.add_argument("--overwrite", action="store_true", help="redo clips whose outputs already exist")
    _generation_options(p)
    from selva.distributed import add_batch_options

    add_batch_options(p)

    about = (
        "Download and verify every file a variant needs (for Docker images and Spaces builds).\n"
        "With --weights-dir DIR the files also land in DIR, in the layout --weights-dir reads."
    )
    p = sub.add_parser("download", help="fetch and verify the weights", description=about, **shared)
    p.add_argument(
        "--variant", action="append", metavar="NAME", help=f"repeatable; default: {DEFAULT_VARIANT}"
    )
    p.add_argument("--all", action="store_true", help="every variant")
    _common_options(p)
    return parser


def _generation_options(p: argparse.ArgumentParser, *, repeatable: bool = False) -> None:
    g = p.add_argument_group("generation")
    g.add_argument(
        "--negative",
        action="append" if repeatable else "store",
        metavar="TEXT",
        help="sound to steer away from, e.g. 'wind noise'"
        + ("; one per --prompt for stems" if repeatable else ""),
    )
    g.add_argument("--out", type=Path, default=Path("outputs"), metavar="DIR", help="default: %(default)s")
    g.add_argument("--steps", type=steps_arg, default=25, metavar="N", help="flow steps (default: 25)")
    g.add_argument("--cfg", type=cfg_arg, default=4.5, metavar="X", help="guidance (default: %(default)s)")
    g.add_argument("--seed", type=seed_arg, metavar="N", help="default: random (logged)")
    g.add_argument("--samples", type=samples_arg, default=1, metavar="N", help="candidates per clip")
    g.add_argument(
        "--duration", type=duration_arg, metavar="SEC", help="default: the rest of the video, up to the cap"
    )
    g.add_argument(
        "--max-duration",
        type=max_duration_arg,
        default=spec.DEFAULT_MAX_DURATION,
        metavar="SEC",
        help="longest span (default: %(default)g s; past 8 s it runs in overlapping 8 s windows)",
    )
    g.add_argument("--start", type=start_arg, default=0.0, metavar="SEC", help="default: 0")
    g.add_argument(
        "--keep-original-audio", type=gain_arg, metavar="GAIN", help="mix in the video's own audio at GAIN"
    )
    g.add_argument("--format", choices=["flac", "wav"], default="flac", help="default: flac")
    g = p.add_argument_group("models")
    g.add_argument("--variant", default=DEFAULT_VARIANT, metavar="NAME", help="default: %(default)s")
    g.add_argument("--device", metavar="DEV", help="cuda, cuda:1, mps or cpu (default: the best one)")
    g.add_argument("--precision", choices=PRECISIONS, default="auto", help="default: auto")
    g.add_argument("--offload", choices=OFFLOADS, default="auto", help="text encoders wait on the CPU")
    g.add_argument("--compile", action="store_true", help="torch.compile the networks (fastest on CUDA)")
    _common_options(p)


def _common_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("weights and logs")
    g.add_argument("--weights-dir", type=Path, metavar="DIR", help="local weights folder (default: HF cache)")
    g.add_argument("--revision", metavar="REV", help="branch, tag or commit of jnwnlee/SelVA (default: main)")
    g.add_argument("-q", "--quiet", action="store_true", help="only print errors")
    g.add_argument("-v", "--verbose", action="count", default=0, help="debug logs and tracebacks")


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
            _print_summary(summary, args)  # what finished is kept; say so before exiting
            raise
    _print_summary(summary, args)
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


def _print_summary(summary: Summary, args: argparse.Namespace) -> None:
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


# -- commands -------------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    from selva.stems import Stem, check_stems

    prompts, negatives, gains = args.prompt, args.negative or [], args.gain or []
    if len(prompts) == 1 and not gains:
        if len(negatives) > 1:
            raise InputError("give one --negative per --prompt")
        args.prompt, args.negative = prompts[0], (negatives[0] if negatives else None)
        args.stems = None
        items = items_for(args.videos, args)
        if not args.videos and args.out.suffix.lower() in (".flac", ".wav"):
            # Sound from the prompt alone, written to the file --out names rather than into a folder.
            items[0].name = args.out.stem
            args.format = args.out.suffix.lower()[1:]
            args.out = args.out.parent
        return run_items(items, args, skip_existing=False)
    # Several prompts: stems. Negatives and gains pair with the prompts in order.
    for flag, values in (("--negative", negatives), ("--gain", gains)):
        if values and len(values) != len(prompts):
            raise InputError(f"give {flag} once per --prompt ({len(prompts)}) or not at all")
    if not args.videos:
        raise InputError("stems follow a video: give the VIDEO (sound from text alone takes one --prompt)")
    if args.samples != 1:
        raise InputError("--samples works with one --prompt; with stems each stem is one generation")
    args.stems = check_stems(
        Stem(prompt, negatives[k] if negatives else "", gains[k] if gains else 1.0)
        for k, prompt in enumerate(prompts)
    )
    args.prompt, args.negative = prompts[0], None
    return run_items(items_for(args.videos, args), args, skip_existing=False)


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


def cmd_batch(args: argparse.Namespace) -> int:
    source: Path = args.source
    if source.is_dir():
        items = items_from_folder(source, args)
    elif source.is_file():
        items = items_from_csv(source, args)
    else:
        raise InputError(f"no such CSV file or folder: {source}")
    if args.ray is not None:
        from selva.batch_ray import run_ray  # Ray is imported only here

        return run_ray(items, args, skip_existing=not args.overwrite)
    return run_items(items, args, skip_existing=not args.overwrite)


def cmd_download(args: argparse.Namespace) -> int:
    from selva import hub
    from selva.variants import VARIANTS, get_variant, human_size

    names = list(VARIANTS) if args.all else args.variant or [DEFAULT_VARIANT]
    for name in dict.fromkeys(names):  # stops at the first failure: a half-filled image should not build
        started, size = time.perf_counter(), human_size(get_variant(name).download_bytes())
        log.info("%s: checking %s of weights, downloading what is missing", name, size)
        paths = hub.download(name, revision=args.revision, weights_dir=args.weights_dir)
        log.info("%s: verified in %.1f s", name, time.perf_counter() - started)
        if not args.quiet:
            print("\n".join(f"{name}\t{role}\t{path}" for role, path in paths.items()), flush=True)
    return EXIT_OK


COMMANDS = {"generate": cmd_generate, "batch": cmd_batch, "download": cmd_download}


# -- entry point ------------------------------------------------------------------------------------


class _TqdmHandler(logging.Handler):
    """Log lines go above the progress bars instead of through them; only INFO lines go bare."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno != logging.INFO:
                text = f"{record.levelname.lower()}: {text}"
            tqdm.write(text, file=sys.stderr)
        except Exception:
            self.handleError(record)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be: the same unwinding keeps finished clips and the summary."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    # Only the main thread may set handlers; in-process callers on other threads keep the default.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        # None: the previous handler was not set from Python; the default is the best guess.
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _report_unexpected(exc: Exception, args: argparse.Namespace) -> None:
    log.debug("traceback:", exc_info=exc)
    text = " ".join(str(exc).split())  # one line even when a library's message spans several
    print(f"selva: unexpected error: {type(exc).__name__}" + (f": {text}" if text else ""), file=sys.stderr)
    if is_out_of_memory(exc):
        print(f"selva: {OOM_HINT}", file=sys.stderr)
    if not args.verbose:
        print("selva: rerun with -v for the traceback", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code (the console script exits with it)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and usage errors; callers get the code
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE

    # Logging belongs to the process: set up here, never at import, and undone on return so that
    # in-process callers (tests, notebooks) keep theirs. One handler on the root logger shows every
    # library's warnings once (and stops open_clip's root `logging.info` from installing a second
    # handler); the CLI's own lines show at INFO, the rest of the package only with -v.
    root, package = logging.getLogger(), logging.getLogger("selva")
    saved = [(logger, logger.level) for logger in (root, package, log)]
    handler = _TqdmHandler()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    package.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    log.setLevel(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO)
    try:
        with _sigterm_as_interrupt():
            return COMMANDS[args.command](args)
    except _Terminated:
        print("selva: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("selva: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SelvaError as exc:
        log.debug("traceback:", exc_info=True)
        print(f"selva: error: {exc}", file=sys.stderr)
        if isinstance(exc, DependencyError):
            return EXIT_UNEXPECTED
        return EXIT_WEIGHTS if isinstance(exc, WeightsError) else EXIT_USAGE
    except Exception as exc:  # not 1: scripts must tell "some clips failed" from "nothing could run"
        _report_unexpected(exc, args)
        return EXIT_UNEXPECTED
    finally:
        root.removeHandler(handler)
        for logger, level in saved:
            logger.setLevel(level)
