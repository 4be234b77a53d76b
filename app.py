"""SelVA Studio: the Gradio app (UI only; requests run through `selva.serving`).

    python app.py [--share] [--server-name HOST] [--port N] [--variant NAME] [--device DEV]
                  [--precision P] [--offload O] [--weights-dir DIR] [--max-duration SEC]

`build_demo(pipe)` builds the Blocks around one pipeline; `main()` parses the
command line, loads the models once and launches. Importing this module loads
no model, picks no device and downloads nothing.

Concurrency: the process holds one `SelvaPipeline` (in a `selva.serving.PipelineSlot`) and a
lock around it, and the Generate event runs in one queue slot per GPU, so two
requests never touch the pipeline (or swap its variant) at the same time.
On Hugging Face ZeroGPU the model call is wrapped with `spaces.GPU`.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

import stems_ui
from selva import spec
from selva.serving import (
    MAX_CANDIDATES,
    GenerationService,
    OutputStore,
    PipelineSlot,
    dtype_name,
    parse_request,
)
from selva.spec import GenerationCancelled, SelvaError, WeightsError, is_out_of_memory
from selva.stems import stems_from_form

if TYPE_CHECKING:
    from selva.pipeline import SelvaPipeline

try:  # Hugging Face ZeroGPU; the package is absent (or a no-op) everywhere else
    import spaces
except ImportError:
    spaces = None

log = logging.getLogger("selva.app")

APP_DIR = Path(__file__).resolve().parent
EXAMPLES_DIR = APP_DIR / "examples"
EXAMPLES_CSV = EXAMPLES_DIR / "examples.csv"
DEFAULT_VARIANT = spec.DEFAULT_VARIANT
EXAMPLE_SEED = 2025  # cached examples are reproducible
MAX_UPLOAD = "500mb"  # a minute of 4K phone video; longer clips should be cut first
QUEUE_SIZE = 32  # requests waiting beyond this are turned away with a "queue full" message
ZEROGPU_SECONDS = 120  # the longest a ZeroGPU call may hold the GPU (an 8 s clip takes ~10 s on an A100)
DELETE_CACHE = (1800, 3600)  # every 30 min, drop served files older than an hour

PROMPT_HELP = """\
**Prompt** – the sound you want, e.g. *dog barking*. It does two jobs: it names the sound, and it
picks **which visible source the sound follows**. SelVA feeds the prompt to its video encoder
(TextSynch), so the timing of the audio comes from the motion of the thing you named and not from
everything that moves.

**Negative prompt** – a sound to steer away from, e.g. *wind noise* or *car engine*. It only acts
through the text input of the audio generator (classifier-free guidance); it never reaches the video
encoder, so it changes what the audio sounds like, not which motion it follows.

