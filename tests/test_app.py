"""app.py: the Blocks, the handlers and the `/generate` API, on the tiny Hub with the real pipeline."""

import csv
import gc
import pickle
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import av
import gradio as gr
import numpy as np
import pytest
from media_factory import make_video

import app
from selva.serving import GenerationService

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("app_media") / "clip.mp4", seconds=2.0)


@pytest.fixture
def studio(app_pipe) -> app.Studio:
    return app.Studio(app.PipelineSlot.wrap(app_pipe))


class Progress:
    """Records what the handler reports (gradio's `gr.Progress` is called the same way)."""

    def __init__(self, on_call=None):
        self.calls: list[tuple[float, str]] = []
        self.on_call = on_call

    def __call__(self, fraction, desc=None, **kwargs):
        self.calls.append((fraction, desc))
        if self.on_call is not None:
            self.on_call(fraction, desc)


def generate(studio: app.Studio, video, prompt="dog barking", negative="", *, steps=3, cfg=4.5, seed=-1,
             duration=0, start=0, variant=None, samples=1, progress=None):  # fmt: skip
    return studio.generate(
        None if video is None else str(video),
        prompt,
        negative,
        steps,
        cfg,
        seed,
        duration,
        start,
        variant,
        samples,
        progress=progress or Progress(),
    )


def decoded(path: str | Path) -> tuple[np.ndarray, int]:
    with av.open(str(path)) as f:
        rate = f.streams.audio[0].rate
        return np.concatenate([fr.to_ndarray() for fr in f.decode(audio=0)], axis=-1), rate


def duration_of(path: str | Path) -> float:
    with av.open(str(path)) as f:
        return float(f.duration / av.time_base)


# -- import, command line, layout -------------------------------------------------------------------


