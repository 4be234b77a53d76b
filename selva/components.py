"""Every network of a variant, found (downloaded if needed), verified and loaded for one device.

`SelvaPipeline.from_pretrained` is this plus the pipeline around it; the
device, precision and offloading choices come from `selva.device`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from selva import device as devices
from selva import hub
from selva.loading import build_network, release_freed_memory
from selva.text import ClipTextEncoder, T5TextEncoder
from selva.variants import get_variant


def load_components(
    variant: str,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    offload: str = "auto",
    weights_dir: str | Path | None = None,
    revision: str | None = None,
) -> dict[str, Any]:
    """`SelvaPipeline(...)`'s keyword arguments: the variant, its six networks, device, dtype, offload."""
    spec = get_variant(variant)
    run_on = devices.choose_device(device)
    run_in = devices.choose_dtype(run_on, dtype)
    paths = hub.resolve(spec, weights_dir=weights_dir, revision=revision)
    per_param = torch.finfo(run_in).bits // 8
    offload_on = devices.choose_offload(offload, run_on, resident_bytes=spec.resident_bytes(per_param))
    # Offloaded parts wait on the CPU and visit the accelerator only while they run.
    guest_device = torch.device("cpu") if offload_on else run_on

    def network(role: str, on: torch.device) -> nn.Module:
        return build_network(spec, role, paths, device=on, dtype=run_in)

    # Loading briefly needs more than the weights: a weight-norm fold holds the file's float32
    # pages and its float32 result at once, transformers maps all of T5. Those loads go
    # first, while little else is resident; the others cast tensor by tensor and add
    # almost nothing over their own weights.
    vocoder = network("vocoder", guest_device)
    vae = network("vae", run_on)
    t5 = T5TextEncoder.from_pretrained(
        spec.t5.repo, device=guest_device, dtype=run_in, local_dir=paths["t5"], spec=spec.t5
    )
    release_freed_memory()
    clip = ClipTextEncoder.from_pretrained(
        spec.clip.repo, device=guest_device, dtype=run_in, local_dir=paths["clip"], spec=spec.clip
    )
    generator = network("generator", run_on)
    text_synch = network("text_synch", run_on)
    return {
        "variant": spec,
        "text_synch": text_synch,
        "generator": generator,
        "vae": vae,
        "vocoder": vocoder,
        "t5": t5,
        "clip": clip,
        "device": run_on,
        "dtype": run_in,
        "offload": offload_on,
    }
