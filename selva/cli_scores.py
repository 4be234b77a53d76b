"""The command line's scores: `--score`, `--best-of N` and `--scorer`, checked, run and reported.

    --score            score every take of a clip with CLAP after generating: one log line per
                       take, `<name>_scores.json` beside the outputs (and in --save-project's file)
    --best-of N        (selva generate) N takes per sound; the best-scored one is the clip's take,
                       written as the usual outputs; the log names the dropped seeds and scores
    --scorer CKPT      another CLAP (a Hub repo id or a local folder) for either

Scoring never fails a clip: when the scorer cannot load (weights missing offline) or
score, the run logs a warning with the reason and writes the outputs unscored (with
--best-of, the first take). The scorer is loaded once per run, on the first clip that
needs it, and a failure to load is reported once.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from selva import spec
from selva.cli_options import ranged
from selva.spec import InputError, SelvaError

log = logging.getLogger(__name__)  # one of `selva.cli.CLI_LOGGERS`: its lines show at INFO

best_of_arg = ranged(spec.BEST_OF)


def scorer_arg(text: str) -> str:
    """A CLAP checkpoint: a local folder, or a Hub repo id such as laion/larger_clap_general."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = Path(text).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise argparse.ArgumentTypeError(f"{text} is a file; give the folder holding the CLAP's files")
    try:
        validate_repo_id(text)
    except HFValidationError:
        raise argparse.ArgumentTypeError(
            f"expected a Hub repo id such as {spec.SCORER_CHECKPOINT} or an existing folder, got {text!r}"
        ) from None
    return text


def add_score_options(p: argparse.ArgumentParser, *, best_of: bool) -> None:
    g = p.add_argument_group("scores (CLAP: a hint for choosing, not a judgement of quality)")
    g.add_argument(
        "--score",
        action="store_true",
        help="score each take (agreement with its prompt, leakage into the others) into <name>_scores.json",
    )
    if best_of:
        level = spec.BEST_OF
        g.add_argument(
            "--best-of",
            type=best_of_arg,
            metavar="N",
            help=f"make N takes per sound ({level.minimum:g}-{level.maximum:g}) and keep the best-scored one",
        )
    g.add_argument(
        "--scorer",
        type=scorer_arg,
        metavar="CHECKPOINT",
        help=f"the CLAP that scores: a Hub repo id or a local folder (default: {spec.SCORER_CHECKPOINT})",
    )


def check_score_options(args: argparse.Namespace) -> None:
    """What the options' types cannot check alone; before any model loads."""
    best_of = getattr(args, "best_of", None)
    if best_of is not None and getattr(args, "samples", 1) != 1:
        raise InputError("--best-of keeps one take per sound; leave out --samples (or drop --best-of)")
    if args.scorer is not None and not (args.score or best_of is not None):
        raise InputError("--scorer picks the CLAP for --score or --best-of: add one of them")


def wants_scores(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "score", False) or getattr(args, "best_of", None) is not None)


@dataclass
class RunScorer:
    """The run's scorer, loaded on first use; or the reason it could not be (reported once)."""

    checkpoint: str | None
    device: str | None
    scorer: object | None = None
    failure: str | None = None

    def get(self):
        if self.scorer is None and self.failure is None:
            from selva.scoring import load_scorer

            try:
                self.scorer = load_scorer(self.checkpoint, device=self.device)
            except Exception as exc:  # scoring is an extra: no failure of its stops a generation
                self.failure = _reason(exc)
                log.warning("scoring is off for this run; the outputs are written unscored: %s", self.failure)
        return self.scorer


def run_scorer(args: argparse.Namespace) -> RunScorer:
    """The scorer of this run (kept on its options, so a batch loads it, or fails, once)."""
    if getattr(args, "run_scorer", None) is None:
        args.run_scorer = RunScorer(args.scorer, args.device)
    return args.run_scorer


def score_clip(rendered, args: argparse.Namespace, where: str):
    """`rendered` with its takes scored (and with --best-of the best chosen and mixed); the log lines.

    Returns (rendered, lines): `lines` (one per take, and per sound with --best-of) are
    what the clip's announcement logs after its files; None when the clip goes unscored
    (no --score nor --best-of, or scoring failed: then a warning says why).
    """
    from selva.project_scores import choose_best, describe, remixed, score_lines, score_project

    if not wants_scores(args):
        return rendered, None
    best_of = getattr(args, "best_of", None)
    scorer = run_scorer(args).get()
    project = None
    if scorer is not None:
        try:
            project = score_project(scorer, rendered)
        except Exception as exc:  # as above: the clip is written unscored
            log.warning("%s: not scored, the outputs are written unscored: %s", where, _reason(exc))
    if project is None:
        if best_of is not None:
            seeds = ", ".join(str(s.take.seed) for s in rendered.project.sounds if s.take is not None)
            log.warning("%s: --best-of without scores keeps each sound's first take (seed %s)", where, seeds)
        return rendered, None
    dropped_lines = []
    if best_of is not None:
        project = choose_best(project)
        rendered = remixed(rendered, project)
        for k, sound in enumerate(project.sounds):
            kept, others = sound.take, [t for i, t in enumerate(sound.takes) if i != sound.chosen]
            dropped = ", ".join(f"seed {t.seed} (score {t.score.score:.3f})" for t in others)
            dropped_lines.append(
                f"{where}: best of {len(sound.takes)} for {k + 1}. {sound.prompt!r}: kept seed {kept.seed}: "
                f"{describe(kept.score)}; dropped {dropped}"
            )
    else:
        rendered = replace(rendered, project=project)
    lines = [f"{where}: {line}" for line in score_lines(project)] + dropped_lines
    return rendered, lines


def write_clip_scores(project, stem: Path, lines: list[str] | None) -> list[Path]:
    """`<stem>_scores.json` when the clip was scored (`lines` not None): the path written, or none."""
    from selva.project_scores import SCORES_SUFFIX, write_scores

    if lines is None:
        return []
    return [write_scores(project, stem.with_name(stem.name + SCORES_SUFFIX))]


def best_of_project(project, args: argparse.Namespace, *, seed: int | None):
    """`project` (one clip's, as drafted), or without --best-of N takes per sound in its place.

    Sound j of the clip gets seeds seed + j * N + k (k < N), as `draft_takes` draws them.
    """
    from selva.render import draft_takes

    if getattr(args, "best_of", None) is None:
        return project
    bare = tuple(replace(s, takes=(), chosen=None) for s in project.sounds)
    return draft_takes(
        replace(project, sounds=bare), seed=seed, count=args.best_of, steps=args.steps, cfg_strength=args.cfg
    )


def _reason(exc: Exception) -> str:
    return str(exc) if isinstance(exc, SelvaError) else f"{type(exc).__name__}: {exc}"
