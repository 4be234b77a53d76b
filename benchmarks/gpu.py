"""SelVA Studio on a GPU: matmul ceiling, load, every stage eager and compiled, and a check against the CPU.

Written for a short loan of a GPU machine (benchmarks/README.md, "On a lent
GPU"), so it measures the most wanted numbers first, and every phase prints
one line `GPU_JSON {...}` the moment it is measured and appends the same JSON
to `--json-out`: a run cut short by a time limit still leaves what it got.

Phases, in order:

1. `env`: versions, device, precision and why it was picked;
2. `matmul`: the bf16 throughput of a large matrix product, the ceiling the
   networks' own matrix products run under;
3. for each variant (default small_16k, then large_44k), on random weights at
   the real sizes and layouts (`benchmarks/build_weights.py`, built once):
   `build`, `load` (`selva.loader.load_pipeline`), then eager and compiled
   (`selva.compile.compile_pipeline`; its `compile` phase): `warmup` (the
   calls that compile and record CUDA graphs, timed), `stages` (each public
   stage method of the pipeline alone, synchronised: text encoders, frame
   decoding, TextSynch, noise, conditions, the flow with its steps/s, VAE,
   vocoder; peak CUDA memory), `e2e` (a first run with the caches cleared,
   pipeline call plus mux into an mp4, then a re-roll with a new seed);
   for the first variant also `check`: every stage run on the device and, in
   float32, on the CPU from the same inputs (the CPU's own outputs of the
   previous stage), compared by relative L2 distance against `--tolerance`
   (sync features, latent, mel, audio), once with the eager networks and once
   with the compiled ones;
4. `done`, and a summary table.

Usage (from the repository root):

    python -m benchmarks.gpu --json-out out/gpu.jsonl
    python -m benchmarks.gpu --variants small_16k --no-compile
    python -m benchmarks.gpu --smoke --variants tiny_16k   # CPU, tiny models (the test suite's smoke run)
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from .bench import DEFAULT_CACHE
from .build_weights import BuildSpec, bench_variant, ensure_weights, is_built, log
from .clips import ensure_clip
from .gpu_check import check_against, cpu_reference
from .gpu_stages import (
    end_to_end,
    environment,
    free_device_memory,
    matmul_ceiling,
    sync_for,
    time_stages,
    warm_up,
)
from .measure import GB, loaded_bytes, shown
from .targets import TARGET_GPU_REL_L2

JSON_PREFIX = "GPU_JSON "
DEFAULT_VARIANTS = ("small_16k", "large_44k")
TOLERANCE = TARGET_GPU_REL_L2  # relative L2 of a device's bf16 stage output against the CPU's float32 one
STAGES = (
    "encode_prompt",
    "decode",
    "encode_video",
    "prepare_latents",
    "prepare_conditions",
    "denoise",
    "decode_latents",
    "vocode",
)
COMPONENTS = ("t5", "clip", "text_synch", "generator", "vae", "vocoder")

T = TypeVar("T")


class Recorder:
    """Prints each phase's row as one JSON line and appends it to a file, flushed at once."""

    def __init__(self, path: Path | None):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.start = time.perf_counter()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")

    def emit(self, phase: str, **fields: Any) -> dict[str, Any]:
        row = {"phase": phase, "elapsed_s": round(time.perf_counter() - self.start, 3), **fields}
        line = json.dumps(row, sort_keys=True, default=str)
        print(JSON_PREFIX + line, flush=True)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())  # a killed run keeps every line written so far
        self.rows.append(row)
        return row

    def attempt(self, phase: str, fn: Callable[[], T], **context: Any) -> T | None:
        """fn(); on an exception an `error` row for `phase` instead, and None, so later phases still run."""
        try:
            return fn()
        except Exception as exc:  # a failed phase (OOM, a compile error) must not lose the others
            log(traceback.format_exc())
            self.emit(phase, error=f"{type(exc).__name__}: {exc}"[:2000], **context)
            free_device_memory()
            return None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu",
        description="Time SelVA Studio on a GPU, eager and compiled, and check it against the CPU "
        "(see the module docstring).",
    )
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="comma-separated variants")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (with --smoke)")
    p.add_argument("--dtype", default="bf16", help="bf16 (default), fp16, fp32 or auto")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--duration", type=float, default=8.0, help="clip length in seconds (default 8)")
    p.add_argument("--size", default="640x360", help="clip WxH (default 640x360)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="built weights and clips")
    p.add_argument("--json-out", type=Path, default=None, help="append every phase's JSON line here")
    p.add_argument("--no-compile", action="store_true", help="eager only")
    p.add_argument(
        "--compile-mode", default=None, help="the generator's torch.compile mode (default: selva's)"
    )
    p.add_argument(
        "--compile-backend", default="inductor", help="torch.compile backend (eager: tracing only)"
    )
    p.add_argument(
        "--check-variant", default=None, help="variant checked against the CPU (default: the first)"
    )
    p.add_argument("--no-check", action="store_true", help="skip the check against the CPU")
    p.add_argument("--tolerance", type=float, default=TOLERANCE)
    p.add_argument("--matmul-size", type=int, default=8192)
    p.add_argument(
        "--smoke",
        action="store_true",
        help="run on the CPU in float32 with small sizes (2 steps, 2 s, 96x64, a 128 matmul)",
    )
    p.add_argument("--build-in-process", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.device, args.dtype, args.steps, args.duration = "cpu", "fp32", 2, 2.0
        args.size, args.matmul_size = "96x64", 128
    try:
        args.size = tuple(int(x) for x in args.size.lower().split("x"))
    except ValueError:
        p.error("--size must be WxH, e.g. 640x360")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not args.variants:
        p.error("--variants names no variant")
    if args.check_variant is None:
        args.check_variant = args.variants[0]
    return args


# -- the run ---------------------------------------------------------------------------------------


def run_variant(
    args: argparse.Namespace, rec: Recorder, name: str, clip: Path, tmp: Path, reference: dict | None
) -> dict | None:
    """Every phase of one variant; returns the CPU reference if this variant built one."""
    import torch

    from selva.loader import load_pipeline
    from selva.spec import LoadOptions

    ctx = {"variant": name}

    def build() -> tuple[Any, Path]:
        variant = bench_variant(name)
        spec = BuildSpec(variant, args.cache_dir / variant.name, clip_visual=False)  # never loaded
        reused = is_built(spec)
        start = time.perf_counter()
        folder = ensure_weights(spec, in_process=args.build_in_process)
        rec.emit("build", seconds=time.perf_counter() - start, reused=reused, folder=str(folder), **ctx)
        return variant, folder

    built = rec.attempt("build", build, **ctx)
    if built is None:
        return reference
    variant, weights = built

    def load() -> Any:
        gc.collect()
        start = time.perf_counter()
        options = LoadOptions(
            variant, args.device, args.dtype, offload="keep_in_vram", weights_dir=str(weights)
        )
        pipe = load_pipeline(options)
        sync = sync_for(pipe.device)
        sync()
        seconds = time.perf_counter() - start
        pipe.set_progress_bar_config(disable=True)
        by_component = {c: loaded_bytes(getattr(pipe, c)) for c in COMPONENTS}
        rec.emit(
            "load",
            seconds=seconds,
            dtype=str(pipe.dtype).removeprefix("torch."),
            param_bytes=sum(by_component.values()),
            param_bytes_by_component=by_component,
            cuda_allocated=torch.cuda.memory_allocated(pipe.device) if pipe.device.type == "cuda" else None,
            **ctx,
        )
        return pipe

    pipe = rec.attempt("load", load, **ctx)
    if pipe is None:
        return reference
    for mode in ["eager"] if args.no_compile else ["eager", "compiled"]:
        measured, reference = run_mode(args, rec, pipe, mode, variant, weights, clip, tmp, reference)
        if not measured:
            break
    del pipe
    torch._dynamo.reset()  # the compiled graphs (and CUDA graph pools) of this variant's networks
    free_device_memory()
    return reference


def run_mode(
    args: argparse.Namespace,
    rec: Recorder,
    pipe: Any,
    mode: str,
    variant: Any,
    weights: Path,
    clip: Path,
    tmp: Path,
    reference: dict | None,
) -> tuple[bool, dict | None]:
    """Warm-up, stages, end to end and the check with `pipe`'s networks eager or compiled.

    Returns whether it got past compiling and warming up, and the CPU
    reference ({} once building it failed, so it is not tried twice).
    """
    from selva.compile import compile_pipeline

    ctx = {"variant": variant.name, "mode": mode}
    steps, duration = args.steps, args.duration
    if mode == "compiled":

        def compile_() -> Any:
            start = time.perf_counter()
            plan = compile_pipeline(pipe, mode=args.compile_mode, backend=args.compile_backend)
            rec.emit(
                "compile",
                plan=dataclasses.asdict(plan) | {"cuda_graphs": plan.cuda_graphs},
                backend=args.compile_backend,
                seconds=time.perf_counter() - start,  # setting up only: compiling happens in the warm-up
                **ctx,
            )
            return plan

        if rec.attempt("compile", compile_, **ctx) is None:
            return False, reference
    warm = rec.attempt("warmup", lambda: warm_up(pipe, clip, steps=steps, duration=duration), **ctx)
    if warm is None:
        return False, reference
    rec.emit("warmup", **warm, **ctx)
    stages = rec.attempt("stages", lambda: time_stages(pipe, clip, steps=steps, duration=duration), **ctx)
    if stages is not None:
        rec.emit("stages", **stages, **ctx)
    e2e = rec.attempt("e2e", lambda: end_to_end(pipe, clip, tmp, steps=steps, duration=duration), **ctx)
    if e2e is not None:
        rec.emit("e2e", **e2e, **ctx)
    if args.no_check or variant.name != args.check_variant:
        return True, reference
    if reference is None:
        reference = (
            rec.attempt(
                "check", lambda: cpu_reference(variant, weights, clip, steps=steps, duration=duration), **ctx
            )
            or {}
        )
    if reference:
        ref = reference
        row = rec.attempt("check", lambda: check_against(pipe, ref, tolerance=args.tolerance), **ctx)
        if row is not None:
            rec.emit("check", **row, networks=mode, **ctx)
    return True, reference


def summary(rows: list[dict[str, Any]]) -> str:
    """The main numbers as a table (the JSON lines hold everything)."""

    s = partial(shown, spec=".3f")
    gb = partial(shown, spec=".2f", scale=GB, unit=" GB")

    by = {(r["phase"], r.get("variant"), r.get("mode")): r for r in rows if "error" not in r}
    lines = []
    env, mm = by.get(("env", None, None)), by.get(("matmul", None, None))
    if env:
        lines.append(f"{env.get('device_name', env['device'])}, torch {env['torch']}, {env['dtype_reason']}")
    if mm:
        lines.append(f"matmul {mm['n']}^3 {mm['dtype']}: {mm['tflops']:.1f} TFLOP/s")
    header = "| variant | mode | load | " + " | ".join(STAGES) + " | steps/s | peak mem | e2e | re-roll |"
    lines += ["", header, "|" + "---|" * (header.count("|") - 1)]
    variants = dict.fromkeys(r["variant"] for r in rows if r.get("variant"))
    for v in variants:
        load = by.get(("load", v, None), {})
        for mode in ("eager", "compiled"):
            st, e2e = by.get(("stages", v, mode)), by.get(("e2e", v, mode))
            if st is None and e2e is None:
                continue
            sec = (st or {}).get("seconds", {})
            cells = [v, mode, s(load.get("seconds")), *(s(sec.get(k)) for k in STAGES)]
            cells += [s((st or {}).get("steps_per_s")), gb((st or {}).get("cuda_peak_allocated"))]
            cells += [s((e2e or {}).get("first", {}).get("e2e")), s((e2e or {}).get("reroll", {}).get("e2e"))]
            lines.append("| " + " | ".join(cells) + " |")
    for (phase, v, mode), r in by.items():
        if phase == "check":
            parts = ", ".join(f"{k} {x['rel_l2']:.2e}" for k, x in r["stages"].items())
            lines.append(
                f"check {v} {mode}: {parts} ({'all within' if r['all_ok'] else 'NOT all within'} "
                f"{r['tolerance']:g})"
            )
    errors = [r for r in rows if "error" in r]
    lines += [f"error in {r['phase']} ({r.get('variant')}, {r.get('mode')}): {r['error']}" for r in errors]
    return "\n".join(lines)


def run(args: argparse.Namespace, rec: Recorder) -> None:
    import torch

    device = torch.device(args.device)
    rec.emit("env", **environment(args))
    mm = rec.attempt("matmul", lambda: matmul_ceiling(device, args.matmul_size))
    if mm is not None:
        rec.emit("matmul", **mm)
    w, h = args.size
    clip = ensure_clip(
        args.cache_dir / "media", width=w, height=h, fps=25, duration=args.duration, bitrate=1_500_000
    )
    reference = None
    with tempfile.TemporaryDirectory(prefix="selva-gpu-") as tmp:
        for name in args.variants:
            reference = run_variant(args, rec, name, clip, Path(tmp), reference)
    rec.emit("done", errors=sum("error" in r for r in rec.rows))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rec = Recorder(args.json_out)
    # Never downloads: every file is built here.
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        run(args, rec)
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous
    print(summary(rec.rows), flush=True)
    return 0 if not any("error" in r for r in rec.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
