"""The reference's side of `benchmarks.vs_reference`: its working folder, command and stage times.

The reference SelVA code runs unchanged, with its own Python, in a working folder
whose `weights/`, `ext_weights/` and Hugging Face cache (`hf/`) are links to the
same random real-size files our side loads. `REFERENCE_BOOTSTRAP` starts its
`demo.py` with the download-or-verify step made a no-op and its stages timed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .build_weights import ROOT, log
from .children import ChildRun

STAGES_PREFIX = "REF_STAGES "

# The reference's repo ids, as its FeaturesUtils asks for them, and the bench folder holding each.
REFERENCE_HUB_REPOS = {
    "google/flan-t5-base": "flan-t5-base",
    "apple/DFN5B-CLIP-ViT-H-14-384": "DFN5B-CLIP-ViT-H-14-384",
}
SYNCHFORMER_FILE = "synchformer_state_dict.pth"
SYNCHFORMER_PREFIX = "vfeat_extractor."

# Runs in the reference's Python (`-c`), with sys.argv[1] = its checkout and the rest demo.py's
# arguments. It changes nothing in the checkout: the download-or-verify step becomes a no-op (the
# files are in place, and random ones cannot match the MD5 sums), and the reference's stage
# functions are wrapped with a timer; then demo.py runs as `__main__`.
REFERENCE_BOOTSTRAP = r"""
import functools, json, runpy, sys, time
t_start = time.perf_counter()
ref_dir = sys.argv[1]
sys.path.insert(0, ref_dir)
sys.argv = [ref_dir + '/demo.py', *sys.argv[2:]]
import selva.utils.eval_utils as eu
from selva.model.flow_matching import FlowMatching
from selva.model.networks_video_enc import TextSynch
from selva.model.utils.features_utils import FeaturesUtils
t_imported = time.perf_counter()
eu.download_model_if_needed = lambda path: None
seconds, marks = {}, {}

def timed(owner, name, stage):
    fn = getattr(owner, name)
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        marks.setdefault(stage, t0)
        try:
            return fn(*args, **kwargs)
        finally:
            seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - t0
    setattr(owner, name, wrapper)

timed(eu, 'load_video', 'decode')
timed(FeaturesUtils, 'encode_text_clip', 'text')
timed(FeaturesUtils, 'encode_text_t5', 'text')
timed(TextSynch, 'encode_video_with_sync', 'text_synch')
timed(FlowMatching, 'to_data', 'flow')
timed(FeaturesUtils, 'decode', 'vae')
timed(FeaturesUtils, 'vocode', 'vocoder')
timed(eu, 'generate', 'generate')
timed(eu, 'make_video', 'mux')
try:
    runpy.run_path(sys.argv[0], run_name='__main__')
finally:
    seconds['imports'] = t_imported - t_start
    if 'decode' in marks:
        seconds['load'] = marks['decode'] - t_imported
    seconds['in_process'] = time.perf_counter() - t_start
    print('REF_STAGES ' + json.dumps(seconds), file=sys.stderr, flush=True)
"""


# -- checks -----------------------------------------------------------------------------------------


class Refusal(Exception):
    """What is missing for a side-by-side run, said plainly."""


def check_reference(reference_dir: Path | None, reference_python: Path | None) -> tuple[Path, Path]:
    """The reference checkout and its Python, or a `Refusal` saying what is missing and how to get it."""
    how = (
        "a checkout of the reference SelVA code (github.com/jnwnlee/selva) and a Python environment "
        "with what its demo.py imports, both outside this repository, e.g. "
        "--reference-dir /work/ref/selva --reference-python /work/ref/venv/bin/python "
        "(see benchmarks/README.md, 'Side by side with the reference')"
    )
    if reference_dir is None or reference_python is None:
        raise Refusal(f"--reference-dir and --reference-python are both required: {how}")
    reference_dir = reference_dir.expanduser()
    missing = [p for p in ("demo.py", "selva/utils/eval_utils.py") if not (reference_dir / p).is_file()]
    if not reference_dir.is_dir() or missing:
        what = "is not a folder" if not reference_dir.is_dir() else f"lacks {', '.join(missing)}"
        raise Refusal(f"--reference-dir {reference_dir} {what}; it must be {how}")
    if reference_dir.resolve() == ROOT or ROOT in reference_dir.resolve().parents:
        raise Refusal(
            f"--reference-dir {reference_dir} is inside this repository; keep the reference outside"
        )
    reference_python = reference_python.expanduser()
    if not reference_python.is_file() or not os.access(reference_python, os.X_OK):
        raise Refusal(f"--reference-python {reference_python} is not an executable file; it must be {how}")
    return reference_dir, reference_python


# -- the reference's working folder -----------------------------------------------------------------


def synchformer_state(video_enc_state: dict[str, Any]) -> dict[str, Any]:
    """The plain Synchformer's state dict: the `vfeat_extractor.*` entries of video_enc_sup_5.pth."""
    return {k: v for k, v in video_enc_state.items() if k.startswith(SYNCHFORMER_PREFIX)}


