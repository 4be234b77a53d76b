"""Seconds per take of `selva.scoring` (CLAP prompt agreement and leakage), with random weights.

    python -m benchmarks.scoring [--size base|tiny] [--device cpu] [--repeats 3]

Run it from the repository root. It writes a random CLAP into a temporary folder
in the real repo's file layout and loads it through `selva.scoring.load_scorer`,
as production does: `base` has larger_clap_general's shapes (HTSAT-base audio
tower, RoBERTa-base text tower, ~194 M parameters; a ~780 MB file written once
per run), `tiny` is the tests' model. The tokenizer is the tests' small byte-level
one, which changes no timing that matters (prompts are a few tokens).

Each line is the median of `--repeats` calls, after one untimed warm-up:
- one take of 8 s at 16 kHz (small_16k's output) against its prompt, a negative
  prompt and two other sounds' prompts (resampling to 48 kHz included);
- the same at 44.1 kHz (the 44k variants);
- four candidates of 8 s scored in one call (per take);
- a 30 s take (3 windows of 10 s).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_random_clap(folder: Path, size: str) -> Path:
    """A random CLAP of `size` in the layout `selva.scoring.CLAP_FILES` names."""
    import torch
    from tiny_clap import tiny_clap_files, tokenizer_files
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    if size == "tiny":
        files = tiny_clap_files()
    else:
        files = tokenizer_files()
        config = ClapConfig(
            audio_config={  # HTSAT-base, as larger_clap_general
                "patch_embeds_hidden_size": 128,
                "hidden_size": 1024,
                "depths": [2, 2, 12, 2],
                "num_attention_heads": [4, 8, 16, 32],
            },
            text_config={},  # RoBERTa-base
            projection_dim=512,
        )
        torch.manual_seed(0)
        ClapModel(config).save_pretrained(folder)
        ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad").save_pretrained(folder)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    call()  # warm-up: first-call allocations, lazy imports
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=("base", "tiny"), default="base")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT / "tests"))  # tiny_clap lives with the tests
    import torch

    from selva.scoring import load_scorer

    rng = np.random.default_rng(0)

    def take(seconds: float, rate: int) -> np.ndarray:
        return (0.1 * rng.standard_normal(round(seconds * rate))).astype(np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        folder = write_random_clap(Path(tmp), options.size)
        built = time.perf_counter() - started
        started = time.perf_counter()
        scorer = load_scorer(folder, device=options.device)
        loaded = time.perf_counter() - started
    params = sum(p.numel() for p in scorer.model.parameters())
    rivals = {"others": ["car engine", "rain"], "negative_prompt": "music"}
    sync = torch.cuda.synchronize if scorer.device.type == "cuda" else lambda: None

    def timed(takes: list[np.ndarray], rate: int) -> float:
        def call() -> None:
            scorer.score_takes(takes, rate, "dog barking", **rivals)
            sync()

        return median_seconds(call, options.repeats) / len(takes)

    print(
        f"scoring benchmark: {options.size} CLAP ({params / 1e6:.1f} M parameters) on {scorer.device}, "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads; "
        f"build {built:.1f} s, load {loaded:.1f} s"
    )
    rows = [
        ("8 s at 16 kHz, 1 take", timed([take(8, 16_000)], 16_000)),
        ("8 s at 44.1 kHz, 1 take", timed([take(8, 44_100)], 44_100)),
        ("8 s at 16 kHz, 4 takes in one call", timed([take(8, 16_000) for _ in range(4)], 16_000)),
        ("30 s at 16 kHz (3 windows), 1 take", timed([take(30, 16_000)], 16_000)),
    ]
    for label, seconds in rows:
        print(f"  {label:<40} {seconds:7.3f} s per take")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
