"""The `/stems` endpoint's widgets (UI only, hidden): up to 4 prompts for one video, their players and mix.

The page's sounds list (`selva.app.workspace`) took the editor's place; the widgets stay,
hidden, so the `/stems` API and its MCP tool keep their inputs and outputs.

Built into the Blocks by `selva.app.page.build_demo`; the work runs in
`selva.serving.GenerationService.run_stems` through `selva.app.handlers.Studio.generate_stems`,
which `wire_stems` is handed (this module imports no handler).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import gradio as gr

from selva import spec
from selva.app.widgets import limit_slider, sound_prompts
from selva.serving import StemsResult

HISTORY_SIZE = 20  # earlier stems results kept per browser session (their files live ~1 h)
DEFAULT_ROWS = 2  # stem rows shown before Add stem
PLACEHOLDERS = ("dog barking", "car engine", "rain on a window", "footsteps")


def stems_outputs(result: StemsResult | None) -> tuple[Any, ...]:
    """A stems result as the values of its players: mix mp4, tracks mp4, mix, 4 stems, info, labels.

    The last item is the four stem players' labels (prompt and seed), as updates.
    """
    if result is None:
        return (None, None, None, *[None] * spec.MAX_STEMS, "", [gr.update()] * spec.MAX_STEMS)
    audio = [*result.stem_audio, *[None] * (spec.MAX_STEMS - len(result.stem_audio))]
    labels = [
        gr.update(label=f"Stem {k + 1}: {result.prompts[k]} (seed {result.seeds[k]})", visible=True)
        if k < len(result.prompts)
        else gr.update(label=f"Stem {k + 1}", visible=False)
        for k in range(spec.MAX_STEMS)
    ]
    return (result.mix_video, result.tracks_video, result.mix_audio, *audio, result.info, labels)


def remember(
    history: list[StemsResult] | None, result: StemsResult | None, *served: str | None
) -> tuple[Any, ...]:
    """Add `result` to this session's earlier results; the list shows the newest first.

    `served` are the players' values after the run: gradio's cached copies of the
    files (mix mp4, tracks mp4, mix, stems), which outlive our short-lived ones.
    """
    history = list(history or [])
    if result is not None:
        if len(served) == 3 + spec.MAX_STEMS and all(served[: 3 + len(result.stem_audio)]):
            mix_video, tracks_video, mix_audio, *stem_audio = served
            result = replace(
                result,
                mix_video=mix_video,
                tracks_video=tracks_video,
                mix_audio=mix_audio,
                stem_audio=tuple(stem_audio[: len(result.stem_audio)]),
            )
        history.insert(0, result)
        del history[HISTORY_SIZE:]
    choices = [(f"{len(history) - k}. {r.label}", k) for k, r in enumerate(history)]
    labels = stems_outputs(result)[-1]
    return (history, gr.update(choices=choices, value=0 if history else None), *labels)


def recall(history: list[StemsResult] | None, index: int | None) -> tuple[Any, ...]:
    """The players' values for earlier result `index` (as listed by `remember`)."""
    history = history or []
    known = index is not None and 0 <= int(index) < len(history)
    *values, labels = stems_outputs(history[int(index)] if known else None)
    # The stem players take their file and their label (prompt and seed) in one update.
    players = [{**label, "value": value} for label, value in zip(labels, values[3:-1], strict=True)]
    return (*values[:3], *players, values[-1])


