"""What a visitor reads when something goes wrong: titled toasts and `user_errors`.

gradio 6's page heads every toast with its kind ("Error", "Warning", "Info") and
ignores a `gr.Error`'s title, so the title travels as the first, bold line of the
toast's text; the text is HTML-escaped, so a message such as "<weights_dir>"
shows whole. `user_errors` turns every failure into such a toast and a plain
`gr.Error` for API callers, never a stack trace.
"""

from __future__ import annotations

import html
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import gradio as gr

from selva import spec
from selva.spec import GenerationCancelled, InputError, SelvaError, is_out_of_memory

log = logging.getLogger("selva.app.handlers")  # the app's log lines keep their logger's name


def toast_text(message: str, title: str) -> str:
    """A toast's HTML: the title in bold over the message, both shown as plain text.

    gradio 6 groups toasts by kind and heads each group "Error", "Warning" or "Info",
    whatever title the server sends, and renders a toast's text as HTML: so the title goes
    into the text, and "put it at <weights_dir>" is escaped so it is not taken for a tag.
    """
    lines = html.escape(message).replace("\n", "<br>")  # the missing-files list keeps its lines
    return f"<strong>{html.escape(title)}</strong><br>{lines}"


def notify(message: str, title: str, level: str = "info", duration: float | None = 10) -> None:
    """A titled toast with `message` whole, for the visitor whose event is running.

    Outside a queued gradio event (a test calling a handler, `/api/predict`) a warning goes
    to Python's warnings, as `gr.Warning` does, and anything else to nobody.
    """
    from gradio.context import LocalContext

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    if blocks is None or event_id is None:
        if level == "warning":
            warnings.warn(message, stacklevel=2)
        return
    # gradio's Queue.log_message types the level for info/warning/success only; its LogMessage (and
    # the page's toasts) take "error" as well.
    blocks._queue.log_message(
        event_id=event_id,
        log=toast_text(message, title),
        title=title,
        level=level,  # type: ignore[arg-type]
        duration=duration,
    )


def fail(message: str, title: str) -> gr.Error:
    """The error to raise for a failure a user should read: a titled toast with the message whole.

    The toast is an error-level log message (`notify`: the title inside, the text escaped);
    the raised `gr.Error` is invisible on the page: it still fails the event (nothing after
    `.success` runs) and gives API callers the plain message, with its title.
    """
    notify(message, title, level="error", duration=None if len(message) > 160 else 15)
    return gr.Error(message, title=title, visible=False, print_exception=False)


def _title_of(exc: SelvaError) -> str:
    for kind, title in _ERROR_TITLES:
        if isinstance(exc, kind):
            return title
    return "Cannot generate"


_ERROR_TITLES: tuple[tuple[type[SelvaError], str], ...] = (
    (spec.WeightsError, "Model weights missing"),
    (spec.MediaError, "Video not usable"),
    (spec.DependencyError, "Missing package"),
    (InputError, "Check the inputs"),
)


@contextmanager
def user_errors(private_dirs: Sequence[str | Path] = ()) -> Iterator[None]:
    """Turn every failure into a titled `gr.Error` with a message a user can act on; never a stack trace.

    Our own errors carry that message already (server folders in `private_dirs`,
    such as the upload folder, are cut out of it); out-of-memory gets advice;
    anything else is logged with its traceback on the server and reported in one line.
    """
    try:
        yield
    except gr.Error:
        raise
    except SelvaError as exc:
        if isinstance(exc, GenerationCancelled):
            log.info("generation cancelled by the user")
            cancelled = gr.Error(
                "Generation cancelled.", title="Cancelled", visible=False, print_exception=False
            )
            raise cancelled from None
        message = str(exc)
        for folder in private_dirs:
            message = message.replace(str(folder).rstrip("/\\") + os.sep, "")
        raise fail(message, _title_of(exc)) from None
    except Exception as exc:
        if is_out_of_memory(exc):
            log.warning("out of memory: %s", exc)
            raise fail(
                "Out of GPU memory. Try a shorter duration or fewer candidates; the person running the "
                "app can also start it with --offload offload_to_cpu or --precision bf16.",
                "Out of GPU memory",
            ) from None
        log.error("generation failed", exc_info=exc)
        raise fail(
            f"Something went wrong on our side ({type(exc).__name__}); the details are in the server log. "
            "Please try again, or report it with the info line of your last result.",
            "Something went wrong",
        ) from None