Tips: SelVA was trained on 8 s clips; by default it sonifies up to 8 s from the start time. Higher
CFG follows the prompt more closely; more steps are slower and a little cleaner. The seed used is
shown with every result: type it in to reproduce a candidate.
"""


# -- the handlers ---------------------------------------------------------------------------------------


def _on_gpu(fn: Callable) -> Callable:
    """`spaces.GPU` where the `spaces` package is importable (ZeroGPU), otherwise `fn` itself."""
    if spaces is None:
        return fn
    return spaces.GPU(duration=ZEROGPU_SECONDS)(fn)


class Studio:
    """The request handlers behind the UI (testable without a browser).

    Widget values go in, our errors come out as `gr.Error`; the requests themselves
    run in a `selva.serving.GenerationService`.
    """

    def __init__(self, slot: PipelineSlot, outputs: OutputStore | None = None):
        self.slot = slot
        self.service = GenerationService(slot, outputs, on_gpu=_on_gpu)

    def generate(
        self,
        video: str | None,
        prompt: str | None,
        negative_prompt: str | None,
        steps: float,
        cfg_strength: float,
        seed: float,
        duration: float | None,
        start: float | None,
        variant: str | None,
        num_samples: float,
        original_audio_gain: float | None = 0.0,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio injects it: the default marks the parameter)
        request: gr.Request | None = None,
    ) -> tuple[Any, ...]:
        """Generate audio for a video that follows the prompted source (the `/generate` API).

        Args:
            video: the video file (mp4, mov, webm...).
            prompt: the sound to make; also picks which visible source it follows, e.g. "dog barking".
            negative_prompt: a sound to steer away from, e.g. "wind noise" (may be empty).
            steps: flow steps, 1-100 (25 is typical).
            cfg_strength: guidance, 1-10 (4.5 is typical).
            seed: -1 for random; the seed used is in the info line.
            duration: seconds to sonify; 0 = the rest of the clip, up to 8 s.
            start: where the span begins, in seconds.
            variant: model variant name, or empty for the server's.
            num_samples: candidates, 1-4 (one video each).
            original_audio_gain: the video's own soundtrack under the new audio, 0-2 (0 replaces it).

        Returns one mp4 path per candidate (None for unused players), the FLAC and WAV
        files, the info line, and the seed used (kept in the page for "Reuse last seed").
        """
        with user_errors(_upload_dirs(video)):
            req = parse_request(
                video,
                prompt,
                negative_prompt,
                steps,
                cfg_strength,
                seed,
                duration,
                start,
                variant,
                num_samples,
                max_duration=self.slot.max_duration,
            )
            gain = spec.ORIGINAL_AUDIO_GAIN.check(float(original_audio_gain or 0.0), by_label=True)
            result = self.service.run(
                req, progress, session=_session(request), original_audio_gain=gain or None
            )
        # Plain paths (None for unused players), so API callers get files, not component updates;
        # the Candidates slider shows and hides the players.
        videos = [*result.videos, *[None] * (MAX_CANDIDATES - len(result.videos))]
        return (*videos, list(result.audio_files), result.info, result.seed)

    def generate_example(
        self,
        video: str,
        prompt: str,
        negative_prompt: str,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
        request: gr.Request | None = None,
    ) -> tuple[Any, ...]:
        """Examples: default settings, the start-up variant and a fixed seed, so the cache is reproducible.

        Returns the video, the audio files and the info line (one candidate).
        """
        with user_errors(_upload_dirs(video)):
            req = spec.GenerationRequest(
                video, prompt, negative_prompt or "", seed=EXAMPLE_SEED, variant=self.slot.default_variant
            ).checked(max_duration=self.slot.max_duration)
            result = self.service.run(req, progress, session=_session(request))
        return result.videos[0], list(result.audio_files), result.info

    def generate_stems(
        self,
        video: str | None,
        prompt_1: str | None,
        negative_1: str | None,
        gain_1: float | None,
        prompt_2: str | None,
        negative_2: str | None,
        gain_2: float | None,
        prompt_3: str | None,
        negative_3: str | None,
        gain_3: float | None,
        prompt_4: str | None,
        negative_4: str | None,
        gain_4: float | None,
        steps: float,
        cfg_strength: float,
        seed: float,
        duration: float | None,
        start: float | None,
        variant: str | None,
        original_audio_gain: float | None = 0.0,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
        request: gr.Request | None = None,
    ) -> tuple[Any, ...]:
        """Generate up to 4 sounds for one video, one per prompt, and their mix (the `/stems` API).

        Each stem follows the source its prompt names; stem k uses seed + k. Stems
        with an empty prompt are skipped. The mix is the sum of the stems at their
        gains (0-2) plus the original soundtrack at original_audio_gain, scaled down
        if it would clip.

        Args:
            video: the video file.
            prompt_1: the first stem's sound, e.g. "dog barking" (required).
            negative_1: a sound the first stem steers away from (may be empty).
            gain_1: the first stem's level in the mix, 0-2.
            prompt_2: the second stem's sound (empty: none).
            negative_2: its negative prompt.
            gain_2: its level.
            prompt_3: the third stem's sound (empty: none).
            negative_3: its negative prompt.
            gain_3: its level.
            prompt_4: the fourth stem's sound (empty: none).
            negative_4: its negative prompt.
            gain_4: its level.
            steps: flow steps, 1-100.
            cfg_strength: guidance, 1-10.
            seed: -1 for random; stem k uses seed + k.
            duration: seconds to sonify; 0 = automatic.
            start: where the span begins, in seconds.
            variant: model variant name, or empty for the server's.
            original_audio_gain: the video's own soundtrack in the mix, 0-2.

        Returns the mixed mp4, the multi-track mp4 (mix + one track per stem), the mix
        FLAC, one FLAC per stem (None for unused ones) and the info line with the seeds.
        """
        rows = [
            (prompt_1, negative_1, gain_1),
            (prompt_2, negative_2, gain_2),
            (prompt_3, negative_3, gain_3),
            (prompt_4, negative_4, gain_4),
        ]
        with user_errors(_upload_dirs(video)):
            stems = stems_from_form(rows)
            # The first stem's prompt only passes the form check: each stem brings its own.
            base = parse_request(
                video, stems[0].prompt, "", steps, cfg_strength, seed, duration, start, variant, 1,
                max_duration=self.slot.max_duration,
            )  # fmt: skip
            gain = spec.ORIGINAL_AUDIO_GAIN.check(float(original_audio_gain or 0.0), by_label=True)
            result = self.service.run_stems(
                base, stems, progress, session=_session(request), original_audio_gain=gain
            )
        return stems_ui.stems_outputs(result)[:-1] + (result,)

    def cancel(self, request: gr.Request | None = None) -> None:
        if self.slot.cancel(_session(request)):
            gr.Info("Cancelling after the current step...")

    def describe(self, variant: str | None) -> str:
        """The model status line under the variant picker."""
        variant = variant or self.slot.default_variant
        pipe = self.slot.pipe
        if pipe is not None and pipe.variant.name == variant:
            return f"`{variant}` is loaded on {pipe.device} ({dtype_name(pipe.dtype)})."
        if pipe is not None:
            resident = pipe.variant.name
            return f"`{variant}` loads on the next Generate, replacing `{resident}` (one model at a time)."
        return f"`{variant}` loads on the first Generate."


@contextmanager
def user_errors(private_dirs: Sequence[str | Path] = ()) -> Iterator[None]:
    """Turn every failure into a `gr.Error` with a message a user can act on; never a stack trace.

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
            raise gr.Error("Generation cancelled.", title="Cancelled", print_exception=False) from None
        message = str(exc)
        for folder in private_dirs:
            message = message.replace(str(folder).rstrip("/\\") + os.sep, "")
        raise gr.Error(message, print_exception=False) from None
    except Exception as exc:
        if is_out_of_memory(exc):
            log.warning("out of memory: %s", exc)
            raise gr.Error(
                "Out of GPU memory. Try a shorter duration or fewer candidates; the person running the "
                "app can also start it with --offload offload_to_cpu or --precision bf16.",
                print_exception=False,
            ) from None
        log.error("generation failed", exc_info=exc)
        raise gr.Error(
            f"Something went wrong on our side ({type(exc).__name__}); the details are in the server log. "
            "Please try again, or report it with the info line of your last result.",
            print_exception=False,
        ) from None


