"""SelVA Studio's page: the Blocks, their layout and events, the Source choice, the examples.

`build_demo(pipe)` builds the Blocks around one pipeline (or a `PipelineSlot` that loads
it on first use); nothing is loaded or launched (`selva.app.launch` does that). The page
is put together from `handlers` (the request handlers), `results` (candidate cards, earlier
results, kept takes), `workspace` (the sounds list and its result area) and `stems` (the
`/stems` endpoint's hidden widgets). Importing this module loads no model, picks no device
and downloads nothing.

Concurrency: the process holds one `SelvaPipeline` (in a `selva.serving.PipelineSlot`) and a
lock around it, and every model event runs in one queue slot per GPU, so two requests never
touch the pipeline (or swap its variant) at the same time.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from selva import spec
from selva.app import history as history_ui
from selva.app import results as results_ui
from selva.app import running
from selva.app import stems as stems_ui
from selva.app import workspace as workspace_ui
from selva.app.handlers import (
    EXAMPLE_SEED,
    SOURCE_PROMPT,
    SOURCE_VIDEO,
    Studio,
    check_source,
    check_upload,
    stops_on_cancel,
)
from selva.app.load_status import load_status_panel
from selva.app.widgets import delivery_settings, limit_slider
from selva.app.workspace_handlers import Workspace, one_sound
from selva.serving import PipelineSlot

if TYPE_CHECKING:
    from selva.pipeline import SelvaPipeline


# The examples sit beside the package in a checkout (the Space's repository); an installed wheel
# has none, and the page then shows no example gallery.
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
EXAMPLES_CSV = EXAMPLES_DIR / "examples.csv"
QUEUE_SIZE = 32  # requests waiting beyond this are turned away with a "queue full" message
DELETE_CACHE = (1800, 3600)  # every 30 min, drop served files older than an hour
PROMPT_ONLY_SECONDS = 8.0  # SelVA's training length: how much sound Prompt only makes unless told
# On a phone the result column sits under the inputs: a run that starts brings it on screen (on a
# wide screen it is beside them, and nothing moves).
SCROLL_TO_RESULT = """() => {
    const result = document.querySelector('#result-column');
    const generate = document.querySelector('#generate');
    if (result && generate && result.getBoundingClientRect().top >= generate.getBoundingClientRect().bottom) {
        result.scrollIntoView({block: 'start'});
    }
}"""

PROMPT_HELP = """\
**Prompt** – the sound you want, e.g. *dog barking*. It does two jobs: it names the sound, and it
picks **which visible source the sound follows**. SelVA feeds the prompt to its video encoder
(TextSynch), so the timing of the audio comes from the motion of the thing you named and not from
everything that moves.

**Negative prompt** – a sound to steer away from, e.g. *wind noise* or *car engine*. It only acts
through the text input of the audio generator (classifier-free guidance); it never reaches the video
encoder, so it changes what the audio sounds like, not which motion it follows.

**Prompt only** (Source) – no video: the prompt alone makes Duration seconds of sound, in no sync
with anything.

