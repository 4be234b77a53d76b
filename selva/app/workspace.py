"""SelVA Studio's workspace: the sounds of one project, one Generate for all of them, one result area.

Sound 1 is the page's Prompt and Negative prompt; "Add a sound" shows up to `MAX_SOUNDS`
rows, each with its prompts and its place in the mix (gain, pan, mute, solo). One sound
runs the page's `/generate` (its candidates are its takes); several render as one
project (`GenerationService.render_project`). The result area shows the mixed video, then
per sound its takes side by side (each with its seed and "Use this take") and "Re-roll
this sound", which draws new takes of that sound alone: the other sounds' takes are read
back from their files, bit for bit. Moving a gain or pan, mute, solo or the original's level
re-mixes the takes on file at once: no model runs and the GPU queue is not used. The project
on show lives in a `gr.State`; its file downloads, and an uploaded one restores the sounds,
seeds and settings (Generate then renders the takes whose audio is not on this server).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from selva import spec
from selva.app import region_controls
from selva.app.handlers import stops_on_cancel
from selva.app.results import PAGE_EVENT, PAGE_EVENT_TOASTS
from selva.app.widgets import limit_slider, sound_prompts
from selva.app.workspace_handlers import (
    MIX_FIELDS,
    USE_THIS_TAKE,
    Current,
    Workspace,
    resize,
    several_sounds,
)
from selva.project import MAX_SOUNDS
from selva.serving import MAX_CANDIDATES

PLACEHOLDERS = ("dog barking", "car engine", "rain on a window", "footsteps")


# -- layout ----------------------------------------------------------------------------------------------


def _mix_controls(ui: dict[str, Any], k: int) -> None:
    """Sound k's place in the mix: gain, pan, mute, solo (`sound-gain-K` ... with K from 1)."""
    with gr.Row(equal_height=True):
        for name, limit in (("gain", spec.STEM_GAIN), ("pan", spec.PAN)):
            slider = limit_slider(limit, step=0.05, min_width=120, elem_id=f"sound-{name}-{k + 1}")
            ui[name].append(slider)
        ui["mute"].append(gr.Checkbox(False, label="Mute", min_width=60, elem_id=f"sound-mute-{k + 1}"))
        ui["solo"].append(gr.Checkbox(False, label="Solo", min_width=60, elem_id=f"sound-solo-{k + 1}"))


def sound_rows(prompt: gr.Textbox, negative: gr.Textbox) -> dict[str, Any]:
    """The sounds list under the page's Prompt and Negative prompt (sound 1), with Add / Remove.

    Element ids: `sound-row-K`, `sound-prompt-K`, `sound-negative-K` (K from 2; sound 1's are
    the page's `prompt` and `negative-prompt`), `sound-gain-K`, `sound-pan-K`, `sound-mute-K`,
    `sound-solo-K` (K from 1), `add-sound`, `remove-sound`.
    """
    ui: dict[str, Any] = {"rows": [], "prompts": [prompt], "negatives": [negative]}
    ui.update({name: [] for name in MIX_FIELDS})
    _mix_controls(ui, 0)
    for k in range(1, MAX_SOUNDS):
        with gr.Column(visible=False, elem_id=f"sound-row-{k + 1}") as row:
            with gr.Row():
                prompt, negative = sound_prompts(
                    f"Sound {k + 1}: prompt", PLACEHOLDERS[k], f"sound-prompt-{k + 1}"
                )
                ui["prompts"].append(prompt)
                ui["negatives"].append(negative)
            _mix_controls(ui, k)
        ui["rows"].append(row)
    ui["count"] = gr.State(1)
    with gr.Row():
        ui["add"] = gr.Button("Add a sound", size="sm", min_width=120, elem_id="add-sound")
        ui["remove"] = gr.Button(
            "Remove the last sound", size="sm", min_width=120, interactive=False, elem_id="remove-sound"
        )
    return ui


