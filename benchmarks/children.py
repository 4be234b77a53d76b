"""Child processes for the side-by-side benchmark: run one, measure it, keep its log.

Wall time, CPU time (user + system) and peak RSS come from `os.wait4`, which
covers the child and any children it waited for; the 1-minute load average is
sampled while it runs, so a busy machine shows in the results.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .build_weights import log
from .measure import GB


@dataclass
class ChildRun:
    """One child process: what ran and what it cost."""

    name: str
    cmd: list[str]
    rc: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss: int = 0
    loadavg_before: float = 0.0
    loadavg_after: float = 0.0
    loadavg_max: float = 0.0
    lines: list[tuple[float, str]] = field(default_factory=list)
    log: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rc": self.rc,
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
            "peak_rss": self.peak_rss,
            "loadavg_1min": {
                "before": self.loadavg_before,
                "after": self.loadavg_after,
                "max": self.loadavg_max,
            },
            "log": self.log,
        }


def run_child(name: str, cmd: list[str], *, cwd: Path, env: dict[str, str], log_path: Path) -> ChildRun:
    """Run `cmd`, keep its output (with arrival times) in `log_path`; wall, CPU and peak RSS by wait4."""
    run = ChildRun(name, cmd, log=str(log_path))
    run.loadavg_before = run.loadavg_max = os.getloadavg()[0]
    shown = " ".join("<bootstrap>" if "\n" in c else c for c in cmd)
    log(f"{name}: {shown} (1-min load average {run.loadavg_before:.2f})")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    done = threading.Event()

    def sample_load() -> None:
        while not done.wait(2.0):
            run.loadavg_max = max(run.loadavg_max, os.getloadavg()[0])

    sampler = threading.Thread(target=sample_load, daemon=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    sampler.start()
    with log_path.open("w") as out:
        out.write(f"$ {shown}\n")
        assert proc.stdout is not None
        for line in proc.stdout:
            t = time.perf_counter() - t0
            run.lines.append((t, line.rstrip("\n")))
            out.write(f"[{t:8.2f}] {line}")
            out.flush()
    _, status, usage = os.wait4(proc.pid, 0)
    run.wall_s = time.perf_counter() - t0
    proc.returncode = run.rc = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    run.cpu_s = usage.ru_utime + usage.ru_stime
    run.peak_rss = usage.ru_maxrss * 1024  # KiB on Linux
    run.loadavg_after = os.getloadavg()[0]
    log(
        f"{name}: rc {run.rc}, {run.wall_s:.1f} s wall, {run.cpu_s:.1f} s CPU, "
        f"peak RSS {run.peak_rss / GB:.2f} GB, load average {run.loadavg_after:.2f}"
    )
    if run.rc != 0:
        tail = "\n".join(line for _, line in run.lines[-15:])
        raise RuntimeError(f"{name} failed (exit {run.rc}); its log: {log_path}\n{tail}")
    return run


def warm_page_cache(paths: Sequence[Path]) -> None:
    """Read every file once, so neither side pays for a cold disk (both read the same weights)."""
    for path in paths:
        for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if f.is_file():
                with f.open("rb") as fh:
                    while fh.read(1 << 24):
                        pass


def child_env(device: str = "cpu", **extra: str) -> dict[str, str]:
    """The environment both sides run in: offline, unbuffered, no PYTHONPATH of ours; on the CPU
    no GPU is visible (the reference's demo.py takes CUDA whenever it sees it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", PYTHONUNBUFFERED="1",
    )  # fmt: skip
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    env.update(extra)
    return env