Tips: SelVA was trained on 8 s clips; by default it sonifies the whole clip from the start time,
past 8 s in overlapping 8 s windows. Higher CFG follows the prompt more closely; more steps are
slower and a little cleaner. Each candidate shows its seed: **Use this seed** makes it again alone,
**Keep** puts it in this session's kept list.
"""

PROMPT_ONLY_NOTE = (
    "**Sound from the prompt alone**: no video needed. SelVA makes **Duration** seconds of sound "
    f"from your prompt ({PROMPT_ONLY_SECONDS:g} s to start with, its training length)."
)


# -- examples ----------------------------------------------------------------------------------------


def load_examples(csv_path: Path = EXAMPLES_CSV) -> list[list[str]]:
    """[video path, prompt, negative prompt] rows from examples/examples.csv (videos that exist)."""
    if not csv_path.is_file():
        return []
    with csv_path.open(newline="", encoding="utf-8") as f:
        rows = [
            [str(csv_path.parent / row["video"]), row["prompt"], row.get("negative") or ""]
            for row in csv.DictReader(f)
        ]
    return [row for row in rows if Path(row[0]).is_file()]


# -- the Blocks ----------------------------------------------------------------------------------------


def _variant_choices(current: str) -> list[tuple[str, str]]:
    from selva.variants import known_variants

    known = known_variants()
    names = list(known)
    if current not in names:
        names.insert(0, current)
    return [(f"{name} – {known[name].description}" if name in known else name, name) for name in names]


def build_demo(pipe: SelvaPipeline | PipelineSlot | None = None, *, examples: bool = True) -> gr.Blocks:
    """The SelVA Studio UI around one pipeline (or a slot that loads it on first use).

    Builds only: nothing is loaded or launched. `examples=False` leaves the
    example gallery out (tests that never click it).
    """
    if pipe is None:
        slot = PipelineSlot()
    elif isinstance(pipe, PipelineSlot):
        slot = pipe
    else:
        slot = PipelineSlot.wrap(pipe)
    studio = Studio(slot)
    start_variant = slot.variant or slot.default_variant
    private = results_ui.PAGE_EVENT

    with gr.Blocks(title="SelVA Studio", analytics_enabled=False, delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(
            "# SelVA Studio\n"
            "Drop in a video, type the sound you want and, if you like, the sound you don't. "
            "SelVA generates audio that follows only the motion of the source you named "
            "([paper](https://arxiv.org/abs/2512.02650)). No video? Choose **Prompt only**."
        )
        load_status_panel(slot)  # the model's download and load, until it is ready
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=320):
                source = gr.Radio(
                    [("Video", SOURCE_VIDEO), ("Prompt only", SOURCE_PROMPT)],
                    value=SOURCE_VIDEO,
                    label="Source",
                    info="Sound for a video, or sound from the prompt alone",
                    elem_id="source",
                )
                video = gr.Video(label="Video", sources=["upload"], elem_id="input-video", height=240)
                prompt_note = gr.Markdown(PROMPT_ONLY_NOTE, visible=False, elem_id="prompt-only-note")
                prompt = gr.Textbox(
                    label="Prompt: the sound you want",
                    placeholder="dog barking",
                    info="Also picks which visible source the sound follows.",
                    max_lines=3,
                    elem_id="prompt",
                )
                negative = gr.Textbox(
                    value="",  # a default, so API and MCP callers may leave it out
                    label="Negative prompt: the sound you don't want",
                    placeholder="wind noise",
                    info="Steers the audio away; it does not change which motion is followed.",
                    max_lines=3,
                    elem_id="negative-prompt",
                )
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="generate", scale=3)
                    stop = gr.Button("Cancel", variant="stop", elem_id="cancel", scale=1, visible=False)
                sounds = workspace_ui.sound_rows(prompt, negative)
                with gr.Row():
                    duration = gr.Slider(
                        0,
                        slot.max_duration,
                        value=0,
                        step=0.1,
                        label="Duration (s)",
                        info=_duration_info(SOURCE_VIDEO, slot.max_duration),
                        elem_id="duration",
                    )
                    start = gr.Number(
                        value=spec.START.default,
                        minimum=spec.START.minimum,
                        label=spec.START.label,
                        info="where the span begins",
                        min_width=120,
                    )
                with gr.Accordion("How the two prompts work", open=False):
                    gr.Markdown(PROMPT_HELP)
                with gr.Accordion("Settings", open=False, elem_id="settings"):  # collapsed: prompts first
                    variant = gr.Dropdown(
                        choices=_variant_choices(start_variant),
                        value=start_variant,
                        label="Model variant",
                        info="Another variant loads on the next Generate; one model is kept in memory.",
                    )
                    status = gr.Markdown(studio.describe(start_variant), elem_id="model-status")
                    with gr.Row():
                        steps = limit_slider(spec.STEPS, step=1)
                        cfg = limit_slider(spec.CFG_STRENGTH, step=0.1)
                    with gr.Row():
                        with gr.Column(min_width=160):
                            seed = gr.Number(
                                value=-1,
                                precision=0,
                                minimum=-1,
                                maximum=spec.SEED.maximum,
                                label=spec.SEED.label,
                                info="-1 = random; each candidate shows its seed",
                                elem_id="seed",
                            )
                            reuse = gr.Button("Reuse last seed", size="sm")
                        num_samples = limit_slider(
                            spec.NUM_SAMPLES,
                            step=1,
                            info="candidate k gets seed + k",
                            elem_id="candidates-count",
                        )
                    original_level = limit_slider(
                        spec.ORIGINAL_AUDIO_GAIN,
                        step=0.05,
                        info="the video's own sound under the new audio (0 = replace it)",
                    )
                    score_takes = gr.Checkbox(
                        False,
                        label="Score the takes (CLAP)",
                        info="A hint for choosing: how well each take matches its prompt and how much it "
                        "leaks the other sounds' prompts, not a judgement of quality. The best is "
                        "marked; the choice stays yours. Loads a CLAP model on first use.",
                        elem_id="score-takes",
                    )
                    with gr.Row():
                        sample_rate, loudness = delivery_settings()
            with gr.Column(scale=1, min_width=320, elem_id="result-column"):
                # The examples go here once their inputs exist: at the top on a desktop, beside the
                # inputs; on a phone below them, so the first screen stays video, prompt, Generate.
                examples_place = gr.Column(elem_id="examples-place")
                area = workspace_ui.result_area()
                history = history_ui.history_panel()
                results = results_ui.results_column()
        stems_widgets = stems_ui.stems_accordion()  # hidden: the `/stems` API's inputs and outputs
        remembered = gr.State({})  # what the other Source had: its upload and its Duration

        source_outputs = [video, prompt_note, duration, start, original_level, remembered]
        source.input(
            lambda s, v, d, m: switch_source(s, v, d, m, max_duration=slot.max_duration),
            [source, video, duration, remembered],
            source_outputs,
            **private,
        )
        # The Source choice is the page's: `/generate` itself keeps the API's rule.
        checked = gr.on(
            [run.click, prompt.submit, negative.submit],
            check_source,
            [source, video, duration],
            video,
            **results_ui.PAGE_EVENT_TOASTS,
        )
        # A file that is no video is refused at upload; a clip sets the span's ends.
        video.upload(
            lambda v, d: check_upload(v, d, max_duration=slot.max_duration),
            [video, duration],
            [video, duration, start],
            **results_ui.PAGE_EVENT_TOASTS,
        )
        started, end_of_run = running.wire_running(studio, run, stop, checked)
        # One result area: a run's takes show in the workspace; the cards only hold an example's result.
        started.then(lambda: gr.update(visible=False), None, results.area, **private)
        started.then(None, None, None, js=SCROLL_TO_RESULT, **private)
        inputs = [video, prompt, negative, steps, cfg, seed, duration, start, variant, num_samples]
        inputs += [original_level, score_takes, sample_rate, loudness]
        # One sound: the page's `/generate` (its candidates are the sound's takes); several: the workspace.
        single = started.success(one_sound, sounds["count"], None, **results_ui.PAGE_EVENT_TOASTS)
        event = single.success(
            stops_on_cancel(studio.generate),
            inputs=inputs,
            outputs=[*results.videos, results.downloads, results.info, results.current],
            api_name="generate",
            api_description="Generate audio for a video that follows the prompted source, "
            "or (no video, a duration) sound from the prompt alone.",
            concurrency_limit=1,
            concurrency_id="gpu",  # every model call shares one slot: one job at a time per GPU
            show_progress_on=area["mix_video"],  # the cards are hidden: the workspace's result shows it
        )
        results_ui.wire_results(results, event, seed=seed, num_samples=num_samples)
        end_of_run(event)  # Generate back, Cancel hidden: after the run, or at once on Cancel
        reuse.click(lambda r: -1 if r is None else r.seed, results.current, seed, **private)
        variant.change(studio.describe, variant, status, **private)
        # Refresh the status after a run: the first one loads the model.
        event.then(studio.describe, variant, status, **private)

        restore_outputs = workspace_ui.wire_workspace(
            Workspace(studio), sounds, area, checked=checked, single=event, stop=stop, video=video,
            settings=[steps, cfg, seed, duration, start, variant, num_samples], original=original_level,
            num_samples=num_samples, current_result=results.current, finish=end_of_run,
            kept=[results.kept, results.kept_list, results.kept_files], score=score_takes,
            delivery=[sample_rate, loudness],
        )  # fmt: skip
        history_ui.wire_history(
            demo, history, area["current"], restore_outputs, video,
            roots=[Path(gr.utils.get_upload_folder()), EXAMPLES_DIR],  # where this server keeps clips
        )  # fmt: skip
        stems_ui.wire_stems(
            stems_widgets,
            [video],
            [steps, cfg, seed, duration, start, variant, original_level],
            generate=stops_on_cancel(studio.generate_stems),
        )

        if examples and (rows := load_examples()):
            with examples_place:
                gallery = gr.Examples(
                    rows,
                    inputs=[video, prompt, negative],
                    # One candidate: gradio's example cache cannot store an empty video, so the unused
                    # players are no example outputs.
                    outputs=[results.videos[0], results.audios[0], results.downloads, results.info],
                    fn=stops_on_cancel(studio.generate_example),
                    cache_examples=True,
                    cache_mode="lazy",  # computed on first click, then served to everyone
                    example_labels=[f"{Path(r[0]).stem}: {r[1]}" for r in rows],
                )
            gallery.dataset.click(
                lambda s, d, m: source_for_example(s, d, m, max_duration=slot.max_duration),
                [source, duration, remembered],
                [source, *source_outputs],
                **private,
            )
            gallery.dataset.click(
                lambda: results_ui.example_shown(EXAMPLE_SEED),
                None,
                [results.current, results.area, *results.players],
                **private,
            )

        demo.unload(studio.leave)  # a visitor who closes the tab (or a client that disconnects)

    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    demo.studio = studio  # for tests and embedding: the handlers and the slot behind this UI
    return demo


# -- the Source choice ---------------------------------------------------------------------------------


def _duration_info(source: str, max_duration: float) -> str:
    if source == SOURCE_PROMPT:
        return f"seconds of sound to make from the prompt, up to {max_duration:g} s (needed)"
    return f"0 = auto: the whole clip, up to {max_duration:g} s"


def switch_source(
    source: str, video: str | None, duration: float | None, remembered: dict | None, *, max_duration: float
) -> tuple[Any, ...]:
    """Show what `source` needs and bring back the values it had (the Source radio's event).

    Each source keeps its own Duration (Prompt only starts at 8 s), and the upload
    waits aside while Prompt only is chosen, so switching back brings it back.
    Returns updates for the video, the Prompt only note, Duration, Start, the
    original audio level, and what is kept aside.
    """
    remembered = dict(remembered or {})
    prompt_only = source == SOURCE_PROMPT
    if prompt_only:
        remembered["video"], remembered["video_duration"] = video, duration
        video, duration = None, remembered.get("prompt_duration", PROMPT_ONLY_SECONDS)
    else:
        remembered["prompt_duration"] = duration
        video, duration = remembered.pop("video", None), remembered.get("video_duration", 0.0)
    return (
        gr.update(visible=not prompt_only, value=video),
        gr.update(visible=prompt_only),
        gr.update(value=duration, info=_duration_info(source, max_duration)),
        gr.update(visible=not prompt_only),  # a start time means nothing without a video
        gr.update(visible=not prompt_only),  # nor does the video's own sound
        remembered,
    )


def source_for_example(
    source: str, duration: float | None, remembered: dict | None, *, max_duration: float
) -> tuple[Any, ...]:
    """An example fills the Video box: back to Source: Video, its clip replacing any upload kept aside.

    Returns the Source value and `switch_source`'s updates (the video box keeps the example's clip).
    """
    if source != SOURCE_PROMPT:
        return (gr.update(),) * 6 + (remembered,)
    _, *rest = switch_source(SOURCE_VIDEO, None, duration, remembered, max_duration=max_duration)
    return (SOURCE_VIDEO, gr.update(visible=True), *rest)