def stems_accordion() -> dict[str, Any]:
    """The stems editor and its players: up to MAX_STEMS rows of prompt, negative prompt and gain.

    Every widget a test or a user's script may need to find has an elem_id: `stem-row-K`,
    `stem-prompt-K`, `stem-negative-K`, `stem-gain-K`, `stem-audio-K` (K from 1),
    `stems-add`, `stems-remove`, `generate-stems`, `stems-cancel`, `stems-history`,
    `stems-mix`, `stems-tracks`, `stems-mix-audio` and `stems-info`.
    """
    ui: dict[str, Any] = {"rows": [], "prompts": [], "negatives": [], "gains": [], "players": []}
    # Hidden: the page's workspace (`selva.app.workspace`) makes several sounds now; these widgets
    # stay as the `/stems` endpoint's inputs and outputs, which API and MCP callers keep using.
    with gr.Column(visible=False, elem_id="stems"):
        gr.Markdown(
            "One sound per prompt on the same span, each following its own source, and their mix. "
            "Uses the video and the settings above; stem k gets seed + k."
        )
        # Two columns side by side on a wide screen; under ~600 px they wrap into one (min_width),
        # and each stem row wraps too: the prompt on its own line, the negative and the gain below.
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=280):
                for k in range(spec.MAX_STEMS):
                    with gr.Row(visible=k < DEFAULT_ROWS, elem_id=f"stem-row-{k + 1}") as row:
                        # An empty value is a default, so MCP and API callers may leave a field out;
                        # the first stem's prompt has none: the one field a caller must give.
                        prompt, negative = sound_prompts(
                            f"Stem {k + 1} prompt", PLACEHOLDERS[k], f"stem-prompt-{k + 1}",
                            value=None if k == 0 else "",
                        )  # fmt: skip
                        ui["prompts"].append(prompt)
                        ui["negatives"].append(negative)
                        where = f"stem-gain-{k + 1}"
                        gain = limit_slider(spec.STEM_GAIN, step=0.05, min_width=140, elem_id=where)
                        ui["gains"].append(gain)
                    ui["rows"].append(row)
                ui["count"] = gr.State(DEFAULT_ROWS)
                with gr.Row():
                    ui["add"] = gr.Button("Add stem", size="sm", min_width=120, elem_id="stems-add")
                    ui["remove"] = gr.Button("Remove stem", size="sm", min_width=120, elem_id="stems-remove")
                with gr.Row():
                    ui["run"] = gr.Button(
                        "Generate stems", variant="primary", scale=3, min_width=160, elem_id="generate-stems"
                    )
                    ui["cancel"] = gr.Button(
                        "Cancel", variant="stop", scale=1, min_width=80, elem_id="stems-cancel"
                    )
                ui["history"] = gr.Dropdown(
                    choices=[],
                    value=None,
                    label="Earlier results (this session)",
                    info="Pick one to play it again; the newest is first.",
                    interactive=True,
                    elem_id="stems-history",
                )
            with gr.Column(scale=1, min_width=280):
                ui["mix_video"] = gr.Video(label="Mix", interactive=False, height=260, elem_id="stems-mix")
                ui["tracks"] = gr.File(
                    label="Multi-track mp4 (mix + one track per stem)",
                    interactive=False,
                    elem_id="stems-tracks",
                )
                ui["mix_audio"] = gr.Audio(
                    label="Mix audio", type="filepath", interactive=False, elem_id="stems-mix-audio"
                )
                for k in range(spec.MAX_STEMS):
                    ui["players"].append(
                        gr.Audio(
                            label=f"Stem {k + 1}",
                            type="filepath",
                            interactive=False,
                            visible=k < DEFAULT_ROWS,
                            elem_id=f"stem-audio-{k + 1}",
                        )
                    )
                ui["info"] = gr.Textbox(label="Stems info", interactive=False, lines=2, elem_id="stems-info")
        ui["result"] = gr.State(None)
        ui["past"] = gr.State([])
    return ui


def resize(count: int, delta: int) -> tuple[Any, ...]:
    """Show `count + delta` rows (1 to MAX_STEMS): the count, each row, Add and Remove, then each
    row's prompt, negative and gain (a removed row's are reset).

    Hidden rows still send their values and rows with an empty prompt are skipped, so emptying a
    removed row's prompt is what takes it out of the next run; its negative and gain go back to
    their defaults so that adding the row again starts it afresh.
    """
    count = max(1, min(spec.MAX_STEMS, int(count) + delta))
    rows = [gr.update(visible=k < count) for k in range(spec.MAX_STEMS)]
    buttons = [gr.update(interactive=count < spec.MAX_STEMS), gr.update(interactive=count > 1)]
    kept, gain = gr.update(), spec.STEM_GAIN.default
    fields = [(kept, kept, kept) if k < count else ("", "", gain) for k in range(spec.MAX_STEMS)]
    return (count, *rows, *buttons, *[f[0] for f in fields], *[f[1] for f in fields], *[f[2] for f in fields])


def wire_stems(ui: dict[str, Any], video: list, settings: list, *, generate: Callable) -> None:
    """The stems editor's events: add/remove rows, Generate stems (`/stems`), Cancel, earlier results.

    `generate` is the `/stems` handler (widget values in, `stems_outputs` and the result out); its
    job stops after the current flow step when gradio cancels the event (`handlers.stops_on_cancel`).
    """
    rows, prompts, negatives, gains = ui["rows"], ui["prompts"], ui["negatives"], ui["gains"]

    for button, delta in ((ui["add"], 1), (ui["remove"], -1)):
        button.click(
            lambda c, d=delta: resize(c, d),
            ui["count"],
            [ui["count"], *rows, ui["add"], ui["remove"], *prompts, *negatives, *gains],
            queue=False,
            api_visibility="private",
        )
    stem_inputs = [x for k in range(spec.MAX_STEMS) for x in (prompts[k], negatives[k], gains[k])]
    outputs = [ui["mix_video"], ui["tracks"], ui["mix_audio"], *ui["players"], ui["info"]]
    # Enter in a stem prompt runs the stems too, as Enter in the main prompt runs Generate.
    event = gr.on(
        [ui["run"].click, *[p.submit for p in prompts]],
        generate,
        inputs=[*video, *stem_inputs, *settings],
        outputs=[*outputs, ui["result"]],
        api_name="stems",
        api_description="Generate up to 4 sounds for one video, one per prompt, and their mix.",
        concurrency_limit=1,
        concurrency_id="gpu",
        show_progress_on=ui["mix_video"],
    )
    # As the main Cancel: gradio's cancel drops the queued event or stops the running job.
    ui["cancel"].click(None, None, None, cancels=[event], queue=False, api_visibility="private")
    served = [ui["mix_video"], ui["tracks"], ui["mix_audio"], *ui["players"]]
    event.success(
        remember,
        [ui["past"], ui["result"], *served],
        [ui["past"], ui["history"], *ui["players"]],
        queue=False,
        api_visibility="private",
    )
    ui["history"].input(recall, [ui["past"], ui["history"]], outputs, queue=False, api_visibility="private")
