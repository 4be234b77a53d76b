"""What the benchmarks measure of a process: its resident memory (now and at its peak), the bytes a
module holds, wall time of a block, the CPU's name and why a run is in its precision."""

from __future__ import annotations

import contextlib
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

GB = 1000**3
MB = 1000**2


def _status_bytes(field: str) -> int | None:
    """A `/proc/self/status` memory field (VmHWM, VmRSS) in bytes; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss() -> int:
    """Peak resident set size of this process since start (or since `reset_peak_rss`)."""
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # macOS reports bytes, Linux KiB


def current_rss() -> int:
    return _status_bytes("VmRSS") or peak_rss()


def reset_peak_rss() -> bool:
    """Restart VmHWM at the current RSS (Linux: write 5 to clear_refs), so earlier peaks do not count."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def loaded_bytes(module: Any) -> int:
    """Bytes of the parameters and buffers of `module` (shared tensors once)."""
    from itertools import chain

    seen: set[tuple[int, int]] = set()
    total = 0
    for t in chain(module.parameters(), module.buffers()):
        key = (t.data_ptr(), t.numel())
        if key in seen or t.is_meta:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


@contextlib.contextmanager
def stopwatch(out: dict[str, float], name: str, sync: Callable[[], None] | None = None) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        if sync is not None:
            sync()
        out[name] = time.perf_counter() - start


def dtype_reason(device: Any, requested: str, used: Any) -> str:
    """Why the run is in its precision: asked for, or `selva.device`'s default and its reason."""
    from selva import device as devices

    asked = devices.parse_dtype(requested)
    if asked is None:
        return devices.explain_dtype(device, devices.probe_capabilities())
    if asked != used:
        return f"{requested} asked for (--dtype), unsupported here: {used} instead"
    return f"{requested}: asked for (--dtype)"


def cpu_name() -> str:
    """The CPU's model name (platform.processor() is often empty on Linux)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def shown(x: float | None, spec: str, scale: float = 1.0, unit: str = "") -> str:
    """`x / scale` as a report shows it (`spec` a format spec, then `unit`); "-" if not measured."""
    return "-" if x is None else f"{x / scale:{spec}}{unit}"
