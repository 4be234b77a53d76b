"""Hugging Face ZeroGPU: the generator compiled ahead of time with the platform's own helpers.

On a ZeroGPU Space every GPU call runs in a freshly forked process, so
`torch.compile` would compile again (or at best re-read its disk cache, tens of
seconds) on every request. The `spaces` package instead compiles ahead of time
(AOTInductor) once at start-up and ships the compiled model into each GPU call:
`spaces.aoti_capture` records the generator's inputs during one real sampling
pass, `torch.export` turns the generator into a graph for those shapes, and
`spaces.aoti_compile` compiles it inside a `spaces.GPU` task.

Shapes: the flow batch is padded to buckets as `selva.compile` pads it, and one
graph is compiled per bucket at the trained 8 s length (`AOT_SAMPLES`
candidates: 2 and 4 rows with both CFG branches); windows of longer spans are 8 s
too. Any other shape (a span under 8 s, a bigger batch) runs the eager
generator. That is why the compiled graphs are installed by hand rather than
with `spaces.aoti_apply`, which would also empty the generator's parameters and
leave no eager path for those shapes.

Nothing from `spaces` is imported unless `SPACES_ZERO_GPU` says this is a ZeroGPU Space.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from selva.compile import bucket_rows, pad_rows
from selva.spec import DependencyError

log = logging.getLogger(__name__)

ZERO_GPU_ENV = "SPACES_ZERO_GPU"  # set by Hugging Face on ZeroGPU hardware
AOT_GPU_SECONDS = 1500  # the longest GPU task ZeroGPU grants at start-up
AOT_SAMPLES = (1, 2)  # candidates per call compiled ahead (generator rows 2 and 4 at 8 s)
AOT_STEPS = 1  # flow steps of the capturing pass: the first generator call is captured


def on_zerogpu() -> bool:
    """Whether this process runs on a ZeroGPU Space (`SPACES_ZERO_GPU` set to a true value)."""
    return os.environ.get(ZERO_GPU_ENV, "").strip().lower() in ("1", "true", "yes")


def import_spaces() -> Any:
    """The `spaces` package, or a DependencyError saying how to get it."""
    try:
        import spaces
    except ImportError:
        raise DependencyError(
            f"{ZERO_GPU_ENV} is set (a ZeroGPU Space) but the `spaces` package is not installed: "
            "add `spaces` to requirements.txt (Spaces preinstall it on ZeroGPU hardware), "
            f"or unset {ZERO_GPU_ENV} off ZeroGPU"
        ) from None
    return spaces


def compile_mode(compile: bool) -> str:
    """How the app compiles: "aot" (ZeroGPU's ahead-of-time path), "jit" (`torch.compile`) or "eager".

    `compile` is the app's --compile. On ZeroGPU it means the ahead-of-time path, since
    `torch.compile` would compile in every GPU call's fresh process; without the `spaces`
    package there it is a warning and the eager path.
    """
    if not compile:
        return "eager"
    if not on_zerogpu():
        return "jit"
    try:
        import_spaces()
    except DependencyError as exc:
        log.warning("%s; running uncompiled", exc)
        return "eager"
    return "aot"


def load_and_compile_in_background(slot: Any, variant: str | None = None) -> threading.Thread:
    """The slot's background load, then `compile_ahead` on what it loaded (under the slot's lock).

    A failed compile is logged and the pipeline keeps its eager generator: a Space must still serve.
    """

    def run() -> None:
        slot.load_in_background(variant).join()
        if slot.pipe is None:  # the load failed; the page shows why
            return
        with slot.lock:
            try:
                compile_ahead(slot.pipe)
            except Exception:
                log.exception("ZeroGPU ahead-of-time compile failed; the generator stays eager")

    thread = threading.Thread(target=run, name="selva-zerogpu-aot", daemon=True)
    thread.start()
    return thread


def compile_ahead(pipe: Any, *, samples: tuple[int, ...] = AOT_SAMPLES) -> dict[tuple[int, int], Any]:
    """Compile `pipe.generator` ahead of time for 8 s calls of `samples` candidates; install it.

    Returns the compiled graphs by (batch rows, latent length). Inputs of another shape
    run the eager generator.
    """
    spaces = import_spaces()
    generator = pipe.generator
    eager = generator.forward
    flat = FlatGenerator(generator)

    @spaces.GPU(duration=AOT_GPU_SECONDS)
    def build() -> dict[tuple[int, int], Any]:
        from selva.spec import CFG_STRENGTH, TRAINED_DURATION

        compiled = {}
        windows = pipe.plan_span(None, duration=TRAINED_DURATION).windows
        with torch.no_grad():
            clip = pipe.encode_prompt("warming up").clip
            for count in samples:
                with spaces.aoti_capture(generator) as call:  # records the first call and stops the pass
                    pipe.sample(
                        None,
                        clip,
                        None,
                        windows=windows,
                        steps=AOT_STEPS,
                        cfg_strength=CFG_STRENGTH.default,  # both branches in one batch, as calls run
                        seed=0,
                        num_samples=count,
                    )
                latent, t, conditions = _arguments(call.args, call.kwargs)
                begun = time.perf_counter()
                exported = torch.export.export(flat, args=(latent, t, *FlatGenerator.flatten(conditions)))
                compiled[(latent.shape[0], latent.shape[1])] = spaces.aoti_compile(exported)
                log.info(
                    "ZeroGPU: generator compiled ahead for %d rows x %d latents in %.1f s",
                    latent.shape[0],
                    latent.shape[1],
                    time.perf_counter() - begun,
                )
        return compiled

    compiled = build()
    generator.forward = dispatch(compiled, eager)
    return compiled


def dispatch(compiled: dict[tuple[int, int], Callable[..., torch.Tensor]], eager: Callable) -> Callable:
    """A generator forward: the batch padded to a compiled bucket of its latent length, else `eager`."""
    buckets = tuple(sorted({rows for rows, _ in compiled}))

    @functools.wraps(eager)
    def forward(latent: torch.Tensor, t: torch.Tensor, conditions: Any) -> torch.Tensor:
        rows = latent.shape[0]
        padded = bucket_rows(rows, buckets)
        graph = compiled.get((padded, latent.shape[1]))
        if graph is None:
            return eager(latent, t, conditions)
        args = [pad_rows(value, rows, padded) for value in (latent, t, *FlatGenerator.flatten(conditions))]
        return graph(*args)[:rows]

    return forward


class FlatGenerator(nn.Module):
    """The generator with its `Conditions` passed as five tensors: the graph `torch.export` takes.

    (An exported program whose input is a dataclass writes guard code that does not compile
    in torch 2.14 when turned back into a module, which `spaces.aoti_compile` does.)
    """

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, latent: torch.Tensor, t: torch.Tensor, *conditions: torch.Tensor) -> torch.Tensor:
        from selva.models.generator import Conditions

        return self.generator(latent, t, Conditions(*conditions))

    @staticmethod
    def flatten(conditions: Any) -> list[torch.Tensor]:
        return [getattr(conditions, f.name) for f in dataclasses.fields(conditions)]


def _arguments(args: tuple, kwargs: dict) -> tuple[Any, Any, Any]:
    """(latent, t, conditions) of a captured generator call, however they were passed."""
    names = ("latent", "t", "conditions")
    values = dict(zip(names, args, strict=False)) | {k: v for k, v in kwargs.items() if k in names}
    return values["latent"], values["t"], values["conditions"]
