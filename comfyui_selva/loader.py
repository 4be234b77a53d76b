"""SELVA_MODEL: one loaded `SelvaPipeline`, kept between executions while its settings stay the same.

ComfyUI re-runs a loader node whenever its cached output is dropped (another
workflow, a changed input upstream); reloading SelVA costs seconds to minutes,
so the pipeline is remembered here. Only one is kept, as in the app: asking for
other settings lets the previous one go first, so two sets of weights never
compete for memory.
"""

from __future__ import annotations

import gc
import logging
import threading
from pathlib import Path

from selva.hub import local_path
from selva.variants import Variant, get_variant

from . import host, stages
from .stages import SelvaPipeline, WeightsError

log = logging.getLogger(__name__)

_lock = threading.RLock()
_resident: tuple[tuple[str, ...], SelvaPipeline] | None = None


def load_model(variant: str, precision: str, offload: str) -> SelvaPipeline:
    """The pipeline for these settings: the one already loaded, or a fresh load.

    Inside ComfyUI the weights come from models/selva/ (files missing there from
    the Hugging Face cache) and the device is ComfyUI's; outside, the `selva`
    package's defaults apply.
    """
    spec = get_variant(variant)
    device = host.torch_device()
    weights_dir = weights_dir_for(spec)
    key = (spec.name, precision, offload, str(device), str(weights_dir))
    global _resident
    with _lock:
        if _resident is not None and _resident[0] == key:
            return _resident[1]
        release()
        try:
            pipe = stages.load(
                spec.name, device=device, precision=precision, offload=offload, weights_dir=weights_dir
            )
        except WeightsError as exc:
            raise WeightsError(f"{exc}\n{_where_to_put(spec, weights_dir)}") from exc
        _resident = (key, pipe)
        log.info("SelVA %s loaded on %s in %s", spec.name, pipe.device, pipe.dtype)
        return pipe


def release() -> None:
    """Forget the loaded pipeline (ComfyUI may still hold it until its own cache lets it go)."""
    global _resident
    with _lock:
        if _resident is None:
            return
        _resident = None
        gc.collect()
        host.free_accelerator_memory()


def weights_dir_for(spec: Variant) -> Path | None:
    """The ComfyUI model folder to read `spec` from: the first that holds any of its files, else
    the default one (made if needed, so the error message points at a real folder). None outside."""
    folders = host.weights_dirs()
    if not folders:
        return None
    for folder in folders:
        if any(local_path(folder, f, p).is_file() for _, f in spec.all_files() for p in f.paths):
            return folder
    try:
        folders[0].mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("cannot create %s (%s); SelVA weights come from the Hugging Face cache", folders[0], exc)
        return None
    return folders[0]


def _where_to_put(spec: Variant, weights_dir: Path | None) -> str:
    if weights_dir is None:
        return f"To fetch them ahead of time: selva download --variant {spec.name}"
    tops = {local_path(weights_dir, f).relative_to(weights_dir).parts[0]: None for _, f in spec.all_files()}
    layout = ", ".join(f"{top}/" for top in tops)
    return (
        f"ComfyUI reads SelVA's weights from {weights_dir} ({layout} as on the Hub). To fill it, run "
        f"with ComfyUI's Python: selva download --variant {spec.name} --weights-dir {weights_dir}"
    )
