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
- where shapes are not dynamic from the start (CUDA), the batch is padded up
  to one of `BATCH_BUCKETS` rows (repeating its last row; the extra rows'
  outputs are dropped) before the generator and the vocoder see it. Rows never
  look at each other, so this changes no real row, and windows x candidates x
  (stems, CFG branches) give at most a handful of batch sizes: two stems, three
  candidates or a last batch of fewer windows land in a bucket already compiled
  instead of compiling again. On the CPU every batch of 2 rows or more shares
  the one dynamic graph, and padding would only add compute;
- `torch._dynamo.config.recompile_limit` (raised to `RECOMPILE_LIMIT` if lower)
  caps what is left: past it a function runs eagerly, correct but uncompiled.

`compile_pipeline` also points PyTorch's on-disk compile caches at a folder
under the Hugging Face cache (`selva.compile_cache`), so a second start reuses
the kernels. Each call that compiles logs what it compiled and how long it took.
`warm_pipeline` runs a compiled pipeline once over the shapes a start would meet
first (`selva download --compile` fills the cache ahead of time with it).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch._dynamo.utils import counters

log = logging.getLogger(__name__)

RECOMPILE_LIMIT = 8  # per compiled function: durations, batch sizes, dtypes seen in one process
CUDA_GRAPH_MODE = "reduce-overhead"
# Batch sizes the generator and the vocoder are compiled for: the generator's batch is
# windows x candidates x CFG branches, at most 16 windows x candidates (selva.window_passes'
# WINDOW_BATCH) times 2; larger batches round up to a multiple of the last bucket.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)
# Candidates per call `warm_pipeline` runs where shapes are static (CUDA): an 8 s call's generator
# rows 2, 4 and 8 (CFG branches x candidates), the vocoder's 1, 2 and 4, each a bucket. Where
# lengths are dynamic (the CPU) one call serves every batch of 2 rows or more.
WARM_SAMPLES = (1, 2, 4)
WARM_STEPS = 2  # flow steps per warm call: a CUDA graph is recorded on a shape's second call


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
    plan: CompilePlan | None = None,
) -> CompilePlan:
    """Compile the given networks in place for `device` (see the module notes); None skips one.

    `plan` replaces `compile_plan(device, mode)` (e.g. shapes static from the
    first call on the CPU too, as on CUDA).

    `backend` other than inductor (e.g. "eager", "aot_eager": dynamo's tracing
    alone, to tell a tracing problem from a code-generation one, and quick to
    smoke-test) ignores the modes and records no CUDA graphs.

    Call it after the networks are on their device and in their dtype: the
    vocoder's fused activations are prepared here, for the dtype and device of
    its weights. Nothing is compiled until the first call, which then takes a
    while (seconds for the tiny test models, minutes at real size on a CPU).
    Safe on the CPU (inductor needs a C++ compiler there). Returns the plan used.
    """
    plan = plan or compile_plan(device, mode)
    tune_backends(device)
    _raise_recompile_limit(RECOMPILE_LIMIT)
    inductor = backend == "inductor"

    def compile_(
        module: nn.Module, name: str, mode: str, cuda_graphs: bool = False, padded: bool = False
    ) -> None:
        _compile_method(
            module,
            name,
            backend=backend,
            mode=mode if inductor else None,
            dynamic=plan.dynamic,
            cuda_graphs=cuda_graphs and inductor,
            buckets=BATCH_BUCKETS if padded else None,
        )

    # Padding buys nothing where every length is dynamic already (the CPU) and costs its rows' compute.
    pad = plan.dynamic is not True
    if generator is not None:
        compile_(generator, "forward", plan.generator_mode, cuda_graphs=plan.cuda_graphs, padded=pad)
    if text_synch is not None:
        compile_(text_synch, "encode_segments", plan.mode)
    if vocoder is not None:
        prepare = getattr(vocoder, "prepare", None)
        if prepare is not None:
            prepare()  # build the fused tensors eagerly: the compiled graph only reads them
        compile_(vocoder, "forward", plan.mode, padded=pad)
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
    The compiled kernels are kept in `selva.compile_cache.compile_cache_dir`
    for the pipeline's variant and device, so the next process compiles nothing new.
    """
    from selva.compile_cache import use_compile_cache

    variant = getattr(getattr(pipe, "variant", None), "name", None) or "custom"
    if backend == "inductor":
        use_compile_cache(variant, pipe.device)
    vocoder = None if pipe.offload else pipe.vocoder
    if pipe.offload:
        log.info("vocoder offloaded between uses: left uncompiled")
    return compile_networks(
        pipe.generator, pipe.text_synch, vocoder, device=pipe.device, mode=mode, backend=backend
    )


@dataclass(frozen=True)
class WarmReport:
    """What `warm_pipeline` did: the calls run, graphs dynamo compiled, inductor's cache hits and misses."""

    calls: list[str]
    seconds: float
    graphs: int
    cache_hits: int
    compiled: int  # FX graphs inductor compiled afresh (0: the cache had every one)

    def line(self) -> str:
        return (
            f"{len(self.calls)} call(s) ({', '.join(self.calls)}) in {self.seconds:.1f} s: "
            f"{self.graphs} graph(s), kernels from the cache: {self.cache_hits}, new: {self.compiled}"
        )


