"""What the network tests share: reading a parity fixture and finding tensors left on `meta`.

Networks themselves are built the production way, `selva.loading.build_from_checkpoint`.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch


def load_fixture(fixtures_dir: Path, name: str) -> dict:
    return torch.load(fixtures_dir / f"{name}.pt", weights_only=True)


def meta_tensors(module: torch.nn.Module) -> list[str]:
    return [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]


@contextmanager
def sdpa_channel_strides() -> Iterator[list[tuple[int, int, int]]]:
    """The last-dim strides of (q, k, v) of every SDPA call made inside the block.

    SDPA's fused CUDA kernels need 1 for all three; otherwise it quietly runs its math path.
    """
    seen: list[tuple[int, int, int]] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append((q.stride(-1), k.stride(-1), v.stride(-1)))
        return sdpa(q, k, v, *args, **kwargs)

    with mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", spy):
        yield seen
