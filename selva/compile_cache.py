"""Where compiled kernels persist between processes: a folder under the Hugging Face cache.

A compile of the real networks takes 100-116 s on an H200 and minutes on a CPU;
a Space or a batch job would pay it on every start. PyTorch already keeps what
a compile produces on disk (inductor's FX graph cache, AOTAutograd's cache,
the autotuning results and Triton's kernels, all under `TORCHINDUCTOR_CACHE_DIR`),
by default in a temporary folder that is per user and lost with the machine.
Pointing that folder at the Hugging Face cache, beside the weights, makes a
second start reuse the first one's kernels: dynamo still traces the Python
(seconds), inductor generates nothing.

The folder is `<HF_HOME>/selva/compile/<torch version>-<device>-<variant>`
(`SELVA_STATE_DIR` replaces `<HF_HOME>/selva`, as for the checksum memo):
kernels for one GPU model or one torch build are useless to another, and one
folder per variant keeps each one's size visible and removable on its own.
A `TORCHINDUCTOR_CACHE_DIR` set by the user wins.
"""

from __future__ import annotations

import logging
import os
import platform
import re
from pathlib import Path

import torch
from huggingface_hub import constants

from selva.hub import STATE_DIR_ENV

log = logging.getLogger(__name__)

INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"

_ours: set[str] = set()  # folders this process pointed inductor at (not the user's choice)


def device_label(device: torch.device | str) -> str:
    """The device part of a cache folder's name: the GPU's model, or the CPU's architecture."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{device.type}-{platform.machine() or 'unknown'}"
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", name).strip("-")


def compile_cache_dir(variant: str, device: torch.device | str) -> Path:
    """The cache folder of `variant`'s networks compiled on `device` with this torch."""
    base = os.environ.get(STATE_DIR_ENV) or os.path.join(constants.HF_HOME, "selva")
    version = re.sub(r"[^A-Za-z0-9._+-]+", "-", torch.__version__)
    return Path(base) / "compile" / f"{version}-{device_label(device)}-{variant}"


def use_compile_cache(variant: str, device: torch.device | str) -> Path:
    """Point PyTorch's compile caches at `compile_cache_dir` (or the user's folder); returns the folder.

    Call it before the first compiled call: inductor reads the folder when it
    compiles. It is process-wide, so the last variant set up wins for later compiles.
    """
    current = os.environ.get(INDUCTOR_CACHE_ENV)
    if current is not None and current not in _ours and not _is_inductor_default(current):
        folder = Path(current)
        log.info("compile cache: %s (from %s)", folder, INDUCTOR_CACHE_ENV)
    else:
        folder = compile_cache_dir(variant, device)
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[INDUCTOR_CACHE_ENV] = str(folder)
        _ours.add(str(folder))
        log.info("compile cache: %s", folder)
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    from torch._inductor.utils import clear_caches

    # The defaults today; set so that a site config turning them off cannot make every start cold.
    inductor_config.fx_graph_cache = True
    inductor_config.autotune_local_cache = True
    functorch_config.enable_autograd_cache = True

    clear_caches()  # in-memory lookups derived from the previous folder
    return folder


def _is_inductor_default(folder: str) -> bool:
    # inductor writes its default folder into the environment the first time it looks it up
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return os.path.abspath(folder) == os.path.abspath(default_cache_dir())
