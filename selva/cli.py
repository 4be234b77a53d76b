"""The `selva` command line: sonify one clip, a list of clips, or fetch the weights.

    selva generate VIDEO [VIDEO...] --prompt TEXT [--prompt TEXT...] [options]
    selva batch LIST.csv | FOLDER [--prompt TEXT...] [options]
    selva render PROJECT.selva.json [options]
    selva edit PROJECT.selva.json --sound N --region A B [--seed S] [--prompt TEXT] [options]
    selva download [--variant NAME ...] [--compile [--device DEV]]

Exit codes, for scripts: `EXIT_CODES` below (each command's --help prints them).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from selva import spec
from selva.batch import OOM_HINT, items_for, items_from_folder, run_items
from selva.batch_csv import items_from_csv
from selva.cli_download import cmd_download
from selva.cli_options import (
    DELIVERY_DEFAULTS,
    add_limit_option,
    check_options,
    duration_arg,
    loudness_arg,
    max_duration_arg,
    sample_rate_arg,
    seed_arg,
    start_arg,
    stem_gain_arg,
)
from selva.cli_project import cmd_edit, cmd_render
from selva.cli_scores import add_score_options, check_score_options
from selva.spec import (
    DEFAULT_VARIANT,
    DependencyError,
    InputError,
    SelvaError,
    WeightsError,
    is_out_of_memory,
)

log = logging.getLogger(__name__)

EXIT_USAGE, EXIT_WEIGHTS, EXIT_UNEXPECTED = 2, 3, 4  # 0 and 1 are a run's: see selva.batch
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
# The modules whose lines are the command's own output: shown at INFO (the rest of `selva` at -v); the
# compile modules say where kernels are cached and what each compile took.
CLI_LOGGERS = (
    "selva.cli", "selva.cli_project", "selva.cli_download", "selva.cli_scores", "selva.batch",
    "selva.batch_ray", "selva.compile", "selva.compile_cache",
)  # fmt: skip
PRECISIONS = spec.PRECISIONS
OFFLOADS = (*spec.OFFLOADS, *spec.OFFLOAD_ALIASES)


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
        "With several --prompt (or a --gain): stems, OUT/<stem>_<k>-<prompt>.flac per stem,\n"
        "OUT/<stem>_mix.flac and .mp4, and OUT/<stem>_tracks.mp4 (the mix as default track, one\n"
        "track per stem titled by its prompt, and 'original' when the video has sound)."
    )
    p = sub.add_parser("generate", help="sonify videos with a prompt (or stems)", description=about, **shared)
    p.add_argument("videos", nargs="*", type=Path, metavar="VIDEO")
    _sound_options(p, required=True)
    _generation_options(p)

    about = (
        "LIST.csv: a header row, then one clip per row. Columns: video (relative to the CSV's\n"
        "folder) and prompt, optionally negative, gain, seed, start and duration. More stems per\n"
        f"row: prompt_2 ... prompt_{spec.MAX_STEMS}, each with its negative_k and gain_k. "
        "A row with several\n"
        "prompts (or a gain) writes the files of `selva generate` with several --prompt. Empty\n"
        "cells take the matching option; a row with no prompt takes every --prompt.\n"
        "A FOLDER is sonified with --prompt (several: stems for every video).\n"
        "Clips whose outputs exist are skipped."
    )
    p = sub.add_parser("batch", help="sonify a CSV list or a folder (resumable)", description=about, **shared)
    p.add_argument("source", type=Path, metavar="LIST.csv|FOLDER")
    p.add_argument("--overwrite", action="store_true", help="redo clips whose outputs already exist")
    _sound_options(p, required=False)
    _generation_options(p)
    from selva.distributed import add_batch_options

    add_batch_options(p)

    about = (
        "Render a project file (written by `selva generate --save-project` or the app): generate\n"
        "the takes it is missing (their audio is kept in <name>_takes/ beside the file), mix the\n"
        "chosen takes and write OUT/<name>_<k>-<prompt>.flac per sound, OUT/<name>_mix.flac and,\n"
        "with a video, OUT/<name>_mix.mp4 and OUT/<name>_tracks.mp4. The file is updated with\n"
        "the takes' audio, so a later render (or an edit) continues from it."
    )
    p = sub.add_parser("render", help="render a project file", description=about, **shared)
    p.add_argument("project", type=Path, metavar="PROJECT.selva.json")
    p.add_argument("--out", type=Path, default=Path("outputs"), metavar="DIR", help="default: %(default)s")
    p.add_argument("--format", choices=["flac", "wav"], default="flac", help="default: flac")
    _bundle_option(p)
    add_score_options(p, best_of=False)
    _delivery_options(p, new_project=False)
    _model_options(p, variant_default=None)

    about = (
        "Re-roll a region of a rendered project's take: seconds A..B of sound N's take (default the\n"
        "chosen one) are generated anew from a new seed (shown; --seed makes it again) while the\n"
        "rest of the take stays sample for sample. The region is widened to whole latent frames,\n"
        "joined with short equal-power fades inside it; the edited take is added to the sound,\n"
        "chosen, kept in <name>_takes/, and the mix is delivered again as `selva render` does."
    )
    p = sub.add_parser("edit", help="re-roll a region of a take", description=about, **shared)
    p.add_argument("project", type=Path, metavar="PROJECT.selva.json")
    p.add_argument("--sound", type=int, required=True, metavar="N", help="the sound, from 1")
    p.add_argument("--take", type=int, metavar="T", help="its take, from 1 (default: the chosen one)")
    p.add_argument("--region", type=float, nargs=2, required=True, metavar=("A", "B"),
                   help="seconds from the span's start")  # fmt: skip
    p.add_argument("--seed", type=seed_arg, help="the region's seed (default: a new one, shown)")
    p.add_argument("--prompt", help="a prompt for the region alone (default: the sound's)")
    p.add_argument("--out", type=Path, default=Path("outputs"), metavar="DIR", help="default: %(default)s")
    p.add_argument("--format", choices=["flac", "wav"], default="flac", help="default: flac")
    _bundle_option(p)
    _delivery_options(p, new_project=False)
    _model_options(p, variant_default=None)

    about = (
        "Download and verify every file a variant needs (for Docker images and Spaces builds).\n"
        "With --weights-dir DIR the files also land in DIR, in the layout --weights-dir reads.\n"
        "With --compile, also load each variant on --device, compile it and run it once over the\n"
        "shapes a start meets first: the kernels land in the compile cache (under the HF cache),\n"
        "so a later --compile start reads them instead of compiling (on CUDA, minutes saved)."
    )
    p = sub.add_parser("download", help="fetch and verify the weights", description=about, **shared)
    p.add_argument(
        "--variant", action="append", metavar="NAME", help=f"repeatable; default: {DEFAULT_VARIANT}"
    )
    p.add_argument("--all", action="store_true", help="every variant")
    g = p.add_argument_group("compiling ahead")
    g.add_argument("--compile", action="store_true", help="also fill the compile cache (see above)")
    g.add_argument("--device", metavar="DEV", help="the device to compile for (default: the best one)")
    g.add_argument("--precision", choices=PRECISIONS, default="auto", help="default: auto")
    _common_options(p)
    return parser


def _sound_options(p: argparse.ArgumentParser, *, required: bool) -> None:
    g = p.add_argument_group("sound")
    g.add_argument(
        "--prompt",
        required=required,
        action="append",
        metavar="TEXT",
        help="the sound to make, e.g. 'dog barking'; repeat for stems (up to 4) and a mix"
        + ("" if required else "; for a folder, or CSV rows without one"),
    )
    g.add_argument(
        "--negative",
        action="append",
        metavar="TEXT",
        help="sound to steer away from, e.g. 'wind noise'; one per --prompt for stems",
    )
    g.add_argument(
        "--gain",
        type=stem_gain_arg,
        action="append",
        metavar="GAIN",
        help="makes stems: each stem's level in the mix (0-2), one per --prompt (default: 1 each)",
    )


def _generation_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--out", type=Path, default=Path("outputs"), metavar="DIR", help="default: %(default)s")
    add_limit_option(g, "--steps", spec.STEPS, "N", "flow steps")
    add_limit_option(g, "--cfg", spec.CFG_STRENGTH, "X", "guidance")
    g.add_argument(
        "--seed", type=seed_arg, default=spec.SEED.default, metavar="N", help="default: random (logged)"
    )
    add_limit_option(g, "--samples", spec.NUM_SAMPLES, "N", "candidates per clip")
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
    if p.prog.endswith("generate"):
        g.add_argument(
            "--save-project",
            type=Path,
            metavar="FILE",
            help="also write the project file (FILE.selva.json; takes kept beside it) for `selva render`",
        )
    g.add_argument(
        "--start", type=start_arg, default=spec.START.default, metavar="SEC", help="default: %(default)g"
    )
    what = "mix in the video's own audio at GAIN, 1 being its own level"
    add_limit_option(g, "--keep-original-audio", spec.ORIGINAL_AUDIO_GAIN, "GAIN", what, default=False)
    g.add_argument("--format", choices=["flac", "wav"], default="flac", help="default: flac")
    add_score_options(p, best_of=p.prog.endswith("generate"))
    _delivery_options(p, new_project=True)
    _model_options(p, variant_default=DEFAULT_VARIANT)


def _bundle_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bundle",
        action="store_true",
        help="also write OUT/<sounds and seeds>.zip: the mixed and multi-track mp4s, each sound's "
        "chosen take as FLAC and WAV, and the project file (the app's download bundle)",
    )


def _delivery_options(p: argparse.ArgumentParser, *, new_project: bool) -> None:
    # A new project (generate, batch) is delivered at the spec's rate and loudness by default; for
    # `selva render` an option not given is None, so the project's own settings stay.
    rate, loudness = DELIVERY_DEFAULTS if new_project else (None, None)
    default = rate if new_project else "the project's"
    g = p.add_argument_group("delivery")
    rates = ",".join(str(r) for r in spec.OUTPUT_RATES)
    g.add_argument(
        "--sample-rate",
        type=sample_rate_arg,
        default=rate,
        metavar=f"{{{rates}}}",
        help=f"rate of every file written: 48000 for video editors, or the model's own (default: {default})",
    )
    lufs = [f"{t:g}" for t in spec.LOUDNESS_TARGETS.values() if t is not None]
    targets = ",".join([spec.LOUDNESS_OFF, *lufs])
    ceiling = spec.TRUE_PEAK_CEILING_DB
    g.add_argument(
        "--loudness",
        type=loudness_arg,
        default=loudness,
        metavar=f"{{{targets}}}",
        help=f"integrated loudness of the mix in LUFS (-23 EBU R128, -16, -14 streaming), true peak under "
        f"{ceiling:g} dBTP; off: peak-normalised (default: {default if loudness is None else loudness})",
    )


def _model_options(p: argparse.ArgumentParser, *, variant_default: str | None) -> None:
    g = p.add_argument_group("models")
    shown = "default: %(default)s" if variant_default else "default: the project's"
    g.add_argument("--variant", default=variant_default, metavar="NAME", help=shown)
    g.add_argument("--device", metavar="DEV", help="cuda, cuda:1, mps or cpu (default: the best one)")
    g.add_argument("--precision", choices=PRECISIONS, default="auto", help="default: auto")
    g.add_argument("--offload", choices=OFFLOADS, default="auto", help="text encoders wait on the CPU")
    g.add_argument("--compile", action="store_true", help="torch.compile the networks (fastest on CUDA)")
    if variant_default is None:  # `selva render`: the cap only guards new spans, a project's is set
        p.set_defaults(max_duration=spec.DEFAULT_MAX_DURATION)
    _common_options(p)


def _common_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("weights and logs")
    g.add_argument("--weights-dir", type=Path, metavar="DIR", help="local weights folder (default: HF cache)")
    g.add_argument("--revision", metavar="REV", help="branch, tag or commit of jnwnlee/SelVA (default: main)")
    g.add_argument("-q", "--quiet", action="store_true", help="only print errors")
    g.add_argument("-v", "--verbose", action="count", default=0, help="debug logs and tracebacks")


# -- commands -------------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    check_options(args)
    check_score_options(args)
    items = items_for(args.videos, args)
    if args.save_project is not None and len(items) != 1:
        raise InputError("--save-project writes the project of one clip: give one VIDEO (or none)")
    if not args.videos and args.out.suffix.lower() in (".flac", ".wav"):
        # Sound from the prompt alone, written to the file --out names rather than into a folder.
        items[0].name = args.out.stem
        args.format = args.out.suffix.lower()[1:]
        args.out = args.out.parent
    return run_items(items, args, skip_existing=False)


def cmd_batch(args: argparse.Namespace) -> int:
    check_options(args)
    check_score_options(args)
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


COMMANDS = {
    "generate": cmd_generate,
    "batch": cmd_batch,
    "render": cmd_render,
    "edit": cmd_edit,
    "download": cmd_download,
}


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
    own = [logging.getLogger(name) for name in CLI_LOGGERS]
    saved = [(logger, logger.level) for logger in (root, package, *own)]
    handler = _TqdmHandler()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    package.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    for logger in own:
        logger.setLevel(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO)
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
