"""What the nodes use of ComfyUI itself, each piece optional.

ComfyUI is not a package our environment can install, and the nodes must also
run outside it (the tests call them directly). So every ComfyUI module is
imported only when needed, and a missing one means "not inside ComfyUI": the
defaults of the `selva` package apply (automatic device, the Hugging Face
cache, no interruption, no progress bar).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

log = logging.getLogger(__name__)

MODEL_FOLDER = "selva"  # models/selva/, as folder_paths names its model folders


def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def inside_comfyui() -> bool:
    return _module("folder_paths") is not None


def weights_dirs() -> list[Path]:
    """ComfyUI's folders for SelVA weights: models/selva and any extra_model_paths.yaml lists under
    the key `selva` (those first: ComfyUI reads that file before it loads node packs). Empty outside
    ComfyUI."""
    folder_paths = _module("folder_paths")
    if folder_paths is None or not hasattr(folder_paths, "models_dir"):
        return []
    default = Path(folder_paths.models_dir) / MODEL_FOLDER
    if not (hasattr(folder_paths, "add_model_folder_path") and hasattr(folder_paths, "get_folder_paths")):
        return [default]
    folder_paths.add_model_folder_path(MODEL_FOLDER, str(default))  # appended, and only once
    return [Path(p) for p in folder_paths.get_folder_paths(MODEL_FOLDER)]


def torch_device() -> torch.device | None:
    """The device ComfyUI runs models on (it honours --cpu, --directml...); None outside ComfyUI."""
    management = _module("comfy.model_management")
    if management is None or not hasattr(management, "get_torch_device"):
        return None
    return torch.device(management.get_torch_device())


def raise_if_interrupted() -> None:
    """Raise ComfyUI's own interruption exception when the user pressed Cancel; a no-op outside."""
    management = _module("comfy.model_management")
    if management is not None and hasattr(management, "throw_exception_if_processing_interrupted"):
        management.throw_exception_if_processing_interrupted()


def progress_bar(total: int) -> Any | None:
    """ComfyUI's progress bar on the running node (`update_absolute(value, total)`), or None."""
    utils = _module("comfy.utils")
    if utils is None or not hasattr(utils, "ProgressBar"):
        return None
    return utils.ProgressBar(total)


def free_accelerator_memory() -> None:
    """Return cached accelerator memory after a model is dropped, through ComfyUI when inside it."""
    management = _module("comfy.model_management")
    if management is not None and hasattr(management, "soft_empty_cache"):
        management.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()
