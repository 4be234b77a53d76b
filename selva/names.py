"""How output files are named: one slug rule, and the names every front end gives a project's files.

File names carry what makes a file again: the sound's prompt and the take's
seed (`dog-barking_seed41.flac`), so a kept file says how to reproduce it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from selva.project import Take


def slug(text: str, limit: int = 32, *, empty: str = "clip") -> str:
    """`text` as a file-name piece: lower-case letters, digits and dashes, at most `limit` characters."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or empty


def take_file(prompt: str, seed: int) -> str:
    """The exact waveform file of one take (see `selva.render.write_take`)."""
    return f"{slug(prompt, empty='sound')}_seed{seed}.npy"


def edit_file(prompt: str, take: int, seed: int) -> str:
    """The exact waveform file of an edited take (`selva.region`): its number in the sound and its seed."""
    return f"{slug(prompt, empty='sound')}_take{take + 1}_region_seed{seed}.npy"


def take_stem(name: str, take: Take) -> str:
    """A delivered take's file name without suffix: `name_seed41`, and for an edited take also the take
    and region it re-rolled (`name_take1-1.50-2.50s_seed41`), so an edit never overwrites its source."""
    if take.edit is None:
        return f"{name}_seed{take.seed}"
    edit = take.edit
    return f"{name}_take{edit.source + 1}-{edit.start:.2f}-{edit.end:.2f}s_seed{take.seed}"


def sound_file(name: str, index: int, prompt: str, suffix: str) -> str:
    """Sound `index` (0-based) of a multi-sound output called `name`: `name_2-car-engine.flac`."""
    return f"{name}_{index + 1}-{slug(prompt, empty='stem')}.{suffix}"