def write_synchformer(video_enc: Path, dest: Path) -> None:
    """Write `synchformer_state(video_enc)` to `dest` (in a child process: it needs torch)."""
    import torch

    state = synchformer_state(torch.load(video_enc, map_location="cpu", mmap=True, weights_only=True))
    tmp = dest.with_name(dest.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, dest)


def _link(link: Path, target: Path) -> None:
    """`link` -> `target`, replacing whatever `link` was."""
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def hub_snapshot(hub_cache: Path, repo: str, files: dict[str, Path]) -> Path:
    """Files as a Hugging Face cache snapshot of `repo` (the layout huggingface_hub reads offline).

    `models--org--name/refs/main` names a commit; `snapshots/<commit>/<file>` links to
    `blobs/<sha256>`, which links to the file itself (nothing is copied).
    """
    folder = hub_cache / ("models--" + repo.replace("/", "--"))
    commit = hashlib.sha1(repo.encode()).hexdigest()  # any 40 hex digits; fixed per repo
    for name, target in files.items():
        blob = folder / "blobs" / _sha256(target)
        _link(blob, target.resolve())
        _link(
            folder / "snapshots" / commit / name,
            Path(os.path.relpath(blob, (folder / "snapshots" / commit / name).parent)),
        )
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return folder / "snapshots" / commit


def prepare_reference_dir(run_dir: Path, weights: Path) -> Path:
    """The reference's working folder: `weights/`, `ext_weights/` and `hf/` pointing at `weights`.

    Rebuilt only when the weights folder's BUILT.json changes.
    """
    marker = run_dir / "PREPARED.json"
    stamp = {"weights": str(weights), "built": (weights / "BUILT.json").read_text()}
    with contextlib.suppress(OSError, ValueError):
        if json.loads(marker.read_text()) == stamp:
            return run_dir
    log(f"preparing the reference's working folder {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    _link(run_dir / "weights", weights / "weights")
    ext = run_dir / "ext_weights"
    if ext.is_symlink():
        ext.unlink()
    ext.mkdir(exist_ok=True)
    for f in (weights / "ext_weights").iterdir():
        _link(ext / f.name, f)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    cmd = [sys.executable, "-m", "benchmarks.vs_reference", "--write-synchformer",
           str(weights / "weights" / "video_enc_sup_5.pth"), str(ext / SYNCHFORMER_FILE)]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    hub_cache = run_dir / "hf" / "hub"
    for repo, name in REFERENCE_HUB_REPOS.items():
        hub_snapshot(hub_cache, repo, {f.name: f for f in sorted((weights / name).iterdir()) if f.is_file()})
    marker.write_text(json.dumps(stamp))
    return run_dir


def reference_cmd(
    args: argparse.Namespace, reference_dir: Path, python: Path, clip: Path, out: Path
) -> list[str]:
    cmd = [
        str(python), "-c", REFERENCE_BOOTSTRAP, str(reference_dir.resolve()),
        "--variant", args.variant, "--video", str(clip), "--prompt", args.prompt,
        "--duration", f"{args.duration:g}", "--num_steps", str(args.steps),
        "--cfg_strength", str(args.cfg), "--seed", str(args.seed), "--output", str(out),
    ]  # fmt: skip
    return [*cmd, "--full_precision"] if args.reference_precision == "fp32" else cmd


def reference_stages(run: ChildRun) -> dict[str, float]:
    for _, line in reversed(run.lines):
        if STAGES_PREFIX in line:
            return json.loads(line.split(STAGES_PREFIX, 1)[1])
    return {}
