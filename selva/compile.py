"""torch.compile for the SelVA networks, with a bounded number of compiles.

What is compiled, in place (callers keep using the same modules):

- the generator's forward, called twice per flow step in one batch (25 steps by
  default) with the same shapes every time: on CUDA in mode "reduce-overhead",
  inductor's kernels replayed as one CUDA graph per step, since at 8 s the
  small generator's kernels are too short to hide their launch cost; on the
  CPU (and MPS) a plain compile;
- TextSynch's network over a batch of segments (`TextSynch.encode_segments`:
  the Python that cuts the video into segments stays eager, so the CPU's
  one-segment-at-a-time loop reuses one compiled graph instead of unrolling);
- the vocoder's forward. These two run once per generation, so they get
  inductor's default mode: a CUDA graph would save a few launches per
  generation and hold its memory pool for good.

Shapes, and why there are no duration buckets: every sequence length follows
from the duration (latent, CLIP and sync tokens; the vocoder's mel frames) and
TextSynch's text length from the prompt. Padding inputs up to a few bucket
lengths would change the audio (none of the networks takes an attention mask),
so the number of compiles is bounded instead:

- on the CPU the lengths are dynamic from the first call (`dynamic=True`): one
  compile serves every duration and prompt. A compile there takes minutes on
  two cores, and specialising to one length gains little without CUDA graphs;
- on CUDA the first call is compiled for its exact shapes, so the common case
  (the app's 8 s default) gets kernels specialised to it; the first other shape
  makes dynamo recompile once with dynamic lengths (its automatic dynamic
  shapes), and that graph serves every later duration. CUDA graphs are then
  recorded once per distinct shape, a quick capture, not a compile;
- `torch._dynamo.config.recompile_limit` (raised to `RECOMPILE_LIMIT` if lower)
  caps what is left, e.g. a new batch size from another `num_samples`: past
  it a function runs eagerly, correct but uncompiled.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

RECOMPILE_LIMIT = 8  # per compiled function: durations, batch sizes, dtypes seen in one process
CUDA_GRAPH_MODE = "reduce-overhead"


@dataclass(frozen=True)
class CompilePlan:
    """How each network is compiled on one device (`compile_plan`)."""

    device_type: str
    generator_mode: str  # torch.compile mode of the generator's forward
    mode: str  # of TextSynch's segment network and the vocoder
    dynamic: bool | None  # torch.compile's `dynamic`: True = dynamic lengths from the start, None = automatic

    @property
    def cuda_graphs(self) -> bool:
        """Whether the generator's compiled forward replays CUDA graphs (these two modes capture them)."""
        return self.device_type == "cuda" and self.generator_mode in ("reduce-overhead", "max-autotune")


def compile_plan(device: torch.device | str, mode: str | None = None) -> CompilePlan:
    """The compile settings for `device`; `mode` overrides the generator's mode (None: the default)."""
    device = torch.device(device)
    if device.type == "cuda":
        return CompilePlan("cuda", mode or CUDA_GRAPH_MODE, "default", dynamic=None)
    # Without CUDA, "reduce-overhead" means nothing; any other explicit mode is honoured.
    generator_mode = "default" if mode in (None, CUDA_GRAPH_MODE) else mode
    return CompilePlan(device.type, generator_mode, "default", dynamic=True)


def tune_backends(device: torch.device | str) -> None:
    """Backend switches worth having on `device` whether or not anything is compiled.

    On CUDA: cuDNN benchmarks its convolution algorithms per input shape once
    and keeps the fastest (the VAE's and vocoder's convolutions repeat the same
    shapes every generation of a duration).
    """
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True


