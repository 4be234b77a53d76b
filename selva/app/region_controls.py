"""Re-roll a region: per sound in the result area, seconds Start..End of its chosen take drawn again.

A small row under each sound's takes: Start (s), End (s), an optional prompt for the region
(blank: the sound's own), a seed (blank: a new one) and "Re-roll region". The service
(`GenerationService.reroll_region`, `selva.region`) widens the region to whole latent frames,
crossfades its edges and keeps every other sample of the take as it was; the edited take is
appended to the sound and chosen, and the result shows like any other (the info line says the
widened region and the seed). It runs in the GPU queue and stops on Cancel, as "Re-roll this
sound" does.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from selva.app.handlers import REQUEST_CANCEL, session_of, user_errors
from selva.app.workspace_handlers import Current, Workspace, show
from selva.spec import SEED, InputError

REGION_PARTS = ("start", "end", "prompt", "seed")  # the row's inputs, in the handler's order


def region_row(k: int) -> dict[str, Any]:
    """Sound k's region row. Element ids: `region-start-K`, `region-end-K`, `region-prompt-K`,
    `region-seed-K`, `reroll-region-K` (K from 1)."""
    row: dict[str, Any] = {}
    with gr.Row(equal_height=True, elem_id=f"region-row-{k + 1}"):
        n = k + 1
        row["start"] = gr.Number(
            None, label="Region start (s)", minimum=0, min_width=80, elem_id=f"region-start-{n}"
        )
        row["end"] = gr.Number(
            None, label="Region end (s)", minimum=0, min_width=80, elem_id=f"region-end-{n}"
        )
        row["prompt"] = gr.Textbox(
            "", label="Region prompt", placeholder="blank: the sound's own", max_lines=1, min_width=140,
            elem_id=f"region-prompt-{n}",
        )  # fmt: skip
        # Text, not a Number: gradio shows and sends an empty Number as 0, which would make every
        # re-roll the same seed-0 audio instead of a new one.
        row["seed"] = gr.Textbox(
            "", label="Region seed", placeholder="blank: new", max_lines=1, min_width=80,
            elem_id=f"region-seed-{n}",
        )  # fmt: skip
        row["button"] = gr.Button("Re-roll region", size="sm", min_width=100, elem_id=f"reroll-region-{n}")
    return row


def reroll_region(
    ws: Workspace,
    k: int,
    current: Current | None,
    start: float | None,
    end: float | None,
    prompt: str | None = None,
    seed: str | float | None = None,
    progress: Any = None,
    request: Any = None,
) -> list[Any]:
    """Seconds `start`..`end` of sound `k`'s chosen take re-rolled; `area_outputs`' values.

    A blank `prompt` keeps the sound's own, a blank `seed` draws a new one (the info says which).
    """
    if current is None or k >= len(current.project.sounds):
        raise gr.Error(
            "Generate first: a region re-roll redraws part of a take already made.",
            title="Nothing to re-roll",
        )
    with user_errors():
        if start is None or end is None:
            raise InputError(
                "give the region's Start and End in seconds (e.g. 1.0 and 2.5), then Re-roll region"
            )
        result = ws.service.reroll_region(
            current.project, k, None, float(start), float(end),
            seed=seed_given(seed), prompt=(prompt or "").strip() or None,
            progress=progress, session=session_of(request), cancel=REQUEST_CANCEL.get(),
        )  # fmt: skip
    return show(result, ws.sample_rate_of(result.project))


def seed_given(seed: str | float | None) -> int | None:
    """The Region seed box's seed: None when blank (a new one is drawn), else a whole number in range."""
    if isinstance(seed, float) and seed.is_integer():
        seed = int(seed)
    text = "" if seed is None else str(seed).strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not SEED.minimum <= value <= SEED.maximum:
        raise InputError(
            f"Region seed must be a whole number from {SEED.minimum} to {SEED.maximum}, or blank for a new "
            f"one; got {text!r}"
        )
    return value


def handler_for(ws: Workspace, k: int) -> Any:
    """Sound `k`'s "Re-roll region" handler, with the parameters gradio fills in (progress, the request)."""

    def reroll(
        current: Current | None,
        start: float | None,
        end: float | None,
        prompt: str | None,
        seed: str | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
        request: gr.Request | None = None,
    ) -> list[Any]:
        return reroll_region(ws, k, current, start, end, prompt, seed, progress, request)

    return reroll
