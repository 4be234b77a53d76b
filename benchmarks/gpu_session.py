"""Issue #26's GPU figures in one prepared run of at most 10 minutes (for a session lent a GPU).

Steps, each a child process bounded by what is left of `--budget` (so a slow step
cannot eat the rest), most wanted first:

1. `small_16k cold`: `benchmarks.bench --compile` with an empty compile cache (its own
   `SELVA_STATE_DIR`): builds the random real-size weights the first time, loads, and
   its first warm-up call is the cold compile; then the first run and the re-roll;
2. `small_16k warm`: the same command on the cache step 1 filled: its warm-up call is
   the warm start (issue target: first compiled result within 20 s of starting);
3. and 4. the same for `large_44k`;
5. `vs_reference --device cuda --rounds 1`, when `--reference-dir` holds the reference.

Each step's `BENCH_JSON` (or `vs_reference`'s JSON) line is appended to `--json-out` as
soon as the step ends, and a table is printed at the end: load, the first compiled
call, start to first result (process start to the end of that call), end to end and
re-roll, against the issue's targets.

    python -m benchmarks.gpu_session --json-out $OUT/session.jsonl
    python -m benchmarks.gpu_session --dry-run --device cpu --variants tiny_16k   # the plan, nothing run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bench import DEFAULT_CACHE, JSON_PREFIX
from .vs_reference import JSON_PREFIX as REFERENCE_JSON_PREFIX

BUDGET_S = 540  # a 10 minute device call, less the start and the copies back
# Seconds each step may take at most (then what is left of the budget): a cold compile of one
# variant took 100-116 s on an H200, building its weights 28-35 s, loading 3-10 s.
STEP_CAPS = {"cold": 240, "warm": 90, "reference": 240}
# Issue #26 (H100/H200, bf16, compiled and warm, 8 s clip, decode to muxed mp4): end to end, re-roll.
TARGETS = {"small_16k": (0.25, 0.10), "large_44k": (0.45, 0.25)}
WARM_START_TARGET_S = 20.0


@dataclass
class Step:
    name: str
    kind: str  # "cold", "warm" or "reference"
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)  # set on top of this process's environment
    variant: str | None = None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_session", description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="small_16k,large_44k", help="comma-separated, in order")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (for --dry-run)")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for every step together")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="built weights and clips")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/selva-gpu-session"), help="compile caches")
    p.add_argument("--reference-dir", type=Path, help="checkout of the reference (step 5 runs if present)")
    p.add_argument("--reference-python", type=Path, help="the reference's Python (vs_reference's option)")
    p.add_argument("--json-out", type=Path, help="append each step's JSON line here")
    p.add_argument("--dry-run", action="store_true", help="print the plan and an empty table; run nothing")
    return p.parse_args(argv)


def plan(args: argparse.Namespace) -> list[Step]:
    """The steps in order: cold then warm per variant, then the reference side by side if present."""
    steps = []
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        command = [
            sys.executable, "-m", "benchmarks.bench", "--variant", variant, "--device", args.device,
            "--dtype", args.dtype, "--steps", str(args.steps), "--compile",
            "--cache-dir", str(args.cache_dir), "--no-clip-visual", "--mux-repeats", "1",
        ]  # fmt: skip
        # One compile cache per variant: empty for the cold step, as the cold step left it for the warm one.
        env = {"SELVA_STATE_DIR": str(args.work_dir / f"state-{variant}")}
        steps.append(Step(f"{variant} cold", "cold", command, env, variant))
        steps.append(Step(f"{variant} warm", "warm", command, env, variant))
    if args.reference_dir is not None and (args.reference_dir / "demo.py").is_file():
        command = [
            sys.executable, "-m", "benchmarks.vs_reference", "--device", "cuda", "--rounds", "1",
            "--reference-dir", str(args.reference_dir), "--cache-dir", str(args.cache_dir),
        ]  # fmt: skip
        if args.reference_python is not None:
            command += ["--reference-python", str(args.reference_python)]
        steps.append(Step("vs reference", "reference", command))
    return steps


def run_step(step: Step, seconds: float) -> dict[str, Any]:
    """Run one step within `seconds`; its JSON result with the step's name, wall time and outcome."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"} | step.env
    begun = time.perf_counter()
    try:
        done = subprocess.run(step.command, env=env, capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return {"step": step.name, "outcome": f"timed out after {seconds:.0f} s", "tail": out[-2000:]}
    wall = time.perf_counter() - begun
    sys.stderr.write(done.stderr[-4000:])
    result = parse_result(done.stdout)
    outcome = "ok" if done.returncode == 0 and result else f"exit {done.returncode}"
    return {"step": step.name, "outcome": outcome, "wall_s": wall, **result}


def parse_result(stdout: str) -> dict[str, Any]:
    """The last `BENCH_JSON` or `VS_REFERENCE_JSON` object a child printed ({} if none)."""
    for line in reversed(stdout.splitlines()):
        for prefix in (JSON_PREFIX, REFERENCE_JSON_PREFIX):
            if line.startswith(prefix):
                return json.loads(line[len(prefix) :])
    return {}


def summary(rows: list[dict[str, Any]]) -> str:
    """The table of every step: seconds, and each target met or missed."""

    def s(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else "-"

    lines = [
        "| step | outcome | load | first compiled call | start to first result | end to end | re-roll "
        "| targets |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        first_call = (r.get("warmup_s") or [None])[0]
        start = r["load_s"] + first_call if isinstance(first_call, float) and "load_s" in r else None
        e2e, reroll = r.get("first", {}).get("e2e"), r.get("reroll", {}).get("e2e")
        lines.append(
            f"| {r['step']} | {r['outcome']} | {s(r.get('load_s'))} | {s(first_call)} | {s(start)} | "
            f"{s(e2e)} | {s(reroll)} | {judge(r, start, e2e, reroll)} |"
        )
    return "\n".join(lines)


def judge(row: dict[str, Any], start: float | None, e2e: float | None, reroll: float | None) -> str:
    verdicts = []
    target = TARGETS.get(row.get("variant", ""))
    if target and e2e is not None and reroll is not None:
        verdicts.append(f"e2e {'met' if e2e <= target[0] else 'missed'} ({target[0]} s)")
        verdicts.append(f"re-roll {'met' if reroll <= target[1] else 'missed'} ({target[1]} s)")
    if row["step"].endswith("warm") and start is not None:
        verdict = "met" if start <= WARM_START_TARGET_S else "missed"
        verdicts.append(f"warm start {verdict} ({WARM_START_TARGET_S:g} s)")
    return ", ".join(verdicts) or "-"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    steps = plan(args)
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + args.budget
    for step in steps:
        left = deadline - time.monotonic()
        seconds = min(STEP_CAPS[step.kind], left)
        print(f"== {step.name}: up to {seconds:.0f} s: {' '.join(step.command)}", flush=True)
        if args.dry_run:
            row = {"step": step.name, "outcome": "dry run", "env": step.env}
        elif seconds < 10:
            row = {"step": step.name, "outcome": "no time left"}
        else:
            row = run_step(step, seconds)
        rows.append(row)
        if args.json_out is not None:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            with args.json_out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    if not any(s.kind == "reference" for s in steps):
        print("vs reference: skipped (no --reference-dir with a demo.py)", flush=True)
    print(summary(rows), flush=True)
    return 0 if all(r["outcome"] in ("ok", "dry run") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