def result_area() -> dict[str, Any]:
    """The project's result: the mixed video, then per sound its takes, "Use this take" and "Re-roll".

    Element ids: `workspace-result`, `mix-video`, `mix-info`, `bundle`, `project-file`, `project-upload`,
    `sound-result-K`, `sound-label-K`, `reroll-K`, `take_card`'s and `region_controls.region_row`'s
    (K, T from 1).
    """
    ui: dict[str, Any] = {"sections": [], "labels": [], "reroll": [], "region": []}
    ui.update({part: [] for part in (*TAKE_CARD_PARTS, *TAKE_CARD_ACTIONS)})
    with gr.Column(visible=False, elem_id="workspace-result") as area:
        ui["mix_video"] = gr.Video(label="Mix", interactive=False, height=260, elem_id="mix-video")
        ui["info"] = gr.Textbox(label="Mix info", interactive=False, lines=2, elem_id="mix-info")
        ui["bundle"] = gr.File(
            label="Everything in one zip: the mix, the multi-track mp4, each sound's take, the project",
            interactive=False,
            elem_id="bundle",
        )
        for k in range(MAX_SOUNDS):
            with gr.Column(visible=False, elem_id=f"sound-result-{k + 1}") as section:
                ui["labels"].append(gr.Markdown(f"**Sound {k + 1}**", elem_id=f"sound-label-{k + 1}"))
                cards = []
                with gr.Row(equal_height=False):
                    for t in range(MAX_CANDIDATES):
                        cards.append(take_card(k, t))
                for part in (*TAKE_CARD_PARTS, *TAKE_CARD_ACTIONS):
                    ui[part].append([card[part] for card in cards])
                ui["reroll"].append(gr.Button("Re-roll this sound", size="sm", elem_id=f"reroll-{k + 1}"))
                ui["region"].append(region_controls.region_row(k))
            ui["sections"].append(section)
    ui["area"] = area
    with gr.Row():
        ui["download"] = gr.File(label="Project file", interactive=False, elem_id="project-file")
        ui["upload"] = gr.UploadButton(
            "Open a project file", file_types=[".json"], size="sm", elem_id="project-upload"
        )
    ui["current"] = gr.State(None)
    ui["restored"] = gr.State(None)  # an uploaded project, waiting for Generate
    return ui


# A take card's widgets, in the order `workspace_handlers.take_card_values` gives their values.
TAKE_CARD_PARTS = ("cards", "takes", "score", "use")
TAKE_CARD_ACTIONS = ("keep", "use_seed")  # a card's buttons whose events need no update from `show`


def take_card(k: int, t: int) -> dict[str, Any]:
    """Sound k's take slot t: its player (the seed in its label), its score line (when scored),
    "Use this take", Keep, Use this seed.

    Element ids: `take-card-K-T`, `take-K-T`, `take-score-K-T`, `use-take-K-T`, `keep-take-K-T`,
    `use-seed-K-T`.
    Hidden until `show` fills it; every take's look is decided here and in `take_card_values`.
    """
    card: dict[str, Any] = {}
    with gr.Column(min_width=160, visible=False, elem_id=f"take-card-{k + 1}-{t + 1}") as column:
        card["cards"] = column
        card["takes"] = gr.Audio(
            label=f"Take {t + 1}", type="filepath", interactive=False, elem_id=f"take-{k + 1}-{t + 1}"
        )
        card["score"] = gr.Markdown("", visible=False, elem_id=f"take-score-{k + 1}-{t + 1}")
        card["use"] = gr.Button(USE_THIS_TAKE, size="sm", elem_id=f"use-take-{k + 1}-{t + 1}")
        with gr.Row():
            card["keep"] = gr.Button("Keep", size="sm", min_width=60, elem_id=f"keep-take-{k + 1}-{t + 1}")
            card["use_seed"] = gr.Button(
                "Use this seed", size="sm", min_width=60, elem_id=f"use-seed-{k + 1}-{t + 1}"
            )
    return card


def area_outputs(ui: dict[str, Any]) -> list[Any]:
    """What `show` updates, in its order."""
    per_sound = []
    for k in range(MAX_SOUNDS):
        per_sound += [ui["sections"][k], ui["labels"][k]]
        per_sound += [ui[part][k][t] for t in range(MAX_CANDIDATES) for part in TAKE_CARD_PARTS]
    return [ui["current"], ui["area"], ui["mix_video"], ui["info"], ui["download"], *per_sound, ui["bundle"]]


def row_inputs(rows: dict[str, Any]) -> list[Any]:
    """Prompts, negatives, gains, pans, mutes, solos: each a list over the sounds, in that order."""
    return [x for name in ("prompts", "negatives", *MIX_FIELDS) for x in rows[name]]


def mix_inputs(rows: dict[str, Any]) -> list[Any]:
    return [x for name in MIX_FIELDS for x in rows[name]]


# -- wiring --------------------------------------------------------------------------------------------


