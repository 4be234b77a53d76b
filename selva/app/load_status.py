"""The model's loading on the page: the weights' download, the load, or why they failed.

`python app.py` serves the page at once and loads the model behind it
(`PipelineSlot.load_in_background`); this panel polls `PipelineSlot.status` with a
`gr.Timer` until the model is ready, then hides and stops polling.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from selva.app.results import PAGE_EVENT
from selva.serving import LoadStatus, PipelineSlot

POLL_SECONDS = 1.0  # how often an open page asks; a tick is one cheap unqueued request


def load_status_text(status: LoadStatus) -> str:
    """What the panel says for `status` ("" once the model is ready, or before anything loads).

    The text is escaped: an error's "<weights_dir>" is words, not a tag.
    """
    if status.state == "loading":
        desc = status.desc or f"Loading {status.variant}"
        percent = f" ({status.fraction:.0%})" if status.fraction else ""
        return f"⏳ **Preparing the model** – {html.escape(desc)}{percent}"
    if status.state == "failed":
        error = html.escape(status.error or "").replace("\n", "<br>")
        return f"⚠️ **The model could not load.**<br>{error}"
    return ""


def poll(slot: PipelineSlot) -> tuple[Any, Any]:
    """One tick: the panel's text (shown while there is any) and whether to keep polling."""
    status = slot.status
    text = load_status_text(status)
    return gr.update(value=text, visible=bool(text)), gr.Timer(active=status.state != "ready")


def load_status_panel(slot: PipelineSlot) -> None:
    """Put the panel here in the page, with the timer that keeps it current until the model is ready."""
    first = load_status_text(slot.status)
    panel = gr.Markdown(first, visible=bool(first), elem_id="load-status")
    timer = gr.Timer(POLL_SECONDS)
    timer.tick(lambda: poll(slot), None, [panel, timer], show_progress="hidden", **PAGE_EVENT)
