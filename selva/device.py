"""Device, precision and offload choices.

Every choice is split in two: probing the machine (`probe_capabilities`) and a
pure decision on what was probed (`choose_device`, `choose_dtype`,
`choose_offload`), so the decisions are unit-tested with made-up machines.
Nothing here runs at import: the device is picked when a pipeline is built.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from selva import spec
from selva.spec import InputError

log = logging.getLogger(__name__)

GIB = 1024**3

DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}
AUTO = ("auto", "")

OFFLOAD_STRATEGIES = spec.OFFLOADS
# Activations (TextSynch over 8 s of video dominates), CUDA context and allocator slack on top of
# the resident weights: small_16k needs about 6 GB in bf16 in all, of which about 2 GB are weights.
OFFLOAD_HEADROOM_BYTES = 4 * GIB

# CPU flags of native bf16 arithmetic: with them bf16 matmuls run in hardware
# (measured: 49 s in bf16 vs 93 s in fp32 for an 8 s clip on two AMX cores);
# without them PyTorch emulates bf16 and it is slower than fp32.
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


class PrecisionWarning(UserWarning):
    """A requested precision is unsupported or slow on the chosen device and was replaced."""


@dataclass(frozen=True)
class Capabilities:
    """What the machine offers; `probe_capabilities` fills it, tests make it up."""

    cuda: bool = False
    mps: bool = False
    cuda_bf16: bool = False  # native bf16 on the CUDA device (Ampere or later)
    mps_bf16: bool = False  # bf16 kernels on MPS (macOS 14 or later)
    cpu_flags: frozenset[str] = field(default_factory=frozenset)

    @property
    def cpu_bf16(self) -> bool:
        return bool(self.cpu_flags & CPU_BF16_FLAGS)


def read_cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The `flags` of the first CPU in /proc/cpuinfo (empty where there is no such file, e.g. macOS)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    return parse_cpu_flags(text)


def parse_cpu_flags(cpuinfo_text: str) -> frozenset[str]:
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 says flags, ARM says Features
            return frozenset(value.split())
    return frozenset()


def _mps_supports_bf16() -> bool:
    try:
        torch.zeros(1, dtype=torch.bfloat16, device="mps")
    except (RuntimeError, TypeError):
        return False
    return True


def probe_capabilities() -> Capabilities:
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    return Capabilities(
        cuda=cuda,
        mps=mps,
        # including_emulation=False: emulated bf16 on pre-Ampere GPUs is far slower than fp16.
        cuda_bf16=cuda and torch.cuda.is_bf16_supported(including_emulation=False),
        mps_bf16=mps and _mps_supports_bf16(),
        cpu_flags=read_cpu_flags(),
    )


def choose_device(
    requested: str | torch.device | None = None, caps: Capabilities | None = None
) -> torch.device:
    """`None`/"auto": CUDA, then MPS, then the CPU; an explicit device must exist."""
    caps = probe_capabilities() if caps is None else caps
    if requested is None or (isinstance(requested, str) and requested.strip().lower() in AUTO):
        if caps.cuda:
            return torch.device("cuda")
        return torch.device("mps" if caps.mps else "cpu")
    try:
        device = torch.device(requested.strip().lower() if isinstance(requested, str) else requested)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {requested!r}: use auto, cuda, cuda:N, mps or cpu") from exc
    available = {"cpu": True, "cuda": caps.cuda, "mps": caps.mps}
    if not available.get(device.type, False):
        usable = ", ".join(name for name, ok in available.items() if ok)
        raise InputError(f"device {device} is not available on this machine; usable: {usable} (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(
            f"device {device} does not exist: this machine has {torch.cuda.device_count()} GPU(s)"
        )
    return device


def parse_dtype(requested: str | torch.dtype | None) -> torch.dtype | None:
    """bf16/fp16/fp32 (or torch dtypes, or their long names) -> torch.dtype; auto/None -> None."""
    if requested is None or isinstance(requested, torch.dtype):
        if requested is not None and requested not in DTYPES.values():
            raise InputError(f"precision {requested} is not supported: use bf16, fp16 or fp32")
        return requested
    name = str(requested).strip().lower().removeprefix("torch.")
    if name in AUTO:
        return None
    if name not in DTYPES:
        raise InputError(f"unknown precision {requested!r}: use auto, bf16, fp16 or fp32")
    return DTYPES[name]


def default_dtype(device: torch.device, caps: Capabilities) -> torch.dtype:
    """The fastest precision that is safe on `device` (see the module notes on measured speeds)."""
    if device.type == "cuda":
        return torch.bfloat16 if caps.cuda_bf16 else torch.float16
    if device.type == "mps":
        return torch.bfloat16 if caps.mps_bf16 else torch.float16
    return torch.bfloat16 if caps.cpu_bf16 else torch.float32


def explain_dtype(device: torch.device | str, caps: Capabilities) -> str:
    """Why `default_dtype` picks what it picks on `device`, in one line (for logs and benchmarks)."""
    device = torch.device(device)
    dtype = _name(default_dtype(device, caps))
    if device.type == "cuda":
        if caps.cuda_bf16:
            return f"{dtype}: the GPU has native bf16 (Ampere or later), with float32's range"
        return f"{dtype}: the GPU has no native bf16 (before Ampere), so half precision is fp16"
    if device.type == "mps":
        if caps.mps_bf16:
            return f"{dtype}: MPS has bf16 kernels (macOS 14 or later)"
        return f"{dtype}: MPS on this macOS has no bf16 kernels, so half precision is fp16"
    flags = sorted(caps.cpu_flags & CPU_BF16_FLAGS)
    if flags:
        return f"{dtype}: the CPU has native bf16 arithmetic ({', '.join(flags)}), about twice fp32's speed"
    return f"{dtype}: the CPU has no native bf16 (no avx512_bf16/amx_bf16), where bf16 is emulated and slower"


def choose_dtype(
    device: torch.device | str,
    requested: str | torch.dtype | None = None,
    caps: Capabilities | None = None,
) -> torch.dtype:
    """The precision to run in: the measured default, or the request where the device supports it.

    Unsupported requests fall back with a `PrecisionWarning` rather than failing,
    since the result is the same audio, only slower or less exact.
    """
    device = torch.device(device)
    caps = probe_capabilities() if caps is None else caps
    dtype = parse_dtype(requested)
    if dtype is None:
        return default_dtype(device, caps)
    fallback, why = None, ""
    if dtype == torch.bfloat16 and device.type == "cuda" and not caps.cuda_bf16:
        fallback, why = torch.float16, "this GPU has no native bf16"
    elif dtype == torch.bfloat16 and device.type == "mps" and not caps.mps_bf16:
        fallback, why = torch.float16, "MPS on this macOS has no bf16 kernels"
    elif dtype == torch.float16 and device.type == "cpu":
        # fp16 on the CPU is emulated and several conv kernels are missing.
        fallback = torch.bfloat16 if caps.cpu_bf16 else torch.float32
        why = "the CPU has no fast fp16 kernels"
    elif dtype == torch.bfloat16 and device.type == "cpu" and not caps.cpu_bf16:
        # Honoured (it works), but the user should know why it is slow.
        _warn("bf16 on this CPU is emulated (no avx512_bf16/amx_bf16) and slower than fp32")
    if fallback is not None:
        _warn(f"{_name(dtype)} is not supported on {device.type}: {why}; using {_name(fallback)} instead")
        return fallback
    return dtype


def _name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))


def _warn(message: str) -> None:
    # A warning, not a log line: callers can filter it or turn it into an error, and it shows once.
    warnings.warn(message, PrecisionWarning, stacklevel=3)


def parse_offload(strategy: str | bool | None) -> str:
    """auto / keep_in_vram / offload_to_cpu (also on/off and booleans) -> the canonical name."""
    if strategy is None:
        return "auto"
    if isinstance(strategy, bool):
        return "offload_to_cpu" if strategy else "keep_in_vram"
    name = str(strategy).strip().lower().replace("-", "_")
    name = spec.OFFLOAD_ALIASES.get(name, name)
    if name not in OFFLOAD_STRATEGIES:
        raise InputError(f"unknown offload strategy {strategy!r}: use {', '.join(OFFLOAD_STRATEGIES)}")
    return name


def choose_offload(
    strategy: str | bool | None,
    device: torch.device | str,
    *,
    resident_bytes: int,
    total_memory: int | None = None,
) -> bool:
    """Whether the text encoders and the vocoder wait on the CPU between uses.

    `resident_bytes` is what every network together needs on the device (see
    `Variant.resident_bytes`). "auto" offloads only on CUDA when the GPU's
    total memory is below that plus `OFFLOAD_HEADROOM_BYTES`: on the CPU there
    is nothing to offload to, and MPS shares memory with the CPU, so moving
    saves nothing there.
    """
    device = torch.device(device)
    name = parse_offload(strategy)
    if device.type == "cpu":
        return False
    if name != "auto":
        return name == "offload_to_cpu"
    if device.type != "cuda":
        return False
    if total_memory is None:
        total_memory = torch.cuda.get_device_properties(device).total_memory
    offload = total_memory < resident_bytes + OFFLOAD_HEADROOM_BYTES
    if offload:
        log.info(
            "%.1f GiB of GPU memory: text encoders and vocoder wait on the CPU between uses",
            total_memory / GIB,
        )
    return offload


@contextmanager
def resident(module: nn.Module, device: torch.device | str, *, offload: bool) -> Iterator[nn.Module]:
    """Keep `module` on `device` for the block when offloading; otherwise leave it where it is.

    The module goes back to the CPU afterwards, and CUDA's cache is emptied so
    the freed memory is really available to the next network.
    """
    device = torch.device(device)
    if not offload or device.type == "cpu":
        yield module
        return
    module.to(device)
    try:
        yield module
    finally:
        module.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
