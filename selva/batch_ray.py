"""`selva batch --ray`: a batch list over the GPUs of a Ray cluster (or of this machine) with Ray Data.

Two stages stream into each other:

1. decode, on CPUs: each clip is probed and its span decoded with `selva.media.read_frames`, so
   a missing or broken video fails here, on a cheap CPU task, and never occupies a GPU actor.
2. generate, on a pool of actors (`num_gpus=1` each when the cluster has GPUs, else CPU actors,
   `--workers` of them): each holds one `SelvaPipeline` for its whole life, so the models load
   once per GPU, not once per clip. Each row runs `selva.batch.generate_one`, as a plain batch
   does (a stems row makes its stems, mix and tracks), and every file is written atomically, so
   a clip either has all its files or is redone on a rerun.

The driver names the clips and drops finished ones before anything is scheduled (as plain
`selva batch` does), so a rerun resumes. A clip that fails in either stage becomes a result row
with its error: Ray Data would stop the whole dataset on an exception. The driver prints the
same summary table and returns the same exit codes as `selva batch`.

Workers are separate processes: they get the driver's HF/SELVA environment variables when Ray is
started here (SELVA_VARIANTS_FILE among them, so extra variants such as the tests' tiny ones are
known there as in the driver), and an optional `setup` callable that each actor runs before loading.

Ray is imported only when this module's functions run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selva.batch import EXIT_FAILED, EXIT_OK, Item, generate_one, load_pipeline, plan_items, print_summary
from selva.spec import DependencyError, InputError, SelvaError
from selva.stems import Stem

log = logging.getLogger(__name__)  # one of selva.cli.CLI_LOGGERS: its lines show at the CLI's level

# Forwarded to the workers of a Ray instance started here: where the weights are cached, and
# whether to stay offline. Not to a joined cluster, whose nodes have their own paths.
FORWARDED_ENV = ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "HF_TOKEN")
FORWARDED_PREFIX = "SELVA_"


# -- rows: items travel through Ray Data as one JSON string, since nullable cells (seed, duration)
# would otherwise come back as NaN or numpy scalars depending on the batch format.


def item_to_row(position: int, item: Item) -> dict[str, Any]:
    fields = dataclasses.asdict(item)
    fields["video"] = str(item.video)
    return {"position": position, "item": json.dumps(fields)}


def item_from_row(row: dict[str, Any]) -> Item:
    fields = json.loads(row["item"])
    fields["video"] = Path(fields["video"])
    fields["stems"] = tuple(Stem(**stem) for stem in fields["stems"])  # asdict made them dicts
    return Item(**fields)


def _failure(row: dict[str, Any], where: str, exc: BaseException) -> dict[str, Any]:
    message = str(exc) if isinstance(exc, SelvaError) else f"{type(exc).__name__}: {exc}"
    return {"position": row["position"], "where": where, "error": message, "seconds": 0.0, "frames": 0}


# -- stage 1: decode on CPUs -----------------------------------------------------------------------


def decode_stage(row: dict[str, Any]) -> dict[str, Any]:
    """Probe the clip and decode its span as the pipeline will (uint8 frames at the sync rate).

    The frames are counted, not shipped: the pipeline decodes from the path (it caches sync
    features by content), so sending them on would only load the object store.
    """
    from selva import media
    from selva.sequence import SYNC_FPS, SYNC_SIZE
    from selva.spec import MediaError
    from selva.windows import resolve_span

    item = item_from_row(row)
    try:
        if not item.video.is_file():
            raise MediaError(f"no such video: {item.video}")
        info = media.probe(item.video)
        # The pipeline's span rule; the cap on a span is the actor's (--max-duration), not known here.
        span = resolve_span(info.duration, item.start, item.duration, max_duration=math.inf)
        frames = media.read_frames(item.video, start=item.start, duration=span, fps=SYNC_FPS, size=SYNC_SIZE)
    except Exception as exc:  # a row, not a raise: one bad clip must not stop the dataset
        return _failure(row, item.where, exc)
    return {**row, "where": item.where, "error": "", "seconds": 0.0, "frames": int(frames.shape[0])}


# -- stage 2: generate on actors ----------------------------------------------------------------------


class PipelineActor:
    """One SelvaPipeline per actor (per GPU), loaded once; generates and saves one clip per row."""

    def __init__(self, args: argparse.Namespace, setup: Callable[[], None] | None = None) -> None:
        if setup is not None:
            setup()
        args = argparse.Namespace(**vars(args))
        args.quiet = True  # per-step bars from many actors would interleave; the driver reports
        self.args = args
        self.pipe = load_pipeline(args)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["error"]:  # failed in decode: pass the error on
            return row
        item = item_from_row(row)
        started = time.perf_counter()
        try:
            generate_one(self.pipe, item, self.args)
        except Exception as exc:  # a row, not a raise: the other clips go on
            return _failure(row, item.where, exc)
        return {**row, "seconds": time.perf_counter() - started}


# -- the driver ---------------------------------------------------------------------------------------


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the [data] extra: pyarrow and friends)
    except ImportError as exc:
        raise DependencyError(
            f"--ray needs Ray Data ({exc}); install it with: pip install 'selva-studio[ray]'"
        ) from None
    return ray


def forwarded_env() -> dict[str, str]:
    keys = [k for k in os.environ if k in FORWARDED_ENV or k.startswith(FORWARDED_PREFIX)]
    env = {k: os.environ[k] for k in keys}
    # Workers must import this same `selva` (a checkout, not only an installed copy).
    here = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    return env


@contextmanager
def ray_session(address: str, *, workers: int, verbose: bool) -> Iterator[Any]:
    """Join `address` ('auto', 'ray://...') or start a local Ray ('local'); shut down what we started.

    A Ray already initialised in this process (a notebook, a test) is used as it is and left up.
    """
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = dict(
        include_dashboard=False, log_to_driver=verbose, logging_level=logging.WARNING
    )
    if address == "local":
        # One logical CPU more than actors, so a decode task can always run beside CPU actors
        # (each takes one); over-counting logical CPUs only lets tasks share cores.
        options.update(
            num_cpus=max(os.cpu_count() or 1, workers + 1), runtime_env={"env_vars": forwarded_env()}
        )
    else:
        options.update(address=address)
    ray.init(**options)
    try:
        yield ray
    finally:
        ray.shutdown()


def run_ray(
    items: list[Item],
    args: argparse.Namespace,
    *,
    skip_existing: bool,
    setup: Callable[[], None] | None = None,
) -> int:
    """Run a named batch list on Ray Data; prints the summary and returns the CLI's exit code."""
    if getattr(args, "shard", None) is not None:
        raise InputError("--shard and --ray do not combine: Ray already spreads the list over its workers")
    pending, summary = plan_items(items, args, skip_existing=skip_existing)
    if not pending:  # a finished batch reruns without starting Ray
        print_summary(summary, args)
        return EXIT_OK
    from selva.variants import get_variant

    variant = get_variant(args.variant)  # a misspelt variant fails before Ray starts
    if args.ray == "local":
        from selva import hub

        # The actors share this machine's cache: fetching (and checking) once here means missing
        # weights fail before Ray starts, and N actors never download the same files at once.
        hub.resolve(variant, weights_dir=args.weights_dir, revision=args.revision)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {args.out}: {exc}") from None
    args = argparse.Namespace(**vars(args))
    args.out = args.out.resolve()  # workers may run in another folder
    rows = [item_to_row(k, dataclasses.replace(i, video=i.video.resolve())) for k, i in enumerate(pending)]
    requested = args.workers or 1
    with ray_session(args.ray, workers=requested, verbose=args.verbose > 0) as ray:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        workers = args.workers or max(gpus, 1)
        if gpus and args.device is None:
            args.device = "cuda"  # Ray hides the other GPUs: each actor sees its own as cuda:0
        log.info("ray: %d %s actor(s) for %d clip(s)", workers, "GPU" if gpus else "CPU", len(rows))
        try:
            for result in _stream(ray, rows, args, setup, workers=workers, gpus=gpus > 0):
                if result["error"]:
                    log.error("%s: %s", result["where"], result["error"])
                    summary.failed.append((result["where"], result["error"]))
                else:
                    summary.done += 1
                    summary.seconds += result["seconds"]
                    log.info("%s -> done (%.1f s)", result["where"], result["seconds"])
        except KeyboardInterrupt:
            print_summary(summary, args)  # finished clips are on disk; say so before exiting
            raise
        except Exception as exc:
            # An actor that cannot load (weights missing on a node) surfaces wrapped in Ray's
            # errors; the CLI's own error gives its exit code and one readable line.
            cause = selva_cause(exc)
            if cause is None:
                raise
            print_summary(summary, args)
            raise cause from None
    summary.failed.sort()  # results arrive in any order; the table should not
    print_summary(summary, args)
    return EXIT_FAILED if summary.failed else EXIT_OK


def selva_cause(exc: BaseException) -> SelvaError | None:
    """The SelvaError inside a Ray error (RayTaskError.cause, __cause__ or __context__), if any."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, SelvaError):
            return current
        todo += [getattr(current, "cause", None), current.__cause__, current.__context__]
    return None


def _stream(
    ray: Any,
    rows: list[dict[str, Any]],
    args: argparse.Namespace,
    setup: Callable[[], None] | None,
    *,
    workers: int,
    gpus: bool,
) -> Iterator[dict[str, Any]]:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = not args.quiet and sys.stderr.isatty()
    context.execution_options.preserve_order = False  # a slow clip must not hold back the others
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))  # one block per clip: spread
    dataset = dataset.map(decode_stage, num_cpus=1)
    dataset = dataset.map(
        PipelineActor,
        fn_constructor_kwargs=dict(args=args, setup=setup),
        concurrency=workers,
        num_gpus=1 if gpus else 0,
        num_cpus=0 if gpus else 1,  # GPU actors mostly wait on the GPU; CPU actors need a core
    )
    yield from dataset.iter_rows()
