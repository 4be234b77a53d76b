"""selva.app (page, handlers, results, launch): the Blocks, the handlers, the results, the `/generate` API.

On the tiny Hub with the real pipeline.
"""

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
from cancel_gate import CancelGate
from media_factory import make_video

from selva.app import handlers, launch, page, results, toasts
from selva.serving import MAX_CANDIDATES, GenerationResult, GenerationService, PipelineSlot

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("app_media") / "clip.mp4", seconds=2.0)


@pytest.fixture
def studio(app_pipe) -> handlers.Studio:
    return handlers.Studio(PipelineSlot.wrap(app_pipe))


class Progress:
    """Records what the handler reports (gradio's `gr.Progress` is called the same way)."""

    def __init__(self, on_call=None):
        self.calls: list[tuple[float, str]] = []
        self.on_call = on_call

    def __call__(self, fraction, desc=None, **kwargs):
        self.calls.append((fraction, desc))
        if self.on_call is not None:
            self.on_call(fraction, desc)


def generate(studio: handlers.Studio, video, prompt="dog barking", negative="", *, steps=3, cfg=4.5, seed=-1,
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


def samples(path: str | Path) -> np.ndarray:
    """The decoded audio in [-1, 1], whatever sample format the file holds."""
    audio, _ = decoded(path)
    return audio / np.iinfo(audio.dtype).max if np.issubdtype(audio.dtype, np.integer) else audio


def by_part(updates: list) -> list[list]:
    """`results.show`'s updates as [cards, video players, audio players, actions]."""
    return [updates[k * MAX_CANDIDATES : (k + 1) * MAX_CANDIDATES] for k in range(4)]


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
    args = launch.build_parser().parse_args(line.split(" "))
    assert args.share and args.lazy_load
    assert (args.server_name, args.port, args.variant, args.device) == ("0.0.0.0", 7000, "small_44k", "cpu")
    assert (args.precision, args.offload, str(args.weights_dir)) == ("fp32", "offload_to_cpu", "/w")
    assert (args.max_duration, args.revision) == (12.0, "abc")
    defaults = launch.build_parser().parse_args([])
    assert defaults.variant == "small_16k" and not defaults.share and defaults.port is None


def test_a_bad_option_stops_the_app_before_it_serves(tiny_hub, capsys, monkeypatch):
    def no_launch(*args, **kwargs):
        raise AssertionError("the app must not start serving with a bad option")

    monkeypatch.setattr(gr.Blocks, "launch", no_launch)
    assert launch.main(["--variant", "small_61k", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "unknown variant 'small_61k'" in err and "Traceback" not in err


def test_the_page_serves_while_the_model_loads_and_shows_why_it_failed(fresh_tiny_hub, monkeypatch):
    """Missing weights: the page comes up at once and its status panel says the whole message."""
    import signal

    from selva.app import load_status

    seen = {}

    def fake_launch(demo, **kwargs):  # the page would serve now; the load runs behind it
        seen["launched_while"] = demo.studio.slot.status.state
        demo.loader.join(120)
        seen["status"] = demo.studio.slot.status
        seen["panel"] = load_status.poll(demo.studio.slot)

    monkeypatch.setattr(gr.Blocks, "launch", fake_launch)
    generator = fresh_tiny_hub.variants["tiny_16k"].generator_file
    fresh_tiny_hub.remove(generator.repo, generator.path)
    assert launch.main(["--variant", "tiny_16k", "--device", "cpu"]) == 0
    assert seen["launched_while"] in ("idle", "loading", "failed")
    status = seen["status"]
    assert status.state == "failed" and "generator_small_16k" in status.error
    panel, timer = seen["panel"]
    assert panel["visible"] and "could not load" in panel["value"]
    assert load_status.html.escape(status.error).replace("\n", "<br>") in panel["value"]  # whole
    assert timer.active  # a retry (the next Generate) shows up too
    # SIGTERM now removes the app's outputs (selva.output_store), as Ctrl-C does.
    assert getattr(signal.getsignal(signal.SIGTERM), "__module__", "") == "selva.output_store"


def test_the_status_panel_hides_and_stops_once_the_model_is_ready(studio):
    from selva.app import load_status

    panel, timer = load_status.poll(studio.slot)
    assert studio.slot.status.state == "ready"
    assert not panel["visible"] and not timer.active


def test_blocks_offer_every_control_with_its_default(app_pipe, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_EXAMPLES_CACHE", str(tmp_path))
    demo = page.build_demo(app_pipe)
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
    # the input, one player per candidate, the workspace's mix and the (hidden) `/stems` mix
    assert sum(1 for c in config["components"] if c["type"] == "video") == 3 + MAX_CANDIDATES
    # an audio player (with its waveform) per candidate, the `/stems` mix and stems, a take per workspace slot
    audio = MAX_CANDIDATES + 1 + 4 + 4 * MAX_CANDIDATES
    assert sum(1 for c in config["components"] if c["type"] == "audio") == audio
    source = by_label["Source"]
    assert source["value"] == handlers.SOURCE_VIDEO
    assert [label for label, _ in source["choices"]] == ["Video", "Prompt only"]
    assert "Earlier results (this session)" in by_label and "Kept files" in by_label
    buttons = [c["props"].get("value") for c in config["components"] if c["type"] == "button"]
    # per (hidden) candidate card and per take card of the workspace's sounds
    assert buttons.count("Keep") == buttons.count("Use this seed") == MAX_CANDIDATES + 4 * MAX_CANDIDATES
    assert by_label["Everything in one zip: the mix, the multi-track mp4, each sound's take, the project"]
    level = by_label["Original audio level"]
    assert (level["minimum"], level["maximum"], level["value"]) == (0, 2, 0)

    # One named endpoint; it shares the "gpu" queue slot, one job at a time.
    named = [fn for fn in demo.fns.values() if fn.api_name == "generate"]
    assert len(named) == 1
    assert named[0].concurrency_id == "gpu" and named[0].concurrency_limit == 1
    assert any(d.get("cancels") for d in config["dependencies"])  # the Cancel button
    assert demo.delete_cache == page.DELETE_CACHE
    assert launch.launch_options()["allowed_paths"] == [str(page.EXAMPLES_DIR)]

    markdown = [c["props"].get("value", "") for c in config["components"] if c["type"] == "markdown"]
    help_text = " ".join(map(str, markdown))
    assert "which visible source" in help_text and "video encoder" in help_text
    assert "never reaches the video" in help_text


def test_a_lazy_slot_loads_nothing_until_the_first_request(tiny_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_EXAMPLES_CACHE", str(tmp_path))
    slot = PipelineSlot("tiny_16k", device="cpu", precision="fp32")
    page.build_demo(slot)
    assert slot.pipe is None
    assert "loads on the first Generate" in handlers.Studio(slot).describe(None)


# -- the handler, on the real tiny pipeline ----------------------------------------------------------


def test_generate_returns_muxed_videos_audio_files_and_an_info_line(studio, clip):
    progress = Progress()
    *videos, files, info, result = generate(studio, clip, "dog barking", "wind noise", seed=7, samples=2,
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
        assert rate == 48000 and audio.shape[-1] == pytest.approx(96000, abs=3300)  # delivered at 48 kHz

    assert isinstance(result, GenerationResult) and result.seed == 7  # kept in the page, not sent to the API
    for part in ("seed 7", "2.00 s from 0.00 s", "2 candidates", "tiny_16k on cpu (fp32)", "flow", "total"):
        assert part in info
    # Stages and Euler steps reach the progress bar.
    descs = [d for _, d in progress.calls]
    assert "Encoding prompts" in descs and "Generating: step 3/3" in descs
    fractions = [f for f, _ in progress.calls if f is not None]  # None: a stage's text alone
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_the_seed_shown_reproduces_the_result(studio, clip):
    *_, files, info, result = generate(studio, clip, seed=-1)
    seed = result.seed
    assert isinstance(seed, int) and seed >= 0 and f"seed {seed}" in info
    *_, again, _, same = generate(studio, clip, seed=seed)
    *_, other, _, _ = generate(studio, clip, seed=seed + 1)
    assert same.seed == seed
    first = decoded(files[0])[0]
    np.testing.assert_array_equal(first, decoded(again[0])[0])
    assert not np.array_equal(first, decoded(other[0])[0])


def test_duration_and_start_pick_the_span(studio, tmp_path):
    long_clip = make_video(tmp_path / "long.mp4", seconds=3.0)
    *videos, _, info, _ = generate(studio, long_clip, duration=1.0, start=1.5)
    assert "1.00 s from 1.50 s" in info
    assert duration_of(videos[0]) == pytest.approx(1.0, abs=0.1)


# -- Source: sound for a video, or from the prompt alone ----------------------------------------------


def test_prompt_only_makes_audio_players_and_no_video(studio):
    progress = Progress()
    *videos, files, info, result = generate(studio, None, "rain on a tin roof", seed=3, duration=2.5,
                                            samples=2, progress=progress)  # fmt: skip
    assert videos == [None] * MAX_CANDIDATES  # the API's shape: no mp4 without a video
    assert sorted(Path(f).suffix for f in files) == [".flac", ".flac", ".wav", ".wav"]
    for path in files:
        audio, rate = decoded(path)
        assert audio.shape[-1] == 120000 and rate == 48000  # exactly 2.5 s, delivered at 48 kHz
    assert "2.50 s from the prompt alone" in info and "seed 3" in info
    assert result.source is None
    assert result.label == "rain on a tin roof · seed 3 · 2.50 s from the prompt alone · 2 candidates"

    # The page shows one audio player per candidate, labelled with its seed, and no video player.
    result, past, listing, *updates = results.present(result, [], *videos, files)
    cards, players, audios, actions = by_part(updates)
    assert [c["visible"] for c in cards] == [True, True, False, False]
    assert [p.get("visible") for p in players[:2]] == [False, False]
    assert [a["label"] for a in audios[:2]] == ["Candidate 1 · seed 3", "Candidate 2 · seed 4"]
    assert [a["value"] for a in audios[:2]] == [result.candidate_audio(k)[1] for k in range(2)]
    assert [a["visible"] for a in actions] == [True, True, False, False]


def test_the_source_choice_is_checked_before_generate():
    assert handlers.check_source("prompt", "/up/clip.mp4", 8.0) is None  # a hidden upload is not sent
    assert handlers.check_source("video", "/up/clip.mp4", 0) == gr.update()
    with pytest.raises(gr.Error, match="Prompt only makes as many seconds of sound as Duration says"):
        handlers.check_source("prompt", None, 0)
    # The API alone would make sound from the prompt here; the page asks for the forgotten upload.
    with pytest.raises(gr.Error, match="Upload a video first.*Source: Prompt only"):
        handlers.check_source("video", None, 5.0)


def test_stems_ask_for_a_video_even_in_prompt_only(studio):
    rows = ["dog barking", "", 1.0, *["", "", 1.0] * 3]
    with pytest.raises(gr.Error, match="Stems need a video"):
        studio.generate_stems(None, *rows, 2, 4.5, 1, 8.0, 0, None, 0, progress=None)


def test_switching_source_keeps_each_sources_upload_and_duration():
    video, note, duration, start, level, kept = page.switch_source(
        "prompt", "/up/clip.mp4", 2.0, {}, max_duration=600
    )
    assert (video["visible"], video["value"], note["visible"], start["visible"], level["visible"]) == (
        False, None, True, False, False,
    )  # fmt: skip
    assert duration["value"] == page.PROMPT_ONLY_SECONDS and "needed" in duration["info"]
    video, note, duration, *_, kept = page.switch_source("video", None, 12.0, kept, max_duration=600)
    assert (video["visible"], video["value"], note["visible"]) == (True, "/up/clip.mp4", False)
    assert duration["value"] == 2.0  # Video's own last Duration
    assert "0 = auto" in duration["info"]
    *_, duration, _, _, kept = page.switch_source("prompt", "/up/clip.mp4", 2.0, kept, max_duration=600)
    assert duration["value"] == 12.0  # Prompt only's own last Duration

    # An example fills the Video box: the page goes back to Video, without the upload kept aside.
    source, video, note, duration, *_, kept = page.source_for_example("prompt", 12.0, kept, max_duration=600)
    assert (source, video["visible"], "value" in video, duration["value"]) == ("video", True, False, 2.0)
    assert "video" not in kept
    assert page.source_for_example("video", 3.0, kept, max_duration=600)[:6] == (gr.update(),) * 6


# -- candidates, Keep, Use this seed, earlier results -------------------------------------------------


def test_each_candidate_has_its_seed_and_can_be_kept_or_made_again_alone(studio, clip, tmp_path):
    *videos, files, info, result = generate(studio, clip, seed=40, samples=3)
    # Stand-ins for gradio's served copies: the same names in another folder.
    served = tmp_path / "served"
    served.mkdir()
    copies = [str(served / Path(f).name) for f in [*result.videos, *files]]
    result, past, listing, *updates = results.present(result, [], *copies[:3], None, copies[3:])
    assert all(path.startswith(str(served)) for path in [*result.videos, *result.audio_files])
    cards, players, audios, actions = by_part(updates)
    assert [c["visible"] for c in cards] == [True, True, True, False]
    assert [p["label"] for p in players[:3]] == [f"Candidate {k + 1} · seed {40 + k}" for k in range(3)]
    assert all(p["visible"] and "value" not in p for p in players[:3])  # the run set the videos already
    assert [a["label"] for a in audios[:3]] == [p["label"] for p in players[:3]]
    assert listing["choices"] == [(f"1. {result.label}", 0)] and listing["value"] == 0

    kept, text, kept_files = results.keep(result, [], 1)
    assert [t.seed for t in kept] == [41] and "dog barking · seed 41 · 2.00 s of clip.mp4" in text
    assert [Path(f).suffix for f in kept_files["value"]] == [".mp4", ".flac", ".wav"]
    assert all("_seed41." in Path(f).name for f in kept_files["value"])  # candidate 2's own files
    assert results.keep(result, kept, 1)[0] == kept  # kept once
    kept, text, _ = results.keep(result, kept, 0)
    assert [t.seed for t in kept] == [41, 40] and text.index("seed 41") < text.index("seed 40")

    assert results.use_seed(result, 2) == (42, 1)
    *_, alone_files, _, alone = generate(studio, clip, seed=42, samples=1)
    assert alone.seed == 42
    original = next(f for f in files if f.endswith("_seed42.flac"))
    assert Path(alone_files[0]).name == Path(original).name  # made alone, named the same
    # Candidate 3, made alone (batched matmuls round a little differently, as in test_pipeline.py).
    np.testing.assert_allclose(samples(alone_files[0]), samples(original), atol=5e-3, rtol=0)

    # The earlier result comes back whole: cards, players, files and info.
    alone, past, listing, *_ = results.present(alone, past, *[None] * MAX_CANDIDATES, alone_files)
    assert [label for label, _ in listing["choices"]] == [f"2. {alone.label}", f"1. {result.label}"]
    back, *updates, back_files, back_info = results.recall(past, 1)
    assert back == result and back_info == info and back_files == list(result.audio_files)
    players = by_part(updates)[1]
    assert [p["value"] for p in players[:3]] == list(result.videos) and players[3]["value"] is None
    assert results.recall(past, 7)[0] is None


# -- a whole 30 s clip ------------------------------------------------------------------------------------


def test_a_30_second_clip_end_to_end(studio, tmp_path):
    """30 s through the handler: overlapping windows on the progress bar, files as long as the video."""
    long_clip = make_video(tmp_path / "clip30.mp4", seconds=30.0, size=(64, 48), gop=25)
    with av.open(str(long_clip)) as f:
        stream = f.streams.video[0]
        seconds = float(stream.duration * stream.time_base)
    assert seconds == pytest.approx(30.0, abs=0.001)
    progress = Progress()
    *videos, files, info, result = generate(studio, long_clip, steps=2, seed=5, progress=progress)
    assert result.duration == pytest.approx(seconds, abs=0.04)
    with av.open(videos[0]) as f:
        video_stream, audio_stream = f.streams.video[0], f.streams.audio[0]
        assert float(video_stream.duration * video_stream.time_base) == pytest.approx(seconds, abs=0.04)
        samples = sum(frame.samples for frame in f.decode(audio_stream))
        assert samples / audio_stream.rate == pytest.approx(seconds, abs=0.04)
    for path in files:
        audio, rate = decoded(path)
        assert audio.shape[-1] / rate == pytest.approx(seconds, abs=0.04)
    windows = [d for _, d in progress.calls if d and d.startswith("Generating: window")]
    assert windows and all("/" in d and "step" in d for d in windows)
    assert windows[-1].endswith("step 2/2")


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


def test_errors_carry_a_title_and_the_whole_message():
    from selva.spec import MediaError, WeightsError

    message = "tiny_16k's files are missing: put it at <weights_dir>/generator.pt, or run `selva download`"
    with pytest.raises(gr.Error) as caught, handlers.user_errors():
        raise WeightsError(message)
    assert caught.value.title == "Model weights missing" and caught.value.message == message
    # The page's toast is the titled log message (gradio 6 titles every error toast "Error");
    # the error itself fails the event and reaches API callers, unseen on the page.
    assert caught.value.visible is False
    toast = toasts.toast_text(message, "Model weights missing")
    assert toast.startswith("<strong>Model weights missing</strong><br>")
    assert "put it at &lt;weights_dir&gt;/generator.pt, or run `selva download`" in toast  # text, no tag
    with pytest.raises(gr.Error) as caught, handlers.user_errors():
        raise MediaError("clip.mp4 has no video stream")
    assert caught.value.title == "Video not usable"
    with pytest.raises(gr.Error) as caught:
        handlers.check_source("video", None, 0)
    assert caught.value.title == "No video"


def test_a_file_that_is_no_video_is_refused_at_upload_without_an_errno(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video")
    video, duration, start = handlers.check_upload(str(fake), 0, max_duration=600)
    assert video["value"] is None  # the box is cleared
    with pytest.raises(gr.Error) as caught:
        generate(handlers.Studio(PipelineSlot("tiny_16k", device="cpu")), fake)
    assert "not a media file" in caught.value.message and "Errno" not in caught.value.message
    assert str(tmp_path) not in caught.value.message


def test_an_upload_fits_the_span_and_a_longer_clip_is_said(clip):
    video, duration, start = handlers.check_upload(str(clip), 5.0, max_duration=600)
    assert duration["maximum"] == pytest.approx(2.0) and duration["value"] == pytest.approx(2.0)
    assert start["maximum"] == pytest.approx(2.0 - 0.64)
    with pytest.warns(UserWarning, match="2 s long; one request covers at most 1 s"):
        _, duration, _ = handlers.check_upload(str(clip), 0, max_duration=1.0)
    assert duration["maximum"] == 1.0 and duration["value"] == 0


def test_the_info_line_says_when_the_span_was_capped(app_pipe, clip, monkeypatch):
    monkeypatch.setattr(app_pipe, "max_duration", 1.0)  # as `--max-duration 1` would load it
    capped = handlers.Studio(PipelineSlot.wrap(app_pipe))
    *_, info, result = generate(capped, clip, seed=1)
    assert result.duration == pytest.approx(1.0, abs=0.05)
    assert "span capped at 1 s of the 2.00 s left in the clip" in info
    *_, info, _ = generate(capped, clip, seed=1, start=1.2)  # what is left fits: nothing to say
    assert "capped" not in info


def test_progress_percent_follows_the_steps(studio, clip):
    progress = Progress()
    generate(studio, clip, steps=4, seed=1, progress=progress)
    steps = [(f, d) for f, d in progress.calls if d and d.startswith("Generating: step")]
    assert steps == [(k / 4, f"Generating: step {k}/4") for k in range(1, 5)]
    stages = [f for f, d in progress.calls if d in ("Reading video", "Decoding audio", "Vocoding")]
    assert stages and all(f is None for f in stages)  # stages: their text, no percentage


def test_generate_shows_its_step_while_running_and_cancel_only_meanwhile(studio, clip):
    from selva.app import running

    run, stop, timer = running.busy()
    assert run["interactive"] is False and stop["visible"] is True and timer.active
    labels = []
    progress = Progress(lambda fraction, desc: labels.append(studio.running_label(None)))
    generate(studio, clip, steps=3, seed=1, progress=progress)
    assert {"value": "Generating: step 2/3", "__type__": "update"} in labels
    assert studio.running_label(None) == {"__type__": "update"}  # after the run: no change
    run, stop, timer = running.idle()
    assert run["interactive"] is True and run["value"] == "Generate" and not stop["visible"]
    assert not timer.active


def test_the_mcp_tools_state_the_largest_data_url():
    """The MCP transport answers 413 to bodies over its limit: the tools say how much video fits."""
    import base64
    import json

    from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE

    for tool in (handlers.Studio.generate, handlers.Studio.generate_stems):
        assert "at most about 3 MB of video: MCP refuses request bodies over 4 MiB" in tool.__doc__
    assert DEFAULT_MAX_REQUEST_BODY_SIZE == 4 * 1024 * 1024
    url = "data:video/mp4;base64," + base64.b64encode(bytes(3_000_000)).decode("ascii")
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"arguments": {"video": url}}}
    assert len(json.dumps(call)) < DEFAULT_MAX_REQUEST_BODY_SIZE  # 3 MB fits, with room for the rest


def test_unexpected_errors_are_reported_without_a_traceback(caplog):
    with pytest.raises(gr.Error) as caught, handlers.user_errors():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    assert "RuntimeError" in caught.value.message and "server log" in caught.value.message
    assert "illegal memory access" in caplog.text  # the details stay on the server
    with pytest.raises(gr.Error) as caught, handlers.user_errors():
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
    slot = PipelineSlot("tiny_16k", device="cpu", precision="fp32")
    studio = handlers.Studio(slot)
    progress = Progress()
    *_, info, _ = generate(studio, clip, steps=2, variant="tiny_16k", progress=progress)
    assert "model loaded in" in info and any("Loading tiny_16k" in (d or "") for _, d in progress.calls)
    first = weakref.ref(slot.pipe)
    *_, info, _ = generate(studio, clip, steps=2, variant="tiny_16k")
    assert "model loaded in" not in info and slot.pipe is first()  # loaded once, not per request

    assert "replacing `tiny_16k`" in studio.describe("tiny_44k")
    *_, files, info, _ = generate(studio, clip, steps=2, variant="tiny_44k")
    assert "tiny_44k on cpu" in info and "44.1 kHz" in info
    assert decoded(files[0])[1] == 48000  # delivered at 48 kHz; the info line names the model's 44.1 kHz
    gc.collect()
    assert first() is None, "the previous variant's pipeline is still in memory"
    assert "`tiny_44k` is loaded" in studio.describe("tiny_44k")


def test_examples_are_small_synthetic_clips_with_prompts():
    rows = page.load_examples()
    with page.EXAMPLES_CSV.open(newline="") as f:
        assert len(rows) == sum(1 for _ in csv.DictReader(f)) >= 3  # every listed clip exists
    clips = {Path(video) for video, _, _ in rows}
    assert sum(p.stat().st_size for p in page.EXAMPLES_DIR.iterdir()) < 3_000_000
    for path in clips:
        with av.open(str(path)) as f:
            (stream,) = f.streams  # video only: the app makes the sound
            assert stream.codec_context.name == "h264"
            assert 16 / 25 <= float(stream.duration * stream.time_base) <= 10
    assert all(prompt.strip() for _, prompt, _ in rows)


def test_an_example_runs_with_fixed_settings(studio):
    video, prompt, negative = page.load_examples()[0]
    result, audio, files, info = studio.generate_example(video, prompt, negative, progress=Progress())
    assert f"seed {handlers.EXAMPLE_SEED}" in info and len(files) == 2
    assert audio in files and audio.endswith(".wav")  # the first card's waveform player
    assert duration_of(result) == pytest.approx(5.0, abs=0.1)


def test_on_zerogpu_only_the_model_call_is_wrapped(monkeypatch, app_pipe, clip):
    seen = []

    class Spaces:  # the decorator API of Hugging Face's `spaces` package
        @staticmethod
        def GPU(duration=None):  # noqa: N802 (its name)
            def wrap(fn):
                def run(project, folder, progress, token, *plain):
                    # ZeroGPU pickles the arguments into its worker (gradio's Progress is picklable)
                    progress.progress = gr.Progress()
                    pickle.dumps((project, folder, progress, token, *plain))
                    seen.append(duration)
                    return fn(project, folder, progress, token, *plain)

                return run

            return wrap

    monkeypatch.setattr(handlers, "spaces", Spaces)
    studio = handlers.Studio(PipelineSlot.wrap(app_pipe))
    *_, info, _ = generate(studio, clip, steps=2, seed=4)
    assert seen == [handlers.ZEROGPU_SECONDS] and "seed 4" in info

    monkeypatch.setattr(handlers, "spaces", None)  # elsewhere: no wrapper at all
    assert handlers.Studio(studio.slot).service._render.__func__ is GenerationService._render_here


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

    # No video and a duration: sound from the prompt alone, the same outputs (no mp4 at all).
    *videos, files, info = client.predict(
        video=None, prompt="rain", negative_prompt="", duration=2.0, steps=2, seed=13, api_name="/generate"
    )
    assert videos == [None] * MAX_CANDIDATES and "2.00 s from the prompt alone" in info
    assert sorted(Path(f).suffix for f in files) == [".flac", ".wav"]
    assert decoded(files[0])[0].shape[-1] == 96000  # 2 s delivered at 48 kHz


def test_cancel_through_the_api_stops_the_job_between_steps(app_server, clip, monkeypatch, caplog):
    """gradio_client's `job.cancel()` stops the run after its current flow step, as the page's Cancel:
    the cancel returns once the pipeline is free, no files are written, the client sees a clean cancel."""
    from concurrent.futures import CancelledError

    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    from gradio_client.utils import Status

    caplog.set_level("INFO", logger="selva.app")
    # The first flow step waits until the job's token is cancelled, so the cancel always lands
    # while the job runs, however fast the tiny model is.
    gate = CancelGate(monkeypatch)
    running, steps = gate.running, gate.steps
    studio = app_server.demo.studio
    written = set(studio.service.outputs.root.iterdir())

    client = Client(app_server.url, verbose=False)
    job = client.submit(handle_file(str(clip)), "dog barking", "", 100, 4.5, 3, 0, 0, "tiny_16k", 1,
                        api_name="/generate")  # fmt: skip
    assert running.wait(120), "the job never reached its flow steps"
    job.cancel()  # answered once the server has stopped the job
    assert steps == [0]  # stopped before its second step
    assert not studio.slot.lock.locked()
    assert "generation cancelled by the user" in caplog.text
    assert set(studio.service.outputs.root.iterdir()) == written  # a cancelled job writes nothing
    assert job.status().code == Status.CANCELLED
    try:  # the client's own cancel, or the server's "cancelled", whichever it reads first
        job.result(timeout=120)
        pytest.fail("a cancelled job returned a result")
    except CancelledError:
        pass
    except AppError as exc:
        assert "Generation cancelled" in str(exc)

    monkeypatch.undo()
    *_, info = client.predict(handle_file(str(clip)), "dog barking", "", 2, 4.5, 14, 0, 0, "tiny_16k", 1,
                              api_name="/generate")  # fmt: skip
    assert "seed 14" in info  # the next request runs as usual


def test_a_client_that_disconnects_has_its_job_stopped(app_server, clip, monkeypatch):
    """An API client that goes away (its heartbeat connection closes, as when its process ends) has its
    running job stopped after the current step: the page's unload event, for that client's session."""
    from gradio_client import Client, handle_file

    gate = CancelGate(monkeypatch)  # the first step waits for the cancel, as above
    running, cancelled, steps = gate.running, gate.cancelled, gate.steps
    slot = app_server.demo.studio.slot
    client = Client(app_server.url, verbose=False)
    client.submit(handle_file(str(clip)), "dog barking", "", 100, 4.5, 3, 0, 0, "tiny_16k", 1,
                  api_name="/generate")  # fmt: skip
    assert running.wait(120), "the job never reached its flow steps"
    client.close()  # ends its heartbeat (at the next beat): the server sees the client gone
    assert cancelled.wait(120)
    with slot.lock:  # taken once the job has let go of the pipeline
        assert steps == [0]  # stopped before its second step