def compile_networks(
    generator: nn.Module | None,
    text_synch: nn.Module | None,
    vocoder: nn.Module | None,
    *,
    device: torch.device | str,
    mode: str | None = None,
    backend: str = "inductor",
) -> CompilePlan:
    """Compile the given networks in place for `device` (see the module notes); None skips one.

    `backend` other than inductor (e.g. "eager", "aot_eager": dynamo's tracing
    alone, to tell a tracing problem from a code-generation one, and quick to
    smoke-test) ignores the modes and records no CUDA graphs.

    Call it after the networks are on their device and in their dtype: the
    vocoder's fused activations are prepared here, for the dtype and device of
    its weights. Nothing is compiled until the first call, which then takes a
    while (seconds for the tiny test models, minutes at real size on a CPU).
    Safe on the CPU (inductor needs a C++ compiler there). Returns the plan used.
    """
    plan = compile_plan(device, mode)
    tune_backends(device)
    _raise_recompile_limit(RECOMPILE_LIMIT)
    inductor = backend == "inductor"

    def compile_(module: nn.Module, name: str, mode: str, cuda_graphs: bool = False) -> None:
        _compile_method(
            module,
            name,
            backend=backend,
            mode=mode if inductor else None,
            dynamic=plan.dynamic,
            cuda_graphs=cuda_graphs and inductor,
        )

    if generator is not None:
        compile_(generator, "forward", plan.generator_mode, cuda_graphs=plan.cuda_graphs)
    if text_synch is not None:
        compile_(text_synch, "encode_segments", plan.mode)
    if vocoder is not None:
        prepare = getattr(vocoder, "prepare", None)
        if prepare is not None:
            prepare()  # build the fused tensors eagerly: the compiled graph only reads them
        compile_(vocoder, "forward", plan.mode)
    log.info(
        "compiled for %s with %s: generator mode %r, others %r, dynamic=%s",
        plan.device_type,
        backend,
        plan.generator_mode,
        plan.mode,
        plan.dynamic,
    )
    return plan


def compile_pipeline(pipe: Any, *, mode: str | None = None, backend: str = "inductor") -> CompilePlan:
    """`compile_networks` on a loaded `SelvaPipeline`'s generator, TextSynch and vocoder.

    An offloaded vocoder moves between the CPU and the GPU around every use,
    which would throw its compiled graph's device away each time: it then stays eager.
    """
    vocoder = None if pipe.offload else pipe.vocoder
    if pipe.offload:
        log.info("vocoder offloaded between uses: left uncompiled")
    return compile_networks(
        pipe.generator, pipe.text_synch, vocoder, device=pipe.device, mode=mode, backend=backend
    )


def is_compiled(module: nn.Module, method: str = "forward") -> bool:
    """Whether `compile_networks` replaced `method` of `module`."""
    return getattr(module.__dict__.get(method), "_selva_compiled", False)


def _compile_method(
    module: nn.Module,
    name: str,
    *,
    backend: str,
    mode: str | None,
    dynamic: bool | None,
    cuda_graphs: bool,
) -> None:
    if is_compiled(module, name):
        return
    eager = getattr(module, name)
    compiled = torch.compile(eager, backend=backend, mode=mode, dynamic=dynamic)
    if cuda_graphs:
        compiled = _replayed(compiled)
    # An instance attribute shadows the class method: hooks, `config` and the other methods stay as they were.
    setattr(module, name, compiled)
    compiled._selva_compiled = True  # type: ignore[attr-defined]


def _replayed(compiled: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """A CUDA-graph function safe to call in a loop whose results are kept.

    Each call starts a new graph step (the previous call's outputs are not
    needed by the graph any more) and returns a copy: a graph's outputs live in
    its memory pool and the next replay overwrites them, and callers may still
    hold them then (the pipeline's float32 path keeps views of the last velocity).
    """

    @functools.wraps(compiled)
    def call(*args: Any, **kwargs: Any) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(*args, **kwargs).clone()

    return call


def _raise_recompile_limit(limit: int) -> None:
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # renamed in torch 2.6; either spelling works
        if hasattr(config, name):
            if getattr(config, name) < limit:
                setattr(config, name, limit)
            return