def wire_workspace(
    ws: Workspace,
    rows: dict[str, Any],
    area: dict[str, Any],
    *,
    checked: Any,
    single: Any,
    stop: gr.Button,
    video: gr.Video,
    settings: list[Any],
    original: gr.Slider,
    num_samples: gr.Slider,
    current_result: gr.State,
    kept: list[Any],
    score: gr.Checkbox,
    delivery: list[Any],
    finish: Callable[[Any], None] | None = None,
) -> list[Any]:
    """The workspace's events; returns what a restore fills (`workspace_handlers.project_values`' order).

    `checked` is the page's Source check before a Generate; `single` the `/generate` event (one
    sound); `settings` are steps, CFG, seed, duration, start, variant and Candidates; `kept` the
    kept list's state, text and files (a take's Keep); `score` the "Score the takes" box;
    `delivery` the output sample rate and loudness target;
    `finish(event)` puts Generate and Cancel back to idle after a run.
    """
    for button, delta in ((rows["add"], 1), (rows["remove"], -1)):
        button.click(
            lambda c, d=delta: resize(c, d),
            rows["count"],
            [rows["count"], *rows["rows"], rows["add"], rows["remove"]],
            **PAGE_EVENT,
        )
    outputs = area_outputs(area)
    gpu = {"concurrency_limit": 1, "concurrency_id": "gpu", "api_visibility": "private"}
    n_rows = 6 * MAX_SOUNDS

    # gradio hands progress and the request to the leading parameters; the widget values follow.
    def generate(
        progress: gr.Progress = gr.Progress(),  # noqa: B008
        request: gr.Request | None = None,
        *values: Any,
    ) -> list[Any]:
        video, count, *rest = values
        rows_, settings_ = rest[:n_rows], rest[n_rows : n_rows + 7]
        original_, restored, score_, rate, loudness = rest[n_rows + 7 :]
        return ws.generate(
            video, count, rows_, settings_, original_, restored, progress, request,
            score=score_, sample_rate=rate, loudness=loudness,
        )  # fmt: skip

    many = checked.success(several_sounds, rows["count"], None, **PAGE_EVENT_TOASTS).success(
        stops_on_cancel(generate),
        [video, rows["count"], *row_inputs(rows), *settings, original, area["restored"], score, *delivery],
        [*outputs, area["restored"]],
        show_progress_on=area["mix_video"],
        **gpu,
    )
    if finish is not None:
        finish(many)
    mix_values = [*mix_inputs(rows), original]
    single.success(ws.adopt, [current_result, *mix_values], outputs, **PAGE_EVENT_TOASTS)
    rerolls = [
        area["reroll"][k].click(
            stops_on_cancel(_reroll_for(ws, k)),
            [area["current"], num_samples, score, *delivery],
            outputs,
            show_progress_on=area["sections"][k],
            **gpu,
        )
        for k in range(MAX_SOUNDS)
    ]
    regions = [
        area["region"][k]["button"].click(
            stops_on_cancel(region_controls.handler_for(ws, k)),
            [area["current"], *(area["region"][k][part] for part in region_controls.REGION_PARTS)],
            outputs,
            show_progress_on=area["sections"][k],
            **gpu,
        )
        for k in range(MAX_SOUNDS)
    ]
    stop.click(None, None, None, cancels=[many, *rerolls, *regions], **PAGE_EVENT)
    # The user's own moves only (not a restore's): sliders on release, boxes on input.
    for control in [*rows["gain"], *rows["pan"], original]:
        control.release(ws.remix, [area["current"], *mix_values], outputs, **PAGE_EVENT_TOASTS)
    for control in [*rows["mute"], *rows["solo"]]:
        control.input(ws.remix, [area["current"], *mix_values], outputs, **PAGE_EVENT_TOASTS)
    for k in range(MAX_SOUNDS):
        for t in range(MAX_CANDIDATES):
            area["use"][k][t].click(
                lambda cur, *v, k=k, t=t: ws.use_take(k, t, cur, *v),
                [area["current"], *mix_values],
                outputs,
                **PAGE_EVENT_TOASTS,
            )
            area["keep"][k][t].click(
                lambda cur, kept_, k=k, t=t: ws.keep_take(k, t, cur, kept_),
                [area["current"], kept[0]],
                kept,
                **PAGE_EVENT_TOASTS,
            )
            area["use_seed"][k][t].click(
                lambda cur, k=k, t=t: ws.take_seed(k, t, cur),
                area["current"],
                [settings[2], num_samples],
                **PAGE_EVENT_TOASTS,
            )
    restore_outputs = [
        rows["count"],
        *rows["rows"],
        rows["add"],
        rows["remove"],
        *row_inputs(rows),
        *settings,
        original,
        area["restored"],
    ]
    area["upload"].upload(ws.restore, area["upload"], restore_outputs, **PAGE_EVENT_TOASTS)
    return restore_outputs


def _reroll_for(ws: Workspace, k: int) -> Any:
    """Sound `k`'s Re-roll handler, with the parameters gradio fills in (progress, the request)."""

    def reroll(
        current: Current | None,
        num_samples: float,
        score: bool,
        sample_rate: int | str,
        loudness: str,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
        request: gr.Request | None = None,
    ) -> list[Any]:
        return ws.reroll(
            k,
            current,
            num_samples,
            progress,
            request,
            score=score,
            sample_rate=sample_rate,
            loudness=loudness,
        )

    return reroll