def _upload_dirs(video: str | None) -> list[str]:
    """The server folder an upload sits in: messages name the file, not where the server keeps it."""
    if not video:
        return []
    return list({str(Path(video).parent), str(Path(video).resolve().parent)})


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"


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
    from selva.variants import VARIANTS

    names = list(VARIANTS)
    if current not in names:
        names.insert(0, current)
    return [(f"{name} – {VARIANTS[name].description}" if name in VARIANTS else name, name) for name in names]


def _slider(limit: spec.Limit, *, step: float, info: str | None = None) -> gr.Slider:
    """A slider over one of the spec's limits: its range, default and label."""
    return gr.Slider(
        limit.minimum, limit.maximum, value=limit.default, step=step, label=limit.label, info=info
    )


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

    with gr.Blocks(title="SelVA Studio", analytics_enabled=False, delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(
            "# SelVA Studio\n"
            "Drop in a video, type the sound you want and, if you like, the sound you don't. "
            "SelVA generates audio that follows only the motion of the source you named "
            "([paper](https://arxiv.org/abs/2512.02650))."
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                video = gr.Video(label="Video", sources=["upload"], elem_id="input-video", height=300)
                prompt = gr.Textbox(
                    label="Prompt: the sound you want",
                    placeholder="dog barking",
                    info="Also picks which visible source the sound follows.",
                    max_lines=3,
                    elem_id="prompt",
                )
                negative = gr.Textbox(
                    label="Negative prompt: the sound you don't want",
                    placeholder="wind noise",
                    info="Steers the audio away; it does not change which motion is followed.",
                    max_lines=3,
                    elem_id="negative-prompt",
                )
                with gr.Accordion("How the two prompts work", open=False):
                    gr.Markdown(PROMPT_HELP)
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="generate", scale=3)
                    stop = gr.Button("Cancel", variant="stop", elem_id="cancel", scale=1)
                with gr.Accordion("Settings", open=True):
                    variant = gr.Dropdown(
                        choices=_variant_choices(start_variant),
                        value=start_variant,
                        label="Model variant",
                        info="Another variant loads on the next Generate; one model is kept in memory.",
                    )
                    status = gr.Markdown(studio.describe(start_variant), elem_id="model-status")
                    with gr.Row():
                        steps = _slider(spec.STEPS, step=1)
                        cfg = _slider(spec.CFG_STRENGTH, step=0.1)
                    with gr.Row():
                        duration = gr.Slider(
                            0,
                            slot.max_duration,
                            value=0,
                            step=0.1,
                            label="Duration (s)",
                            # Past 8 s the span runs in overlapping 8 s windows; with no video a
                            # Duration above 0 makes sound from the prompt alone.
                            info=f"0 = auto: the whole clip, up to {slot.max_duration:g} s; "
                            "with no video, the seconds of sound to make from the prompt alone",
                        )
                        start = gr.Number(
                            value=spec.START.default,
                            minimum=spec.START.minimum,
                            label=spec.START.label,
                            info="where the span begins",
                        )
                    with gr.Row():
                        with gr.Column(min_width=160):
                            seed = gr.Number(
                                value=-1,
                                precision=0,
                                minimum=-1,
                                maximum=spec.SEED.maximum,
                                label=spec.SEED.label,
                                info="-1 = random; the seed used is shown in Info",
                                elem_id="seed",
                            )
                            reuse = gr.Button("Reuse last seed", size="sm")
                        num_samples = _slider(spec.NUM_SAMPLES, step=1, info="one video each")
                    original_level = _slider(
                        spec.ORIGINAL_AUDIO_GAIN,
                        step=0.05,
                        info="the video's own sound under the new audio (0 = replace it)",
                    )
            with gr.Column(scale=1):
                players = [
                    gr.Video(
                        label="Result" if k == 0 else f"Candidate {k + 1}",
                        interactive=False,
                        visible=k == 0,
                        elem_id=f"result-{k + 1}",
                        height=300,
                    )
                    for k in range(MAX_CANDIDATES)
                ]
                downloads = gr.File(
                    label="Audio downloads (FLAC and WAV)",
                    file_count="multiple",
                    interactive=False,
                    elem_id="downloads",
                )
                info = gr.Textbox(label="Info", interactive=False, lines=2, elem_id="info")
        stems_widgets = stems_ui.stems_accordion()
        last_seed = gr.State(None)

        inputs = [video, prompt, negative, steps, cfg, seed, duration, start, variant, num_samples]
        inputs.append(original_level)
        outputs = [*players, downloads, info]
        event = gr.on(
            [run.click, prompt.submit, negative.submit],
            studio.generate,
            inputs=inputs,
            outputs=[*outputs, last_seed],
            api_name="generate",
            api_description="Generate audio for a video that follows the prompted source.",
            concurrency_limit=1,
            concurrency_id="gpu",  # every model call shares one slot: one job at a time per GPU
            show_progress_on=players[0],
        )
        # `cancels` drops the job from the queue (or stops waiting on it); `interrupt` stops the
        # worker thread between flow steps, which gradio cannot do on its own.
        stop.click(studio.cancel, None, None, cancels=[event], queue=False, api_visibility="private")
        reuse.click(lambda s: -1 if s is None else s, last_seed, seed, queue=False, api_visibility="private")
        variant.change(studio.describe, variant, status, queue=False, api_visibility="private")
        num_samples.change(
            lambda n: [gr.update(visible=k < int(n)) for k in range(MAX_CANDIDATES)],
            num_samples,
            players,
            queue=False,
            api_visibility="private",
        )
        # Refresh the status after a run: the first one loads the model.
        event.then(studio.describe, variant, status, queue=False, api_visibility="private")

        stems_ui.wire_stems(
            studio, stems_widgets, [video], [steps, cfg, seed, duration, start, variant, original_level]
        )

        if examples and (rows := load_examples()):
            gr.Examples(
                rows,
                inputs=[video, prompt, negative],
                # One candidate: gradio's example cache cannot store an empty video, so the unused
                # players are no example outputs.
                outputs=[players[0], downloads, info],
                fn=studio.generate_example,
                cache_examples=True,
                cache_mode="lazy",  # computed on first click, then served to everyone
                example_labels=[f"{Path(r[0]).stem}: {r[1]}" for r in rows],
            )

    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    demo.studio = studio  # for tests and embedding: the handlers and the slot behind this UI
    return demo


def launch_options(*, mcp: bool = False) -> dict[str, Any]:
    """What `launch` needs besides host and port.

    Only the examples folder is served from disk (outputs live in the temp dir,
    which gradio allows); uploads are capped well above any clip SelVA can use.
    `mcp` also serves the named endpoints as MCP tools at /gradio_api/mcp/ (their
    docstrings describe them to the model calling them).
    """
    options: dict[str, Any] = {"allowed_paths": [str(EXAMPLES_DIR)], "max_file_size": MAX_UPLOAD}
    if mcp:
        options["mcp_server"] = True
    return options


# -- command line ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from selva.cli import OFFLOADS, PRECISIONS

    parser = argparse.ArgumentParser(
        prog="python app.py",
        description="SelVA Studio: the web app. Models load once at start-up.",
    )
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument(
        "--server-name", metavar="HOST", help="interface to listen on (default: 127.0.0.1; 0.0.0.0 for all)"
    )
    parser.add_argument("--port", type=int, metavar="N", help="default: 7860, or the next free port")
    parser.add_argument("--variant", default=DEFAULT_VARIANT, metavar="NAME", help="default: %(default)s")
    parser.add_argument("--device", metavar="DEV", help="cuda, cuda:1, mps or cpu (default: the best one)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help="default: auto")
    parser.add_argument("--offload", choices=OFFLOADS, default="auto", help="default: auto")
    parser.add_argument(
        "--weights-dir", type=Path, metavar="DIR", help="local weights folder (default: HF cache)"
    )
    parser.add_argument(
        "--revision", metavar="REV", help="branch, tag or commit of jnwnlee/SelVA to use (default: main)"
    )
    parser.add_argument(
        "--max-duration", type=float, metavar="SEC", help="longest span one request may ask for"
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the networks (fastest on CUDA)"
    )
    parser.add_argument(
        "--lazy-load", action="store_true", help="load the models on the first request instead of at start-up"
    )
    parser.add_argument(
        "--mcp",
        action="store_true",
        help="also serve the generate and stems endpoints as MCP tools (needs gradio[mcp])",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    slot = PipelineSlot(
        args.variant,
        device=args.device,
        precision=args.precision,
        offload=args.offload,
        weights_dir=args.weights_dir,
        revision=args.revision,
        max_duration=args.max_duration,
        compile=args.compile,
    )
    if not args.lazy_load:
        print(f"Loading {args.variant} (downloads the weights on first run)...", flush=True)
        try:
            with slot.lock:
                _, seconds = slot.get(args.variant)
        except SelvaError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 3 if isinstance(exc, WeightsError) else 2  # the exit codes of the `selva` command
        print(f"Loaded {args.variant} on {slot.pipe.device} in {seconds:.1f} s.", flush=True)
    demo = build_demo(slot)
    demo.launch(
        share=args.share,
        server_name=args.server_name,
        server_port=args.port,
        **launch_options(mcp=args.mcp),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
