"""SelVA Studio benchmark: load time, memory and per-stage latency at real model size.

The real checkpoints cannot be downloaded everywhere this must run, so
`benchmarks/build_weights.py` writes random-weight checkpoints at the real
sizes and in the real file layouts, once, into a cache folder outside the repo
(default `~/.cache/selva-bench/<variant>/`), and `benchmarks/clips.py` encodes
the synthetic clips beside them. This module loads the checkpoints through
`selva.loader.load_pipeline(LoadOptions(..., weights_dir=...))`, i.e. the production
hub, loading and text-encoder code, and times:

1. the load, with peak RSS right after it and the bytes of the parameters
   and buffers actually loaded (the RSS budget is judged against these);
2. a first run on a synthetic 8 s, 640x360, 25 fps clip (nothing cached):
   probe, text encoders, decode, TextSynch, ODE (total and per step), VAE,
   vocoder, mux, end to end (pipeline call + mux into an mp4);
3. a re-roll: same video and prompt, new seed (the text and sync features
   must come from the pipeline's caches);
4. `selva.mux.mux` alone on a synthetic 1080p 8 s h264 clip;
5. on CUDA, peak allocated memory after load and during each run.

It prints a table and one line `BENCH_JSON {...}` with every number, and
which of the issue's targets the run met.

Usage (from the repository root):

    python -m benchmarks.bench                       # small_16k, device and precision picked as the app does
    python -m benchmarks.bench --dtype fp32 --steps 25
    python -m benchmarks.bench --device cuda --dtype bf16 --compile
    python -m benchmarks.bench --weights-dir /data/selva   # real weights in the local-folder layout

Randomness makes the audio noise, not the timings: every network does the same
arithmetic on random weights as on trained ones.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from .build_weights import BuildSpec, bench_variant, ensure_weights, log
from .clips import ensure_clip
from .measure import (
    GB,
    MB,
    cpu_name,
    current_rss,
    dtype_reason,
    loaded_bytes,
    peak_rss,
    reset_peak_rss,
    shown,
    stopwatch,
)
from .targets import check_targets, target_lines

DEFAULT_CACHE = Path(os.environ.get("SELVA_BENCH_CACHE", "~/.cache/selva-bench")).expanduser()
JSON_PREFIX = "BENCH_JSON "

PROMPT = "dog barking"
WARMUP_PROMPT = "a car engine revving"  # a different prompt, so the timed first run misses every cache


# -- the benchmark ----------------------------------------------------------------------------------

COMPONENTS = ("t5", "clip", "text_synch", "generator", "vae", "vocoder")
STAGES = ("probe", "text", "decode", "text_synch", "flow", "flow_per_step", "vae", "vocoder", "total")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description="Time SelVA Studio at real model size on random weights (see the module docstring).",
    )
    p.add_argument("--variant", default="small_16k", help="a known variant (default small_16k)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", help="auto (the app's choice), bf16, fp16 or fp32")
    p.add_argument("--offload", default="auto", help="auto, keep_in_vram or offload_to_cpu")
    p.add_argument("--steps", type=int, default=25, help="Euler steps (default 25)")
    p.add_argument(
        "--compile", action="store_true", help="selva.compile: the generator, TextSynch and the vocoder"
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed runs before the first timed one (default: 1; with a different prompt, caches cleared)",
    )
    p.add_argument(
        "--duration",
        action="append",
        metavar="SEC[,SEC...]",
        help="clip length(s) in seconds, repeatable or a comma list, e.g. 8,30,60 (default 8): one run each",
    )
    p.add_argument("--size", default="640x360", help="benchmark clip WxH (default 640x360)")
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--mux-size", default="1920x1080", help="clip size for the mux-only timing")
    p.add_argument("--mux-repeats", type=int, default=5, help="mux-only timings (the median is reported)")
    p.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE, help=f"built weights and clips ({DEFAULT_CACHE})"
    )
    p.add_argument(
        "--weights-dir",
        type=Path,
        default=None,
        help="use this local weights folder (e.g. the real files) instead of building random ones",
    )
    p.add_argument(
        "--no-clip-visual",
        action="store_true",
        help="leave CLIP's image tower out of the built checkpoint (saves 2.5 GB of disk; never loaded)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--build-in-process", action="store_true", help=argparse.SUPPRESS)
    # Set on the child process that runs one of several lengths (see `main`).
    p.add_argument("--only-duration", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("size", "mux_size"):
        try:
            w, h = (int(x) for x in getattr(args, name).lower().split("x"))
        except ValueError:
            p.error(f"--{name.replace('_', '-')} must be WxH, e.g. 640x360")
        setattr(args, name, (w, h))
    if args.steps < 1:
        p.error("--steps must be at least 1")
    try:
        args.durations = [float(x) for item in args.duration or ["8"] for x in item.split(",") if x.strip()]
    except ValueError:
        p.error("--duration takes seconds, e.g. 8 or 8,30,60")
    if not args.durations or min(args.durations) <= 0:
        p.error("--duration must be above 0")
    if args.only_duration is not None:
        args.durations = [args.only_duration]
    args.duration = args.durations[0]
    return args


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from selva.loader import load_pipeline
    from selva.mux import mux
    from selva.spec import LoadOptions
    from selva.variants import get_variant

    if args.threads:
        torch.set_num_threads(args.threads)
    # 1. Weights and clips (built once, cached outside the repo).
    if args.weights_dir is not None:
        variant, weights_dir, source = get_variant(args.variant), args.weights_dir, "given"
    else:
        variant = bench_variant(args.variant)
        spec = BuildSpec(variant, args.cache_dir / variant.name, clip_visual=not args.no_clip_visual)
        weights_dir, source = ensure_weights(spec, in_process=args.build_in_process), "random"
    media_dir = args.cache_dir / "media"
    (w, h), (mw, mh) = args.size, args.mux_size
    clip = ensure_clip(media_dir, width=w, height=h, fps=args.fps, duration=args.duration, bitrate=1_500_000)
    clip_big = ensure_clip(
        media_dir, width=mw, height=mh, fps=args.fps, duration=args.duration, bitrate=16_000_000
    )

    # 2. Load, measuring the peak RSS of loading alone.
    import gc

    gc.collect()
    peak_reset = reset_peak_rss()
    rss_before = current_rss()
    t0 = time.perf_counter()
    pipe = load_pipeline(LoadOptions(
        variant, device=args.device, precision=args.dtype, offload=args.offload, weights_dir=str(weights_dir)
    ))  # fmt: skip
    load_s = time.perf_counter() - t0
    peak_after_load = peak_rss()
    rss_after_load = current_rss()
    pipe.set_progress_bar_config(disable=True)
    pipe.exact_timings = True  # stage timings as device time: wait for the GPU after each stage
    device = pipe.device
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    by_component = {name: loaded_bytes(getattr(pipe, name)) for name in COMPONENTS}
    param_bytes = sum(by_component.values())
    cuda_after_load = torch.cuda.max_memory_allocated(device) if cuda else None

    if args.compile:
        from selva.compile import compile_pipeline

        # In place, so the pipeline's attribute look-ups (config, helpers) still work.
        compile_pipeline(pipe)

    with tempfile.TemporaryDirectory(prefix="selva-bench-") as tmp_name:
        tmp = Path(tmp_name)

        def generate(prompt: str, seed: int, steps: int) -> tuple[dict[str, Any], Any]:
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            hits = (pipe.prompt_cache.hits, pipe.sync_cache.hits)
            wall: dict[str, float] = {}
            # CPU time of this process next to wall time: on a shared machine the wall clock also
            # counts other people's work, CPU seconds much less so.
            cpu0, load0 = time.process_time(), os.getloadavg()[0]
            with stopwatch(wall, "e2e", sync):
                with stopwatch(wall, "call", sync):
                    out = pipe(clip, prompt, seed=seed, steps=steps)
                with stopwatch(wall, "mux"):
                    muxed = out.save_video(tmp / f"out_{seed}.mp4")
            row: dict[str, Any] = {k: out.timings.get(k) for k in STAGES}
            row.update(
                mux=wall["mux"],
                e2e=wall["e2e"],
                e2e_cpu=time.process_time() - cpu0,
                loadavg_1min=(load0, os.getloadavg()[0]),
                prompt_cache_hit=pipe.prompt_cache.hits > hits[0],
                sync_cache_hit=pipe.sync_cache.hits > hits[1],
                audio_finite=bool(torch.isfinite(out.audio).all()),
                audio_seconds=out.audio.shape[-1] / out.sample_rate,
                mp4_bytes=muxed.stat().st_size,
            )
            if cuda:
                row["cuda_peak_allocated"] = torch.cuda.max_memory_allocated(device)
            return row, out

        # 3. Warm-up (kernels, allocator, compile), then clear the caches so the first run misses.
        warmups = args.warmup if args.warmup is not None else 1
        # On the CPU a short warm-up primes the same kernels at a fraction of the cost: every step is alike.
        warm_steps = args.steps if cuda or args.compile else min(args.steps, 2)
        warmup_s = []  # each warm-up's wall time: with --compile the first is the compile (cold or cached)
        for i in range(warmups):
            log(f"warm-up {i + 1}/{warmups} ({warm_steps} steps)")
            begun = time.perf_counter()
            generate(WARMUP_PROMPT, 1000 + i, warm_steps)
            warmup_s.append(time.perf_counter() - begun)
        pipe.clear_caches()

        # 4. First run (nothing cached), then a re-roll (same video and prompt, new seed).
        log(f"first run ({args.steps} steps)")
        first, out = generate(PROMPT, 1, args.steps)
        # With float32 mmap-backed weights, pages come in on first use: only now is all of it resident.
        rss_after_first = current_rss()
        log("re-roll")
        reroll, _ = generate(PROMPT, 2, args.steps)

        # 5. The mux alone on a 1080p clip with the generated audio.
        mux_times = []
        for i in range(max(args.mux_repeats, 1)):
            t0 = time.perf_counter()
            mux(
                clip_big,
                out.audio[0],
                out.sample_rate,
                tmp / f"mux_{i}.mp4",
                start=0.0,
                duration=out.duration,
            )
            mux_times.append(time.perf_counter() - t0)

    result: dict[str, Any] = {
        "variant": variant.name,
        "weights": source,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_name(),
        "dtype": str(pipe.dtype).removeprefix("torch."),
        "dtype_reason": dtype_reason(device, args.dtype, pipe.dtype),
        "offload": pipe.offload,
        "steps": args.steps,
        "compile": args.compile,
        "warmup_runs": warmups,
        "warmup_s": warmup_s,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "clip": {
            "size": f"{w}x{h}",
            "fps": args.fps,
            "duration": args.duration,
            "bytes": clip.stat().st_size,
        },
        "load_s": load_s,
        "rss_before_load": rss_before,
        "peak_rss_after_load": peak_after_load,
        "rss_after_load": rss_after_load,
        "peak_rss_reset": peak_reset,
        "param_bytes": param_bytes,
        "param_bytes_by_component": by_component,
        "rss_over_params": peak_after_load - param_bytes,
        "first": first,
        "reroll": reroll,
        "reroll_ratio": reroll["e2e"] / first["e2e"],
        "reroll_ratio_cpu": reroll["e2e_cpu"] / first["e2e_cpu"],
        "mux_1080p": {
            "size": f"{mw}x{mh}",
            "bytes": clip_big.stat().st_size,
            "first_s": mux_times[0],
            "median_s": statistics.median(mux_times),
            "runs_s": mux_times,
        },
        "rss_after_first_run": rss_after_first,
        "peak_rss_end": peak_rss(),
    }
    if cuda:
        result["cuda_peak_allocated_after_load"] = cuda_after_load
    result["targets"] = check_targets(result)
    return result


def format_table(r: dict[str, Any]) -> str:
    s = partial(shown, spec=".3f")
    gb = partial(shown, spec=".2f", scale=GB, unit=" GB")

    first, reroll = r["first"], r["reroll"]
    lines = [
        f"SelVA benchmark: {r['variant']} ({r['weights']} weights) on {r['device']} ({r['device_name']}), "
        f"{r['dtype']}, {r['steps']} steps, compile={r['compile']}, {r['threads']} threads, "
        f"torch {r['torch']}",
        f"clip {r['clip']['size']} {r['clip']['fps']} fps {r['clip']['duration']:g} s; "
        f"warm-up runs: {r['warmup_runs']}",
        f"precision: {r['dtype_reason']}",
        "",
        f"load: {r['load_s']:.2f} s; RSS before {gb(r['rss_before_load'])}, peak after load "
        f"{gb(r['peak_rss_after_load'])}, parameters {gb(r['param_bytes'])} "
        f"(peak - parameters = {gb(r['rss_over_params'])})",
        "parameters by component: "
        + ", ".join(f"{k} {v / MB:.0f} MB" for k, v in r["param_bytes_by_component"].items()),
        "",
        "| stage (s)          | first run |   re-roll |",
        "|--------------------|-----------|-----------|",
    ]
    names = {
        "probe": "probe",
        "text": "text encoders",
        "decode": "decode",
        "text_synch": "TextSynch",
        "flow": "ODE total",
        "flow_per_step": "ODE per step",
        "vae": "VAE",
        "vocoder": "vocoder",
        "total": "pipeline call",
        "mux": "mux",
        "e2e": "end to end",
    }
    for key, label in names.items():
        lines.append(f"| {label:<18} | {s(first.get(key)):>9} | {s(reroll.get(key)):>9} |")
    lines.append(
        f"| {'cache hit':<18} | {str(first['sync_cache_hit']):>9} | {str(reroll['sync_cache_hit']):>9} |"
    )
    if "cuda_peak_allocated" in first:
        lines.append(
            f"| {'CUDA peak alloc':<18} | {gb(first['cuda_peak_allocated']):>9} | "
            f"{gb(reroll['cuda_peak_allocated']):>9} |"
        )
        lines.append(f"CUDA allocated after load: {gb(r['cuda_peak_allocated_after_load'])}")
    m = r["mux_1080p"]
    lines += [
        "",
        f"re-roll / first run: {r['reroll_ratio']:.2f} (wall), {r['reroll_ratio_cpu']:.2f} (CPU time); "
        f"1-min load average at start: first {first['loadavg_1min'][0]:.1f}, "
        f"re-roll {reroll['loadavg_1min'][0]:.1f} ({os.cpu_count()} CPUs)",
        f"mux alone, {m['size']} {r['clip']['duration']:g} s ({m['bytes'] / MB:.1f} MB): "
        f"median {m['median_s']:.3f} s, first {m['first_s']:.3f} s",
        f"RSS after the first run {gb(r['rss_after_first_run'])}; peak RSS at the end "
        f"{gb(r['peak_rss_end'])} (peak - parameters = {gb(r['peak_rss_end'] - r['param_bytes'])})",
        "",
        "targets:",
    ]
    lines += target_lines(r["targets"])
    return "\n".join(lines)


def run_length_in_child(argv: Sequence[str], seconds: float) -> dict[str, Any]:
    """This benchmark for one length in a fresh process; its output passes through, its result back.

    A process's peak RSS only ever grows, and one that has run a pipeline keeps
    some of its memory after dropping it, so each length of several gets its own
    process: its peak RSS is that length's alone. The child inherits the environment, so it knows
    the variants this process knows (SELVA_VARIANTS_FILE's extra ones too).
    """
    root = Path(__file__).resolve().parent.parent
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "benchmarks.bench", *argv, "--only-duration", f"{seconds:g}"]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stdout is not None
    result = None
    for line in proc.stdout:
        print(line, end="", flush=True)
        if line.startswith(JSON_PREFIX):
            result = json.loads(line.removeprefix(JSON_PREFIX))
    if proc.wait() != 0 or result is None:
        raise RuntimeError(f"the {seconds:g} s run failed (exit {proc.returncode}): {' '.join(cmd)}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    # The benchmark never downloads: every file is built locally or given with --weights-dir.
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    results = []
    try:
        if len(args.durations) > 1:
            results = [run_length_in_child(argv, seconds) for seconds in args.durations]
        else:
            result = run_benchmark(args)
            print(format_table(result))
            print(JSON_PREFIX + json.dumps(result, sort_keys=True), flush=True)
            results.append(result)
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous
    if len(results) > 1:
        print("\nper length (a process each): first run, re-roll, peak RSS")
        for r in results:
            print(
                f"  {r['clip']['duration']:>7g} s  {r['first']['e2e']:8.2f} s  {r['reroll']['e2e']:8.2f} s  "
                f"{r['peak_rss_end'] / GB:6.2f} GB"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
