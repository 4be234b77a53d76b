"""`selva download`: fetch and verify a variant's weights, and with --compile fill the compile cache.

`selva.cli` parses the options and calls `cmd_download`.
"""

from __future__ import annotations

import argparse
import logging
import time

from selva.batch import EXIT_OK
from selva.spec import DEFAULT_VARIANT

log = logging.getLogger(__name__)  # one of `selva.cli.CLI_LOGGERS`: its lines show at INFO


def cmd_download(args: argparse.Namespace) -> int:
    from selva import hub
    from selva.variants import get_variant, human_size, known_variants

    names = list(known_variants()) if args.all else args.variant or [DEFAULT_VARIANT]
    for name in dict.fromkeys(names):  # stops at the first failure: a half-filled image should not build
        started, size = time.perf_counter(), human_size(get_variant(name).download_bytes())
        log.info("%s: checking %s of weights, downloading what is missing", name, size)
        paths = hub.download(name, revision=args.revision, weights_dir=args.weights_dir)
        log.info("%s: verified in %.1f s", name, time.perf_counter() - started)
        if not args.quiet:
            print("\n".join(f"{name}\t{role}\t{path}" for role, path in paths.items()), flush=True)
        if args.compile:
            _compile_ahead(name, args)
    return EXIT_OK


def _compile_ahead(variant: str, args: argparse.Namespace) -> None:
    """`selva download --compile`: load `variant` compiled and warm it, saying what compiled and how long."""
    from selva.compile import warm_pipeline
    from selva.loader import load_pipeline
    from selva.spec import LoadOptions

    options = LoadOptions(
        variant=variant,
        device=args.device,
        precision=args.precision,
        compile=True,
        weights_dir=None if args.weights_dir is None else str(args.weights_dir),
        revision=args.revision,
    )
    started = time.perf_counter()
    pipe = load_pipeline(options)
    if pipe.device.type == "cpu":
        log.warning(
            "compiling %s for the CPU: minutes on a few cores, and little gained there (CUDA gains most)",
            variant,
        )
    report = warm_pipeline(pipe)
    log.info(
        "%s: compile cache filled for %s in %.1f s (%s)",
        variant,
        pipe.device,
        time.perf_counter() - started,
        report.line(),
    )
