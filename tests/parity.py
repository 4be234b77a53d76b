"""What the network tests share: reading a parity fixture and finding tensors left on `meta`.

Networks themselves are built the production way, `selva.loading.build_from_checkpoint`.
"""

from pathlib import Path

import torch


def load_fixture(fixtures_dir: Path, name: str) -> dict:
    return torch.load(fixtures_dir / f"{name}.pt", weights_only=True)


def meta_tensors(module: torch.nn.Module) -> list[str]:
    return [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
