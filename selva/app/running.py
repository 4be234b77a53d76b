"""While a generation runs: Generate says what it is doing and waits, Cancel shows and stops it.

Generate is disabled from the click until the job ends and reads the job's stage and
step ("Generating: step 12/25", polled from `Studio.running_label`); Cancel is visible
only meanwhile. A cancel says "Cancelled" and leaves the previous result where it was.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from selva.app.handlers import Studio, notify
from selva.app.results import PAGE_EVENT, PAGE_EVENT_TOASTS

POLL_SECONDS = 0.5  # how often the running page refreshes Generate's label
IDLE_LABEL = "Generate"
# A new run starts with no old toasts over it (gradio has no server call to close them).
CLOSE_TOASTS = "() => { document.querySelectorAll('.toast-close').forEach((b) => b.click()); }"


def busy() -> tuple[Any, Any, Any]:
    """Generate disabled (and saying so), Cancel shown, the label timer started."""
    return gr.update(interactive=False, value="Starting..."), gr.update(visible=True), gr.Timer(active=True)


def idle() -> tuple[Any, Any, Any]:
    """Generate back as it was, Cancel hidden, the label timer stopped."""
    return gr.update(interactive=True, value=IDLE_LABEL), gr.update(visible=False), gr.Timer(active=False)


def cancelled() -> tuple[Any, Any, Any]:
    """The Cancel button's own answer: say so; the results stay as they were."""
    notify("Generation cancelled; the previous result stays.", "Cancelled")
    return idle()


def wire_running(studio: Studio, run: gr.Button, stop: gr.Button, checked: Any) -> tuple[Any, Any]:
    """Put Generate in its running state once `checked` (the click's checks) succeeds.

    Returns the event to chain the generation on and a function that, given that
    generation's event, wires its end (success, failure or cancel) back to idle.
    """
    timer = gr.Timer(POLL_SECONDS, active=False)
    run.click(None, None, None, js=CLOSE_TOASTS, **PAGE_EVENT)
    started = checked.success(busy, None, [run, stop, timer], **PAGE_EVENT)
    timer.tick(studio.running_label, None, run, show_progress="hidden", **PAGE_EVENT)

    def finish(event: Any) -> None:
        event.then(idle, None, [run, stop, timer], **PAGE_EVENT)
        # gradio 6's page skips `.then` after a failed event (only `.failure` listeners run then).
        event.failure(idle, None, [run, stop, timer], **PAGE_EVENT)
        # gradio's cancel: it drops a queued job, or cancels the running one, which `stops_on_cancel`
        # stops after its current flow step (for this request alone, so no other visitor's job).
        stop.click(cancelled, None, [run, stop, timer], cancels=[event], **PAGE_EVENT_TOASTS)

    return started, finish
