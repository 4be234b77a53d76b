"""Our side of `benchmarks.vs_reference`: the checksum memo, the commands of `selva generate` and
`benchmarks.bench`, their environments, what their logs say, and both sides' versions."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from .bench import JSON_PREFIX as BENCH_PREFIX
from .build_weights import ROOT
from .children import ChildRun, child_env

# -- our side: the checksum memo --------------------------------------------------------------------


def write_md5_memo(state_dir: Path, weights: Path, variant: str) -> Path:
    """`selva.hub`'s memo of verified files, listing the random ones under their registered MD5.

    `selva.hub.verify_md5` hashes a file once and then trusts this record while the
    file's size and modification time stay the same; pointing `SELVA_STATE_DIR` here makes
    the random files pass as a user's verified real ones do on every start after the first.
    """
    from selva.hub import local_path, required_files

    memo = {}
    for f in required_files(variant):
        path = local_path(weights, f)
        if f.md5 is None or not path.is_file():
            continue
        real = path.resolve()
        st = real.stat()
        memo[str(real)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": f.md5}
    state_dir.mkdir(parents=True, exist_ok=True)
    out = state_dir / "verified_md5.json"
    out.write_text(json.dumps(memo, indent=0, sort_keys=True))
    return out


# -- the two sides ----------------------------------------------------------------------------------


def ours_cmd(args: argparse.Namespace, clip: Path, weights: Path, out: Path, precision: str) -> list[str]:
    cmd = [
        sys.executable, "-m", "selva", "generate", str(clip), "--prompt", args.prompt,
        "--weights-dir", str(weights), "--variant", args.variant, "--steps", str(args.steps),
        "--cfg", str(args.cfg), "--seed", str(args.seed), "--device", args.device, "--out", str(out),
        "--sample-rate", "model",  # like the reference: files at the model's rate, no 48 kHz resampling
    ]  # fmt: skip
    if args.device == "cuda":
        cmd.append("--compile")  # what pays on a GPU; the compile cache makes it warm
    return cmd if precision == "auto" else [*cmd, "--precision", precision]


def side_envs(
    args: argparse.Namespace, ref_dir: Path, state_dir: Path
) -> tuple[dict[str, str], dict[str, str]]:
    """(the reference's environment, ours): its Hugging Face cache; our checksum memo and compile cache."""
    ref_env = child_env(args.device, HF_HOME=str(ref_dir / "hf"), HF_HUB_CACHE=str(ref_dir / "hf" / "hub"))
    ours_env = child_env(args.device, SELVA_STATE_DIR=str(state_dir), PYTHONPATH=str(ROOT))
    return ref_env, ours_env


def bench_cmd(args: argparse.Namespace) -> list[str]:
    w, h = args.size
    cmd = [
        sys.executable, "-m", "benchmarks.bench", "--variant", args.variant, "--steps", str(args.steps),
        "--cache-dir", str(args.cache_dir), "--size", f"{w}x{h}", "--fps", str(args.fps),
        "--duration", f"{args.duration:g}", "--device", args.device, "--dtype", args.ours_precision[0],
    ]  # fmt: skip
    return [*cmd, "--compile"] if args.device == "cuda" else cmd


def call_seconds(ours: dict[str, float], reference: dict[str, float]) -> tuple[float | None, float | None]:
    """(our generation call, the reference's): decoding to written files, loading and imports left out."""
    ref_parts = [reference.get(k) for k in ("decode", "generate", "mux")]
    ref = sum(ref_parts) if all(x is not None for x in ref_parts) else None  # type: ignore[arg-type]
    return ours.get("generate_and_save"), ref


def ours_stages(run: ChildRun) -> dict[str, float]:
    """What `selva generate` says about itself: the load time it logs, the time its log line came."""
    out: dict[str, float] = {}
    for t, line in run.lines:
        if m := re.search(r"models ready in ([0-9.]+) s", line):
            out["load"] = float(m.group(1))
            out["models_ready_at"] = t
        elif "loading" in line and "models" in line and "imports" not in out:
            out["imports"] = t
    if "models_ready_at" in out:
        out["generate_and_save"] = run.wall_s - out["models_ready_at"]
    return out


def bench_json(run: ChildRun) -> dict[str, Any]:
    for _, line in reversed(run.lines):
        if line.startswith(BENCH_PREFIX):
            return json.loads(line.removeprefix(BENCH_PREFIX))
    raise RuntimeError(f"no {BENCH_PREFIX.strip()} line in {run.log}")


def versions(reference_dir: Path, python: Path) -> dict[str, Any]:
    """Commits and library versions on both sides."""

    def git_head(folder: Path) -> str | None:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            return subprocess.run(
                ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
            ).stdout.strip()
        return None

    probe = (
        "import importlib.metadata as m, json, platform, torch\n"
        "names = ['torch', 'torchvision', 'torchaudio', 'transformers', 'open_clip_torch', 'numpy', 'av']\n"
        "def v(n):\n"
        "    try: return m.version(n)\n"
        "    except m.PackageNotFoundError: return None\n"
        "print(json.dumps({'python': platform.python_version(), 'threads': torch.get_num_threads(),\n"
        "                  'cpu_capability': torch.backends.cpu.get_cpu_capability(),\n"
        "                  **{n: v(n) for n in names}}))\n"
    )

    def libs(py: Path | str) -> dict[str, Any]:
        done = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, env=child_env())
        try:
            return json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            return {"error": done.stderr.strip()[-500:]}

    return {
        "ours": {"commit": git_head(ROOT), **libs(sys.executable)},
        "reference": {"commit": git_head(reference_dir), **libs(python)},
    }
