"""Clips per minute of `selva batch` at 1 and 2 workers, on the CPU with the tests' tiny models.

    python -m benchmarks.batch_scaling [--clips 8] [--steps 2] [--workers 1 2]

Runs, from the repository root (it needs tests/ and ../shared/fixtures/parity):
- plain `selva batch` (one process, no Ray) as the baseline;
- `selva batch --ray --workers N` on a local Ray started by the command, for each N.

Each row times the whole command (start-up, Ray start, model loads, every clip), since that is
what a user waits for; "s/clip" is the summary's own figure, the time inside the pipeline call
and the saves per clip. With tiny models the start-up dominates a short list, so more clips give
a fairer picture of steady throughput. Ray gives each CPU actor one thread (OMP_NUM_THREADS=1),
so 2 workers on 2 cores is a like-for-like use of the machine; the plain run uses every core.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "parity"


def time_batch(argv: list[str]) -> tuple[float, str, int]:
    from selva import cli

    out = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = cli.main(argv)
    return time.perf_counter() - started, out.getvalue(), code


def per_clip(summary: str) -> str:
    for line in summary.splitlines():
        if line.strip().startswith("s/clip"):
            return line.split()[-1]
    return "-"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each synthetic clip")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-plain", action="store_true", help="skip the plain (no Ray) baseline")
    options = parser.parse_args()

    sys.path.insert(0, str(ROOT / "tests"))  # tiny_hub and media_factory live with the tests
    import pytest
    from media_factory import make_video
    from tiny_hub import build_tiny_hub

    work = Path(tempfile.mkdtemp(prefix="selva-batch-scaling-"))
    hub = build_tiny_hub(work / "hub", FIXTURES)
    patch = pytest.MonkeyPatch()  # the tests' way of pointing huggingface_hub at the tiny cache
    hub.activate(patch, offline=True)
    clips = work / "clips"
    clips.mkdir()
    rows = ["video,prompt,seed"]
    for k in range(options.clips):
        make_video(clips / f"clip{k}.mp4", seconds=options.seconds)
        rows.append(f"clip{k}.mp4,dog barking,{k}")
    listing = clips / "jobs.csv"
    listing.write_text("\n".join(rows) + "\n")
    fast = ["--variant", "tiny_16k", "--steps", str(options.steps), "--device", "cpu", "--precision", "fp32"]

    runs = [] if options.no_plain else [("plain (no Ray)", [])]
    runs += [(f"ray, {n} worker(s)", ["--ray", "--workers", str(n)]) for n in options.workers]
    results = []
    for label, extra in runs:
        out_dir = work / f"out-{len(results)}"
        argv = ["batch", str(listing), "--out", str(out_dir), *fast, *extra]  # no -q: it hides the table
        seconds, summary, code = time_batch(argv)
        if code != 0:
            print(f"{label}: exit {code}\n{summary}", file=sys.stderr)
            return 1
        results.append((label, seconds, options.clips / seconds * 60, per_clip(summary)))
    patch.undo()

    print(f"\n{options.clips} clips of {options.seconds:g} s, tiny_16k, {options.steps} steps, CPU fp32")
    print(f"| {'run':<18} | {'wall s':>7} | {'clips/min':>9} | {'s/clip':>6} |")
    print(f"|{'-' * 20}|{'-' * 9}|{'-' * 11}|{'-' * 8}|")
    for label, seconds, rate, clip_s in results:
        print(f"| {label:<18} | {seconds:>7.1f} | {rate:>9.1f} | {clip_s:>6} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
