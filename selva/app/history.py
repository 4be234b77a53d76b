"""Earlier results that survive a page reload: their settings in the browser's storage, and Restore.

Each result on show (a Generate, a Re-roll, a re-mix) becomes an entry in a `gr.BrowserState`
(the browser's localStorage, encrypted with this server's secret; a restarted server starts a
new list): the project as its file would hold it, with only each sound's chosen take and no
audio (a few hundred bytes), and a label. A re-mix of the newest result replaces its entry.
Restore puts the sounds, seeds and settings back in the page, and the video while this server
still holds the file; Generate then makes the takes again from their seeds, bit for bit.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr

from selva.app.results import PAGE_EVENT, PAGE_EVENT_TOASTS
from selva.app.workspace_handlers import Current, project_values
from selva.project import Project
from selva.spec import InputError

STORAGE_KEY = "selva-studio-history"
HISTORY_SIZE = 12  # entries kept in the browser, newest first


def entry(current: Current) -> dict[str, Any]:
    """The browser's record of the project on show: its label and its project, chosen takes only."""
    project = current.project
    sounds = tuple(
        replace(s, takes=(replace(s.take, audio=None, score=None),), chosen=0) if s.take is not None else s
        for s in project.sounds
    )
    project = replace(project, sounds=sounds)
    what = "; ".join(f"{s.prompt} (seed {s.take.seed})" for s in sounds if s.take is not None)
    where = Path(project.video).name if project.video else "prompt only"
    return {"label": f"{time.strftime('%H:%M')} · {what} · {where}", "project": project.to_dict()}


def _same_result(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two entries of one result (a re-mix changes only the mix): the same video, span, prompts and seeds."""

    def key(e: dict[str, Any]) -> Any:
        p = e["project"]
        sounds = [(s["prompt"], s["negative_prompt"], [t["seed"] for t in s["takes"]]) for s in p["sounds"]]
        return p["video"], p["start"], p["duration"], p["variant"], sounds

    return key(a) == key(b)


def remember(history: list[dict[str, Any]] | None, current: Current | None) -> tuple[list[Any], Any]:
    """`current` first in the history (in place of the newest entry if it re-mixes that one).

    Returns the history to store and the list's update.
    """
    history = [e for e in (history or []) if isinstance(e, dict)]
    if current is None:
        return history, listing(history)
    new = entry(current)
    if history and _is_entry(history[0]) and _same_result(history[0], new):
        history[0] = new
    else:
        history.insert(0, new)
    del history[HISTORY_SIZE:]
    return history, listing(history, selected=0)


def listing(history: list[dict[str, Any]] | None, selected: int | None = None) -> Any:
    """The history list's update: the entries' labels, newest first (the page's load and each result)."""
    entries = [e for e in (history or []) if _is_entry(e)]
    choices = [(str(e["label"]), k) for k, e in enumerate(entries)]
    if selected is None and choices:
        selected = 0
    return gr.update(choices=choices, value=selected if choices else None)


def restore(history: list[dict[str, Any]] | None, index: int | None, roots: list[Path]) -> list[Any]:
    """Entry `index` back in the page: `project_values` (rows, settings, the project) and the video.

    The video comes back only if it is a file under one of `roots` (where this server keeps uploads
    and examples), as the browser's record is not trusted with paths; else the box is left as it is
    and a note says to upload the clip again.
    """
    entries = [e for e in (history or []) if _is_entry(e)]
    if index is None or not 0 <= int(index) < len(entries):
        raise gr.Error("Pick an earlier result in the list first.", title="Nothing to restore")
    try:
        project = Project.from_dict(entries[int(index)]["project"])
    except InputError as exc:
        raise gr.Error(f"That entry cannot be read back: {exc}", title="Cannot restore") from None
    video = _held(project.video, roots)
    if project.video is not None and video is None:
        gr.Warning(
            f"{Path(project.video).name} is no longer on the server: upload it again, then Generate.",
            title="Video gone",
        )
    project = replace(project, video=video) if video is not None else project
    video_update = gr.update(value=video) if video is not None else gr.update()
    return [*project_values(project), video_update]


def _held(video: str | None, roots: list[Path]) -> str | None:
    if not video:
        return None
    path = Path(video).resolve()
    inside = any(path.is_relative_to(root.resolve()) for root in roots)
    return str(path) if inside and path.is_file() else None


def _is_entry(e: Any) -> bool:
    return isinstance(e, dict) and isinstance(e.get("label"), str) and isinstance(e.get("project"), dict)


# -- layout and wiring ---------------------------------------------------------------------------------


def history_panel() -> dict[str, Any]:
    """The list of earlier results and Restore. Element ids: `history-list`, `history-restore`."""
    ui: dict[str, Any] = {"store": gr.BrowserState([], storage_key=STORAGE_KEY)}
    panel = gr.Accordion("History (this browser)", open=True, elem_id="history-panel")
    with panel, gr.Row(equal_height=True):
        ui["list"] = gr.Dropdown(
            choices=[], value=None, label="Earlier results", scale=3, elem_id="history-list"
        )
        ui["restore"] = gr.Button("Restore", size="sm", scale=1, min_width=90, elem_id="history-restore")
    return ui


def wire_history(
    demo: gr.Blocks, ui: dict[str, Any], current: gr.State, restore_outputs: list[Any], video: gr.Video,
    roots: list[Path],
) -> None:  # fmt: skip
    """The list on page load, an entry per result on show, Restore into `restore_outputs` and `video`."""
    demo.load(listing, ui["store"], ui["list"], **PAGE_EVENT)
    current.change(remember, [ui["store"], current], [ui["store"], ui["list"]], **PAGE_EVENT)
    ui["restore"].click(
        lambda h, i: restore(h, i, roots), [ui["store"], ui["list"]], [*restore_outputs, video],
        **PAGE_EVENT_TOASTS,
    )  # fmt: skip
