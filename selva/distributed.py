"""Splitting one `selva batch` list over several processes: `--shard i/n`, torchrun, and Ray.

Every process reads the whole list, names every clip (names depend on the whole list, see
`selva.batch.assign_names`), then keeps the clips whose position in the list is i modulo n. The same
list therefore gives every process the same share on every run, so a rerun of any shard resumes
where it stopped, and the n shards together cover the list exactly once.

Under torchrun (RANK, WORLD_SIZE and LOCAL_RANK in the environment) a process with no --shard
takes RANK/WORLD_SIZE, and, when no --device is given and CUDA exists, runs on cuda:LOCAL_RANK.

Nothing here imports Ray or torch at module level: `selva batch` without --ray must not need them.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")


def shard_arg(text: str) -> tuple[int, int]:
    """argparse type for `--shard i/n` (0 <= i < n)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected INDEX/COUNT such as 0/4, got {text!r}")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        raise argparse.ArgumentTypeError(
            f"INDEX must be from 0 to COUNT - 1 and COUNT at least 1, got {text}"
        )
    return index, count


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def add_batch_options(p: argparse.ArgumentParser) -> None:
    """The options of `selva batch` that spread a list over processes, GPUs and machines."""
    g = p.add_argument_group("many GPUs and machines")
    g.add_argument(
        "--shard",
        type=shard_arg,
        metavar="I/N",
        help="take only clips I, I+N, I+2N... of the list (run N processes, I = 0..N-1); "
        "default under torchrun: RANK/WORLD_SIZE",
    )
    g.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run on Ray Data: one pipeline actor per GPU, decoding on CPUs; ADDRESS 'auto' joins "
        "a running cluster, none starts a local Ray (needs pip install 'selva-studio[ray]')",
    )
    g.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="with --ray: pipeline actors (default: one per GPU, or 1 on a machine without GPUs)",
    )


def shard_from_env(environ: Mapping[str, str]) -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) as torchrun sets them, or None outside torchrun (or with one process)."""
    try:
        rank, world = int(environ["RANK"]), int(environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        return None
    if world <= 1 or not 0 <= rank < world:
        return None
    return rank, world


def shard(items: Sequence[T], index: int, count: int) -> list[T]:
    """The items whose position in `items` is `index` modulo `count`."""
    return [item for position, item in enumerate(items) if position % count == index]


def select_shard(
    items: list[T], args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> list[T]:
    """This process's share of a named list (--shard, else torchrun's), and under torchrun its GPU.

    `args.device` is set to cuda:LOCAL_RANK when torchrun started this process, no --device was
    given and CUDA exists: otherwise every rank would load its models onto cuda:0.
    """
    environ = os.environ if environ is None else environ
    chosen = getattr(args, "shard", None) or shard_from_env(environ)
    if getattr(args, "device", None) is None and "LOCAL_RANK" in environ and chosen is not None:
        import torch

        if torch.cuda.is_available():
            args.device = f"cuda:{int(environ['LOCAL_RANK'])}"
    if chosen is None:
        return items
    return shard(items, *chosen)