def test_importing_the_app_loads_nothing():
    code = (
        "import sys, app; "
        "heavy = [m for m in ('torch', 'selva.pipeline', 'selva.hub', 'transformers') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"importing app.py imported {done.stdout.strip()}"


def test_command_line_options():
    line = (
        "--share --server-name 0.0.0.0 --port 7000 --variant small_44k --device cpu --precision fp32 "
        "--offload offload_to_cpu --weights-dir /w --max-duration 12 --revision abc --lazy-load"
    )
    args = app.build_parser().parse_args(line.split(" "))
    assert args.share and args.lazy_load
    assert (args.server_name, args.port, args.variant, args.device) == ("0.0.0.0", 7000, "small_44k", "cpu")
    assert (args.precision, args.offload, str(args.weights_dir)) == ("fp32", "offload_to_cpu", "/w")
    assert (args.max_duration, args.revision) == (12.0, "abc")
    defaults = app.build_parser().parse_args([])
    assert defaults.variant == "small_16k" and not defaults.share and defaults.port is None


def test_start_up_failure_is_one_clear_line(fresh_tiny_hub, capsys, monkeypatch):
    """A model that cannot load stops `python app.py` before it serves, with the pipeline's message."""

    def no_launch(*args, **kwargs):
        raise AssertionError("the app must not start serving without its model")

    monkeypatch.setattr(gr.Blocks, "launch", no_launch)
    assert app.main(["--variant", "small_61k", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "unknown variant 'small_61k'" in err and "Traceback" not in err

    # Missing weights (offline): exit code 3, as the `selva` command uses.
    generator = fresh_tiny_hub.variants["tiny_16k"].generator_file
    fresh_tiny_hub.remove(generator.repo, generator.path)
    assert app.main(["--variant", "tiny_16k", "--device", "cpu"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "generator_small_16k" in err and "Traceback" not in err


def test_blocks_offer_every_control_with_its_default(app_pipe, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_EXAMPLES_CACHE", str(tmp_path))
    demo = app.build_demo(app_pipe)
    config = demo.get_config_file()
    by_label = {c["props"].get("label"): c["props"] for c in config["components"] if c["props"].get("label")}

    assert by_label["Steps"]["minimum"] == 1 and by_label["Steps"]["maximum"] == 100
    assert by_label["Steps"]["value"] == 25
    cfg = by_label["CFG strength"]
    assert (cfg["minimum"], cfg["maximum"], cfg["step"], cfg["value"]) == (1, 10, 0.1, 4.5)
    assert by_label["Seed"]["value"] == -1
    assert by_label["Duration (s)"]["value"] == 0  # auto
    assert by_label["Start (s)"]["value"] == 0
    assert (by_label["Candidates"]["minimum"], by_label["Candidates"]["maximum"]) == (1, 4)
    variant = by_label["Model variant"]
    assert variant["value"] == "tiny_16k"  # the resident pipeline's
    assert {"small_16k", "small_44k", "tiny_44k"} <= {value for _, value in variant["choices"]}
    assert "Audio downloads (FLAC and WAV)" in by_label and "Info" in by_label
    # the input, one player per candidate, and the stems mix
    assert sum(1 for c in config["components"] if c["type"] == "video") == 2 + app.MAX_CANDIDATES
    level = by_label["Original audio level"]
    assert (level["minimum"], level["maximum"], level["value"]) == (0, 2, 0)

    # One named endpoint; it shares the "gpu" queue slot, one job at a time.
    named = [fn for fn in demo.fns.values() if fn.api_name == "generate"]
    assert len(named) == 1
    assert named[0].concurrency_id == "gpu" and named[0].concurrency_limit == 1
    assert any(d.get("cancels") for d in config["dependencies"])  # the Cancel button
    assert demo.delete_cache == app.DELETE_CACHE
    assert app.launch_options()["allowed_paths"] == [str(app.EXAMPLES_DIR)]

    markdown = [c["props"].get("value", "") for c in config["components"] if c["type"] == "markdown"]
    help_text = " ".join(map(str, markdown))
    assert "which visible source" in help_text and "video encoder" in help_text
    assert "never reaches the video" in help_text


def test_a_lazy_slot_loads_nothing_until_the_first_request(tiny_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_EXAMPLES_CACHE", str(tmp_path))
    slot = app.PipelineSlot("tiny_16k", device="cpu", precision="fp32")
    app.build_demo(slot)
    assert slot.pipe is None
    assert "loads on the first Generate" in app.Studio(slot).describe(None)


# -- the handler, on the real tiny pipeline ----------------------------------------------------------


def test_generate_returns_muxed_videos_audio_files_and_an_info_line(studio, clip):
    progress = Progress()
    *videos, files, info, seed = generate(studio, clip, "dog barking", "wind noise", seed=7, samples=2,
                                          progress=progress)  # fmt: skip

    shown = [v for v in videos if v is not None]
    assert len(shown) == 2 and videos[2:] == [None, None]
    for video in shown:
        assert duration_of(video) == pytest.approx(2.0, abs=0.1)
        with av.open(video) as f:
            assert [s.type for s in f.streams] == ["video", "audio"]
    assert sorted(Path(f).suffix for f in files) == [".flac", ".flac", ".wav", ".wav"]
    for path in files:
        audio, rate = decoded(path)
        assert rate == 16000 and audio.shape[-1] == pytest.approx(32000, abs=1100)

    assert seed == 7
    for part in ("seed 7", "2.00 s from 0.00 s", "2 candidates", "tiny_16k on cpu (fp32)", "flow", "total"):
        assert part in info
    # Stages and Euler steps reach the progress bar.
    descs = [d for _, d in progress.calls]
    assert "Encoding prompts" in descs and "Generating: step 3/3" in descs
    fractions = [f for f, _ in progress.calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_the_seed_shown_reproduces_the_result(studio, clip):
    *_, files, info, seed = generate(studio, clip, seed=-1)
    assert isinstance(seed, int) and seed >= 0 and f"seed {seed}" in info
    *_, again, _, same_seed = generate(studio, clip, seed=seed)
    *_, other, _, _ = generate(studio, clip, seed=seed + 1)
    assert same_seed == seed
    first = decoded(files[0])[0]
    np.testing.assert_array_equal(first, decoded(again[0])[0])
    assert not np.array_equal(first, decoded(other[0])[0])


def test_duration_and_start_pick_the_span(studio, tmp_path):
    long_clip = make_video(tmp_path / "long.mp4", seconds=3.0)
    *videos, _, info, _ = generate(studio, long_clip, duration=1.0, start=1.5)
    assert "1.00 s from 1.50 s" in info
    assert duration_of(videos[0]) == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"video": None}, "Upload a video first"),
        ({"prompt": "   "}, "Type the sound you want"),
        ({"samples": 5}, "Candidates must be a whole number from 1 to 4"),
        ({"seed": 1.5}, "Seed must be a whole number"),
        ({"steps": 0}, "Steps must be a whole number from 1 to 100"),
        ({"start": 5.0}, "past the end of the 2.00 s video"),
        ({"duration": 0.2}, "needs at least 0.64 s"),
        ({"variant": "small_61k"}, "unknown variant 'small_61k'"),
        ({"video": "text"}, "not a media file"),
        ({"video": "image"}, "still image"),
    ],
)
def test_every_failure_is_a_gr_error_with_the_pipelines_message(studio, clip, tmp_path, change, message):
    kwargs = {"video": clip, **change}
    if kwargs["video"] == "text":
        kwargs["video"] = tmp_path / "notes.mp4"
        kwargs["video"].write_text("not a video")
    elif kwargs["video"] == "image":
        from media_factory import make_image

        kwargs["video"] = make_image(tmp_path / "still.png")
    with pytest.raises(gr.Error) as caught:
        generate(studio, **kwargs)
    assert message in caught.value.message
    assert "Traceback" not in caught.value.message
    assert str(tmp_path) not in caught.value.message  # the server's folders stay private
    assert not studio.slot.lock.locked()


def test_a_good_request_after_failed_ones_works(studio, clip, tmp_path):
    for bad in ({"video": None}, {"start": 9.0}, {"steps": 0}):
        with pytest.raises(gr.Error):
            generate(studio, **{"video": clip, **bad})
    *_, info, _ = generate(studio, clip, seed=1)
    assert "seed 1" in info


def test_unexpected_errors_are_reported_without_a_traceback(caplog):
    with pytest.raises(gr.Error) as caught, app.user_errors():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    assert "RuntimeError" in caught.value.message and "server log" in caught.value.message
    assert "illegal memory access" in caplog.text  # the details stay on the server
    with pytest.raises(gr.Error) as caught, app.user_errors():
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert "Out of GPU memory" in caught.value.message and "--offload" in caught.value.message


def test_cancel_stops_a_running_generation_between_steps(studio, clip):
    running = threading.Event()
    progress = Progress(lambda fraction, desc: desc and desc.startswith("Generating") and running.set())
    result: dict = {}

    def work():
        try:
            generate(studio, clip, steps=100, seed=3, progress=progress)
        except gr.Error as exc:
            result["error"] = exc

    worker = threading.Thread(target=work)
    worker.start()
    assert running.wait(60), "the generation never reached the flow steps"
    assert not studio.slot.cancel("someone else")  # another visitor cannot stop this job
    assert studio.slot.cancel("local")
    started = time.perf_counter()
    worker.join(30)
    assert not worker.is_alive()
    assert time.perf_counter() - started < 10
    assert "cancelled" in result["error"].message
    assert not any(desc == "Generating: step 100/100" for _, desc in progress.calls)
    # The next request is not affected by the cancelled one.
    *_, info, _ = generate(studio, clip, seed=2)
    assert "seed 2" in info


def test_switching_variant_loads_lazily_and_keeps_one_model(tiny_hub, clip):
    slot = app.PipelineSlot("tiny_16k", device="cpu", precision="fp32")
    studio = app.Studio(slot)
    progress = Progress()
    *_, info, _ = generate(studio, clip, steps=2, variant="tiny_16k", progress=progress)
    assert "model loaded in" in info and any("Loading tiny_16k" in (d or "") for _, d in progress.calls)
    first = weakref.ref(slot.pipe)
    *_, info, _ = generate(studio, clip, steps=2, variant="tiny_16k")
    assert "model loaded in" not in info and slot.pipe is first()  # loaded once, not per request

    assert "replacing `tiny_16k`" in studio.describe("tiny_44k")
    *_, files, info, _ = generate(studio, clip, steps=2, variant="tiny_44k")
    assert "tiny_44k on cpu" in info and "44.1 kHz" in info
    assert decoded(files[0])[1] == 44100
    gc.collect()
    assert first() is None, "the previous variant's pipeline is still in memory"
    assert "`tiny_44k` is loaded" in studio.describe("tiny_44k")


def test_examples_are_small_synthetic_clips_with_prompts():
    rows = app.load_examples()
    with app.EXAMPLES_CSV.open(newline="") as f:
        assert len(rows) == sum(1 for _ in csv.DictReader(f)) >= 3  # every listed clip exists
    clips = {Path(video) for video, _, _ in rows}
    assert sum(p.stat().st_size for p in app.EXAMPLES_DIR.iterdir()) < 3_000_000
    for path in clips:
        with av.open(str(path)) as f:
            (stream,) = f.streams  # video only: the app makes the sound
            assert stream.codec_context.name == "h264"
            assert 16 / 25 <= float(stream.duration * stream.time_base) <= 10
    assert all(prompt.strip() for _, prompt, _ in rows)


def test_an_example_runs_with_fixed_settings(studio):
    video, prompt, negative = app.load_examples()[0]
    result, files, info = studio.generate_example(video, prompt, negative, progress=Progress())
    assert f"seed {app.EXAMPLE_SEED}" in info and len(files) == 2
    assert duration_of(result) == pytest.approx(5.0, abs=0.1)


def test_on_zerogpu_only_the_model_call_is_wrapped(monkeypatch, app_pipe, clip):
    seen = []

    class Spaces:  # the decorator API of Hugging Face's `spaces` package
        @staticmethod
        def GPU(duration=None):  # noqa: N802 (its name)
            def wrap(fn):
                def run(request, progress, token):
                    # ZeroGPU pickles the arguments into its worker
                    pickle.dumps((request, gr.Progress(), token))
                    seen.append(duration)
                    return fn(request, progress, token)

                return run

            return wrap

    monkeypatch.setattr(app, "spaces", Spaces)
    studio = app.Studio(app.PipelineSlot.wrap(app_pipe))
    *_, info, _ = generate(studio, clip, steps=2, seed=4)
    assert seen == [app.ZEROGPU_SECONDS] and "seed 4" in info

    monkeypatch.setattr(app, "spaces", None)  # elsewhere: no wrapper at all
    assert app.Studio(studio.slot).service._infer.__func__ is GenerationService._infer_here


# -- the API, through gradio_client against the launched app -------------------------------------------


def test_generate_endpoint_from_gradio_client(app_server, clip):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(app_server.url, verbose=False)
    api = client.view_api(print_info=False, return_format="dict")
    assert "/generate" in api["named_endpoints"]
    assert "/cancel" not in api["named_endpoints"]  # UI plumbing stays private

    *videos, files, info = client.predict(
        handle_file(str(clip)), "dog barking", "wind noise", 3, 4.5, 11, 0, 0, "tiny_16k", 1,
        api_name="/generate",
    )  # fmt: skip
    assert "seed 11" in info
    assert duration_of(videos[0]) == pytest.approx(2.0, abs=0.1)  # a local copy of the mp4
    assert videos[1] is None
    assert sorted(Path(f).suffix for f in files) == [".flac", ".wav"]

    # A user error comes back as the pipeline's message; the server keeps serving.
    with pytest.raises(AppError, match="past the end"):
        client.predict(handle_file(str(clip)), "dog barking", "", 3, 4.5, 1, 0, 9.0, "tiny_16k", 1,
                       api_name="/generate")  # fmt: skip
    *_, info = client.predict(handle_file(str(clip)), "dog barking", "", 3, 4.5, 12, 0, 0, "tiny_16k", 1,
                              api_name="/generate")  # fmt: skip
    assert "seed 12" in info
