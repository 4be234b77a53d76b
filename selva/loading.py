"""Build a network on `meta` and load a checkpoint into it, without a second copy in memory.

The recipe (as in gpt-fast): build the module on the `meta` device (no
memory, no random init), `torch.load(mmap=True, weights_only=True)` the file
(nothing is read yet), `load_state_dict(strict=True, assign=True)` so the
module's tensors become the checkpoint's own, then cast each tensor to the
target device and dtype. A checkpoint's tensors that the module's load hook
drops (a VAE's encoder, an optimiser state) are never paged in.

Casting after loading, not before, keeps the modules' load hooks (weight-norm
folding and similar) working on the file's float32 values. Pages of the
mapping that were read for a tensor now held as a copy (cast or folded) are
handed back as soon as the copy exists, so loading a network briefly needs
little more than its own weights in the target dtype.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import pickle
import zipfile
from collections.abc import Callable, Mapping
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from selva.spec import WeightsError, is_out_of_memory

if TYPE_CHECKING:
    from selva.variants import Variant

log = logging.getLogger(__name__)

M = TypeVar("M", bound=nn.Module)


def load_checkpoint(path: str | Path, *, mmap: bool = True) -> dict[str, Any]:
    """A checkpoint's state dict, memory-mapped where the format allows; only tensors are unpickled."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError as exc:
        if is_out_of_memory(exc):
            raise  # the file may well be fine
        if mmap and "mmap" in str(exc):
            # Files from torch < 1.6 (no zip container) cannot be mapped: read them whole.
            log.info("%s is in the legacy torch format: loading without mmap", path.name)
            return load_checkpoint(path, mmap=False)
        raise WeightsError(f"{path} is not a readable checkpoint (corrupt or truncated?): {exc}") from exc
    except pickle.UnpicklingError as exc:
        raise WeightsError(f"{path} holds more than tensors, refusing to unpickle it: {exc}") from exc
    except (EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise WeightsError(f"{path} is not a readable checkpoint (corrupt or truncated?): {exc}") from exc


def build_from_checkpoint(
    cls: type[M] | Any,
    config: Any,
    checkpoint: str | Path | Mapping[str, Any],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> M:
    """`cls(config)` on `meta`, loaded strictly from `checkpoint` (a path or a state dict).

    Returns the module on `device` in `dtype` (floating tensors only), in eval
    mode, with gradients off. A state dict passed in is used as is: the
    module shares its tensors where no cast was needed.
    """
    with torch.device("meta"):
        model = cls(config)
    if isinstance(checkpoint, Mapping):
        return load_into(
            model, checkpoint, device=device, dtype=dtype, source=f"the {cls.__name__} state dict"
        )
    return load_file_into(model, checkpoint, device=device, dtype=dtype)


def load_file_into(
    model: M,
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    read: Callable[[Path], Mapping[str, Any]] = load_checkpoint,
) -> M:
    """`load_into` from the file at `path`, read by `read` (memory-mapped, unless it is safetensors)."""
    path = Path(path)
    mapped = None if path.suffix == ".safetensors" else path
    # Passed on without a name here, so that load_into holds the only reference to the state.
    return load_into(model, read(path), device=device, dtype=dtype, source=str(path), mapped=mapped)


def load_into(
    model: M,
    state: Mapping[str, Any],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    source: str = "the checkpoint",
    mapped: str | Path | None = None,
) -> M:
    """Load `state` into `model` (built on `meta`) with `assign=True`, then move and cast it.

    `mapped`: the file `state` was memory-mapped from (`load_checkpoint`); pages
    read from it are released as soon as nothing needs them.
    """
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        # A strict mismatch means the file is not this network's checkpoint (or not this size).
        raise WeightsError(
            f"{source} does not fit {type(model).__name__}: {_first_lines(str(exc))}. "
            "Is it the right file for this variant?"
        ) from exc
    tensors = [t for t in state.values() if isinstance(t, torch.Tensor)]
    file_backed = {t.untyped_storage().data_ptr() for t in tensors}
    pages = _MappedPages(mapped)
    kept = {t.untyped_storage().data_ptr() for t in _tensors_of(model)}
    for t in tensors:  # read by a load hook (weight norm) and replaced: no longer needed
        if t.untyped_storage().data_ptr() not in kept:
            pages.release(t)
    del state, tensors
    ensure_materialized(model)  # before moving: `to()` cannot move meta tensors and says less

    def move(t: torch.Tensor) -> torch.Tensor:
        moved = t.to(device=device, dtype=dtype if t.is_floating_point() else None)
        if moved.untyped_storage().data_ptr() != t.untyped_storage().data_ptr():
            pages.release(t)
        return moved

    model._apply(move)  # what `Module.to` does, one tensor at a time, releasing as it goes
    _detach_from_file(model, file_backed)
    release_freed_memory()
    return model.eval().requires_grad_(False)


def _tensors_of(model: nn.Module) -> list[torch.Tensor]:
    return [t for t in chain(model.parameters(), model.buffers()) if t is not None]


class _MappedPages:
    """The address ranges this process has mapped from one file, and a way to drop read pages.

    torch maps checkpoints privately and read-only in practice: dropping a
    clean page (`MADV_DONTNEED`) loses nothing, a later read pages it in
    again. Linux only; elsewhere nothing is released and nothing breaks.
    """

    def __init__(self, path: str | Path | None):
        self.ranges: list[tuple[int, int]] = []
        self._madvise = None
        if path is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        target = str(Path(path).resolve())
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/maps").read_text().splitlines():
                fields = line.split(maxsplit=5)  # address perms offset dev inode path
                private = len(fields) == 6 and fields[1].endswith("p")
                if private and fields[5] == target:
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    self.ranges.append((start, end))
        if self.ranges:
            with contextlib.suppress(OSError, AttributeError):
                libc = ctypes.CDLL(None, use_errno=True)
                libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
                self._madvise = libc.madvise

    def release(self, t: torch.Tensor) -> None:
        """Drop the whole pages inside `t`'s storage, if it lies in the file's private mapping."""
        if self._madvise is None or t.device.type != "cpu":
            return
        storage = t.untyped_storage()
        start, end = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
        if not any(lo <= start and end <= hi for lo, hi in self.ranges):
            return  # not from the file (a tensor a hook computed): never touch heap memory
        # Only pages wholly inside this tensor: its neighbours' bytes stay as they are.
        first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
        last = end // mmap.PAGESIZE * mmap.PAGESIZE
        if last > first:
            self._madvise(first, last - first, mmap.MADV_DONTNEED)


def release_freed_memory() -> None:
    """Hand memory freed while loading back to the OS (glibc only; a no-op elsewhere).

    Load hooks and casts free hundreds of MB of float32 copies; glibc keeps such
    freed heap for reuse, so without this the resident size of a loaded
    pipeline stays far above its weights, and every later load peaks higher.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _detach_from_file(model: nn.Module, file_backed: set[int]) -> None:
    """Copy the tensors that still point into the memory-mapped checkpoint, where others do not.

    A model whose tensors all still point into the file (no cast, no load hook)
    stays a zero-copy view of it. But where a load hook replaced most tensors
    (weight-norm folding) or a cast copied them, the few left as they were keep
    the whole mapping alive, and with it every page read to compute the
    replacements: the model would be held twice. Private copies let it go.
    """
    slots = [
        (table, name, tensor)
        for module in model.modules()
        for table in (module._parameters, module._buffers)
        for name, tensor in table.items()
        if tensor is not None
    ]
    mapped = [slot for slot in slots if slot[2].untyped_storage().data_ptr() in file_backed]
    if not mapped or len(mapped) == len(slots):
        return
    for table, name, tensor in mapped:
        copy = tensor.detach().clone()
        table[name] = nn.Parameter(copy, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else copy


def ensure_materialized(model: nn.Module) -> None:
    """Raise if any parameter or buffer is still on `meta` (neither loaded nor computed)."""
    left = [n for n, t in chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if left:
        shown = ", ".join(left[:8]) + (f" and {len(left) - 8} more" if len(left) > 8 else "")
        raise RuntimeError(f"{type(model).__name__}: still on the meta device after loading: {shown}")


def _first_lines(text: str, n: int = 6, width: int = 600) -> str:
    text = " ".join(line.strip() for line in text.strip().splitlines()[:n])
    return text if len(text) <= width else text[:width] + "..."


NETWORK_ROLES = ("generator", "text_synch", "vae", "vocoder")


def network_config(variant: Variant, role: str, paths: Mapping[str, Path] | None = None) -> Any:
    """The config object of one of `variant`'s networks, built from the registry's plain data.

    A string names a preset of the network's module, a mapping holds the reference's
    hyper-parameters; the 44.1 kHz vocoder's config is read from the config.json
    beside its weights (`paths` from `selva.hub.resolve`).
    """
    import json

    from selva.models.bigvgan import BIGVGAN_PRESETS, BigVGANConfig
    from selva.models.generator import GENERATOR_PRESETS, GeneratorConfig
    from selva.models.text_synch import TEXT_SYNCH_PRESETS, TextSynchConfig
    from selva.models.vae import VAE_PRESETS, VAEConfig

    kinds = {
        "generator": (GeneratorConfig, GENERATOR_PRESETS, variant.generator_config),
        "text_synch": (TextSynchConfig, TEXT_SYNCH_PRESETS, variant.text_synch_config),
        "vae": (VAEConfig, VAE_PRESETS, variant.vae_config),
        "vocoder": (BigVGANConfig, BIGVGAN_PRESETS, variant.vocoder_config),
    }
    if role not in kinds:
        raise ValueError(f"unknown network {role!r}; one of {', '.join(NETWORK_ROLES)}")
    cls, presets, data = kinds[role]
    if data is None:  # BigVGAN v2: the vocoder's own repo ships its config
        if paths is None or "vocoder_config" not in paths:
            raise ValueError(f"the {variant.name} vocoder's config comes from its files: pass `paths`")
        try:
            return BigVGANConfig.from_dict(json.loads(Path(paths["vocoder_config"]).read_text()))
        except (KeyError, OSError, ValueError) as exc:
            raise WeightsError(f"cannot read the vocoder config of {variant.name}: {exc}") from exc
    return presets[data] if isinstance(data, str) else cls.from_dict(dict(data))


def build_network(
    variant: Variant,
    role: str,
    paths: Mapping[str, Path],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """One of the four SelVA networks of `variant` ("generator", "text_synch", "vae", "vocoder"),
    from the files `selva.hub.resolve` returned."""
    # Imported here: the model modules are heavy and loading.py is also used on its own.
    from selva.models.bigvgan import BigVGAN
    from selva.models.generator import Generator
    from selva.models.text_synch import TextSynch
    from selva.models.vae import VAEDecoder

    classes = {"generator": Generator, "text_synch": TextSynch, "vae": VAEDecoder, "vocoder": BigVGAN}
    config = network_config(variant, role, paths)
    return build_from_checkpoint(classes[role], config, paths[role], device=device, dtype=dtype)