def warm_pipeline(
    pipe: Any, *, samples: tuple[int, ...] | None = None, steps: int = WARM_STEPS
) -> WarmReport:
    """Run a compiled pipeline's public steps once per batch shape a start meets first; returns a report.

    Synthetic input, the shapes of an 8 s call (the trained length; longer spans run in 8 s
    windows): TextSynch over 8 s of grey frames, then `sample` with `samples` candidates each
    (default `WARM_SAMPLES` on CUDA, one call elsewhere). Everything compiled lands in the
    compile cache `compile_pipeline` set up, so the next process reads it instead of compiling.
    """
    from selva.features import frame_chunks
    from selva.sequence import SEGMENT_FRAMES, SEGMENT_STRIDE, SequenceLengths
    from selva.spec import CFG_STRENGTH, TRAINED_DURATION

    if samples is None:
        samples = WARM_SAMPLES if pipe.device.type == "cuda" else (1,)
    seconds = TRAINED_DURATION
    lengths = SequenceLengths.from_duration(
        seconds, sample_rate=pipe.variant.sample_rate, hop_length=pipe.variant.hop_length
    )
    frames = (lengths.sync_segments - 1) * SEGMENT_STRIDE + SEGMENT_FRAMES
    video = torch.full((frames, 3, 224, 224), 128, dtype=torch.uint8)
    graphs, hits, misses = _compile_counts()
    begun = time.perf_counter()
    calls = []
    with torch.inference_mode():  # as the pipeline's call: dynamo's guards include the grad mode
        prompt = pipe.encode_prompt("warming up")
        sync_f = pipe.encode_span(frame_chunks(video, lengths.sync_segments), [prompt])[0]
        calls.append(f"TextSynch {seconds:g} s")
        windows = pipe.plan_span(None, duration=seconds).windows
        for count in samples:
            cfg = CFG_STRENGTH.default
            pipe.sample(
                sync_f,
                prompt.clip,
                None,
                windows=windows,
                steps=steps,
                cfg_strength=cfg,
                seed=0,
                num_samples=count,
            )
            calls.append(f"{count} candidate(s)")
    now_graphs, now_hits, now_misses = _compile_counts()
    report = WarmReport(
        calls, time.perf_counter() - begun, now_graphs - graphs, now_hits - hits, now_misses - misses
    )
    log.info("warmed: %s", report.line())
    return report


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
    buckets: tuple[int, ...] | None = None,
) -> None:
    if is_compiled(module, name):
        return
    eager = getattr(module, name)
    compiled = torch.compile(eager, backend=backend, mode=mode, dynamic=dynamic)
    if cuda_graphs:
        compiled = _replayed(compiled)
    compiled = _watched(compiled, f"{type(module).__name__}.{name}", buckets)
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


def bucket_rows(rows: int, buckets: tuple[int, ...] = BATCH_BUCKETS) -> int:
    """The smallest bucket holding `rows`; past the last, the next multiple of the last."""
    for size in buckets:
        if rows <= size:
            return size
    return -(-rows // buckets[-1]) * buckets[-1]


def pad_rows(value: Any, rows: int, padded: int) -> Any:
    """`value` with every tensor of `rows` rows (dataclass fields too) padded to `padded` rows.

    The last row is repeated: real values, so the padding rows compute nothing
    that could overflow, and they are dropped afterwards.
    """
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 or value.shape[0] != rows:
            return value
        return torch.cat([value, value[-1:].expand(padded - rows, *value.shape[1:])])
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: pad_rows(getattr(value, f.name), rows, padded) for f in dataclasses.fields(value)}
        return dataclasses.replace(value, **changes)
    return value


def _watched(
    compiled: Callable[..., torch.Tensor], name: str, buckets: tuple[int, ...] | None
) -> Callable[..., torch.Tensor]:
    """`compiled` with its batch padded to `buckets` (None: as given), logging each call that compiles.

    The first positional argument's rows are the batch. Compiling happens inside a call,
    so a call after which dynamo counts new graphs is reported with its time
    (the compile and the run; the compile is nearly all of it) and what
    inductor's on-disk cache served.
    """

    @functools.wraps(compiled)
    def call(*args: Any, **kwargs: Any) -> torch.Tensor:
        first = args[0] if args else None
        rows = first.shape[0] if isinstance(first, torch.Tensor) and first.dim() else None
        padded = bucket_rows(rows, buckets) if buckets and rows else rows
        if padded != rows:
            args = tuple(pad_rows(a, rows, padded) for a in args)
            kwargs = {k: pad_rows(v, rows, padded) for k, v in kwargs.items()}
        graphs, hits, misses = _compile_counts()
        begun = time.perf_counter()
        out = compiled(*args, **kwargs)
        now_graphs, now_hits, now_misses = _compile_counts()
        if now_graphs > graphs:
            log.info(
                "compiled %s for a batch of %s in %.1f s (%d graph(s); kernels from the cache: %d, new: %d)",
                name,
                padded,
                time.perf_counter() - begun,
                now_graphs - graphs,
                now_hits - hits,
                now_misses - misses,
            )
        return out[:rows] if padded != rows else out

    return call


def _compile_counts() -> tuple[int, int, int]:
    """(graphs dynamo compiled, inductor FX graph cache hits, misses) so far in this process."""
    return (
        counters["stats"]["unique_graphs"],
        counters["inductor"]["fxgraph_cache_hit"],
        counters["inductor"]["fxgraph_cache_miss"],
    )


def _raise_recompile_limit(limit: int) -> None:
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # renamed in torch 2.6; either spelling works
        if hasattr(config, name):
            if getattr(config, name) < limit:
                setattr(config, name, limit)
            return
