"""selva/serving.py without gradio: requests, the resident pipeline and its swaps (UI: test_app.py)."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from media_factory import make_video

from selva.serving import GenerationService, OutputStore, PipelineSlot, parse_request
from selva.slot import DOWNLOAD_SHARE
from selva.spec import GenerationCancelled, InputError, WeightsError, is_out_of_memory

ROOT = Path(__file__).resolve().parents[1]


def test_importing_serving_loads_neither_gradio_nor_a_model():
    code = (
        "import sys, selva.serving; "
        "heavy = [m for m in ('gradio', 'torch', 'selva.pipeline', 'selva.hub') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"importing selva.serving imported {done.stdout.strip()}"


@pytest.mark.parametrize("module", ["selva.spec", "selva.variants", "selva.cli", "app"])
def test_the_spec_the_registry_and_the_front_ends_import_without_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False", f"importing {module} imported torch"


def test_form_values_become_a_plain_request():
    req = parse_request("/up/clip.mp4", "  dog barking ", None, 30.0, None, -1, 0, None, "", 2.0)
    assert (req.video, req.prompt, req.negative_prompt) == ("/up/clip.mp4", "dog barking", "")
    assert (req.steps, req.cfg_strength, req.num_samples) == (30, 4.5, 2)
    assert req.seed is None and req.duration is None and req.start == 0.0 and req.variant is None
    req = parse_request("clip.mp4", "rain", "wind", "", 3.0, 7.0, 2.5, 1, "tiny_44k", None)
    assert (req.steps, req.seed, req.duration, req.start, req.variant, req.num_samples) == (
        25, 7, 2.5, 1.0, "tiny_44k", 1,
    )  # fmt: skip
    with pytest.raises(InputError, match="Steps must be a whole number, got 'many'"):
        parse_request("clip.mp4", "rain", "", "many", 4.5, -1, 0, 0, None, 1)


def test_out_of_memory_is_recognised_by_type_or_message():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"))
    assert not is_out_of_memory(RuntimeError("CUDA error: an illegal memory access was encountered"))


def test_a_variant_with_missing_weights_keeps_the_resident_pipeline(fresh_tiny_hub, tmp_path):
    """Offline with the next variant's generator gone: the switch fails before the working model is freed."""
    slot = PipelineSlot("tiny_16k", device="cpu", precision="fp32")
    service = GenerationService(slot)
    clip = str(make_video(tmp_path / "clip.mp4", seconds=1.0))
    first = service.run(parse_request(clip, "dog barking", "", 2, 4.5, 5, 0, 0, None, 1))
    resident = slot.pipe
    assert resident is not None and "model loaded in" in first.info

    generator = fresh_tiny_hub.variants["tiny_44k"].generator_file
    fresh_tiny_hub.remove(generator.repo, generator.path)
    with pytest.raises(WeightsError) as caught:
        service.run(parse_request(clip, "dog barking", "", 2, 4.5, 5, 0, 0, "tiny_44k", 1))
    message = str(caught.value)
    assert "tiny_44k: 1 file(s) missing" in message and Path(generator.path).name in message
    assert "HF_HUB_OFFLINE is set" in message
    assert slot.pipe is resident and not slot.lock.locked()

    # The next request is served by the same pipeline object: no reload, same result.
    again = service.run(parse_request(clip, "dog barking", "", 2, 4.5, 5, 0, 0, None, 1))
    assert slot.pipe is resident and "model loaded in" not in again.info
    assert "tiny_16k on cpu (fp32)" in again.info


# -- two visitors, cancelling, output folders ------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tiny_hub):
    slot = PipelineSlot("tiny_16k", device="cpu", precision="fp32")
    return GenerationService(slot)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return str(make_video(tmp_path_factory.mktemp("serving") / "clip.mp4", seconds=1.0))


class Visitor:
    """One visitor's request on its own thread; its progress calls are kept and can block on a gate."""

    def __init__(self, service, request, session, *, hold_at=None):
        self.service, self.request, self.session = service, request, session
        self.calls: list[str] = []
        self.reached = threading.Event()  # set when progress says `hold_at`
        self.gate = threading.Event()  # ... which then waits for this
        self.hold_at = hold_at
        self.result = self.error = None
        self.thread = threading.Thread(target=self._run)

    def progress(self, fraction, desc=""):
        self.calls.append(desc)
        if self.hold_at is not None and desc.startswith(self.hold_at) and not self.reached.is_set():
            self.reached.set()
            assert self.gate.wait(60), "the test never opened the gate"

    def _run(self):
        try:
            self.result = self.service.run(self.request, self.progress, session=self.session)
        except Exception as exc:  # checked by the test
            self.error = exc

    def start(self):
        self.thread.start()
        return self

    def join(self):
        self.thread.join(120)
        assert not self.thread.is_alive()


def _wait_for(condition, what):
    for _ in range(600):  # polling, not timing: each wait is short and the bound only stops a hang
        if condition():
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_visitors_at_once_each_get_their_own_result(service, clip):
    first = Visitor(service, parse_request(clip, "dog barking", "", 2, 4.5, 11, 0, 0, None, 1), "a",
                    hold_at="Generating").start()  # fmt: skip
    assert first.reached.wait(60)  # the first job holds the pipeline, mid-flow
    second = Visitor(service, parse_request(clip, "rain", "", 2, 4.5, 22, 0, 0, None, 2), "b").start()
    _wait_for(lambda: "Waiting for the job in progress to finish" in second.calls, "the second to queue")
    assert service.slot.lock.locked() and not any(c.startswith("Generating") for c in second.calls)
    first.gate.set()
    first.join()
    second.join()
    assert first.error is None and second.error is None
    assert first.result.seed == 11 and len(first.result.videos) == 1 and "rain" not in first.result.videos[0]
    assert second.result.seed == 22 and len(second.result.videos) == 2
    assert ["seed22" in second.result.videos[0], "seed23" in second.result.videos[1]] == [True, True]
    assert all("rain" in v for v in second.result.videos)
    folders = {Path(v).parent for v in first.result.videos}
    assert folders.isdisjoint(Path(v).parent for v in second.result.videos)


def test_a_cancel_while_waiting_stops_the_job_before_it_starts(service, clip):
    first = Visitor(service, parse_request(clip, "dog barking", "", 2, 4.5, 1, 0, 0, None, 1), "a",
                    hold_at="Generating").start()  # fmt: skip
    assert first.reached.wait(60)
    second = Visitor(service, parse_request(clip, "rain", "", 2, 4.5, 2, 0, 0, None, 1), "b").start()
    _wait_for(lambda: "Waiting for the job in progress to finish" in second.calls, "the second to queue")
    assert not service.slot.cancel("nobody")  # another visitor's session cancels nothing
    assert service.slot.cancel("b")
    first.gate.set()
    first.join()
    second.join()
    assert first.error is None and first.result.seed == 1  # the running job was not touched
    assert isinstance(second.error, GenerationCancelled)
    assert not any(c.startswith(("Generating", "Reading video")) for c in second.calls)
    assert not service.slot.cancel("b")  # nothing of b's is left to cancel


def test_a_cancel_after_the_flow_keeps_the_finished_job(service, clip):
    visitor = Visitor(service, parse_request(clip, "dog barking", "", 2, 4.5, 3, 0, 0, None, 1), "a",
                      hold_at="Vocoding").start()  # fmt: skip
    assert visitor.reached.wait(60)
    assert service.slot.cancel("a")
    visitor.gate.set()
    visitor.join()
    assert visitor.error is None and Path(visitor.result.videos[0]).is_file()


def test_old_output_folders_are_pruned(tmp_path):
    store = OutputStore(keep_seconds=600)
    old, recent = store.new_folder(), store.new_folder()
    (old / "a.flac").write_bytes(b"x")
    long_ago = time.time() - 3600
    os.utime(old, (long_ago, long_ago))
    newest = store.new_folder()
    assert not old.exists() and recent.is_dir() and newest.is_dir()
    assert sorted(p.name for p in store.root.iterdir()) == sorted([recent.name, newest.name])


# -- loading: what a page shows while the weights download ---------------------------------------------


def test_loading_reports_the_download_then_ready(tmp_path, fixtures_dir, monkeypatch):
    from tiny_hub import build_tiny_hub

    hub = build_tiny_hub(tmp_path, fixtures_dir, repos=())  # an empty cache: the first start
    hub.serve(monkeypatch)
    slot = PipelineSlot("tiny_16k", device="cpu", precision="fp32")
    assert slot.status.state == "idle"
    reports = []
    with slot.lock:
        slot.get(None, lambda fraction, desc: reports.append((fraction, desc, slot.status)))
    downloads = [r for r in reports if r[1].startswith("Downloading tiny_16k: ")]
    assert downloads and all(status.state == "loading" and status.download for *_, status in downloads)
    fractions = [f for f, *_ in reports]
    assert fractions == sorted(fractions) and max(f for f, *_ in downloads) == DOWNLOAD_SHARE
    last = downloads[-1][2].download
    assert last.files_done == last.file_count > 1 and last.bytes_done == last.total_bytes
    assert reports[-1][1] == "Loading tiny_16k into memory"
    assert slot.status.state == "ready" and slot.status.variant == "tiny_16k" and slot.status.error is None


def test_a_background_load_without_network_shows_the_clear_error(tmp_path, fixtures_dir, monkeypatch):
    import socket

    from huggingface_hub import constants
    from tiny_hub import build_tiny_hub

    hub = build_tiny_hub(tmp_path, fixtures_dir, repos=())
    hub.activate(monkeypatch, offline=False)
    with socket.socket() as s:  # a port where nothing listens: connections are refused at once
        s.bind(("127.0.0.1", 0))
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{s.getsockname()[1]}")
    slot = PipelineSlot("tiny_16k", device="cpu", precision="fp32")
    slot.load_in_background().join(timeout=120)  # a bound for a broken build, not a wait
    status = slot.status
    assert status.state == "failed" and slot.pipe is None and not slot.lock.locked()
    assert "there is no network" in status.error
    assert "python -m selva download --variant tiny_16k" in status.error


# -- scores and delivery through the service (the app's and MCP's road) ------------------------------------


@pytest.fixture(scope="module")
def clap(tmp_path_factory, tiny_hub) -> str:
    from tiny_clap import write_tiny_clap

    return str(write_tiny_clap(tmp_path_factory.mktemp("clap") / "hub"))


def test_scores_come_back_with_the_result_and_equal_the_scorers_own(service, clip, clap):
    from selva import scoring
    from selva.render import read_take

    scored = GenerationService(service.slot, service.outputs, scorer=clap)
    req = parse_request(clip, "dog barking", "rain", 2, 4.5, 21, 0, 0, None, 3)
    result = scored.run(req, score=True)
    assert result.score_warning is None
    rows = result.scores
    assert [(r.sound, r.take, r.seed) for r in rows] == [(0, 0, 21), (0, 1, 22), (0, 2, 23)]
    scorer = scoring.load_scorer(clap, device="cpu")  # the resident one: loaded by the run, not again
    takes = [read_take(t.audio) for t in result.project.sounds[0].takes]
    want = scorer.score_takes(takes, 16_000, "dog barking", negative_prompt="rain")
    for row, expected in zip(rows, want, strict=True):
        assert (row.agreement, row.leakage, row.score) == pytest.approx(
            (expected.agreement, expected.leakage, expected.score), abs=1e-5
        )
        assert row.leaked_into == "rain"
    best = max(range(3), key=lambda i: (want[i].score, -i))
    assert [r.best for r in rows] == [i == best for i in range(3)]
    assert [r.chosen for r in rows] == [True, False, False]  # scoring never changes the user's choice
    assert "Scores (CLAP: a hint" in result.info and f"seed {21 + best}: match " in result.info
    assert rows[0].to_dict()["seed"] == 21
    # Not asked: no scores, no scorer time.
    plain = scored.run(req)
    assert plain.scores == () and "Scores" not in plain.info and plain.score_warning is None


def test_a_missing_clap_says_why_in_the_result_and_the_generation_completes(service, clip):
    # A checkpoint no test loads: scorers stay resident per process, and test_scoring.py keeps a
    # tiny CLAP under the default id.
    absent = "laion/clap-htsat-unfused"
    missing = GenerationService(service.slot, service.outputs, scorer=absent)
    result = missing.run(parse_request(clip, "dog barking", "", 2, 4.5, 5, 0, 0, None, 2), score=True)
    assert result.scores == () and result.count == 2
    assert all(Path(f).is_file() for f in (*result.videos, *result.audio_files))
    warning = result.score_warning
    assert warning.startswith("not scored: ") and absent in warning
    assert "HF_HUB_OFFLINE=1" in warning and "model.safetensors" in warning
    assert f"Scores: {warning}" in result.info


def test_a_projects_and_stems_takes_are_scored_against_the_other_sounds(service, clip, clap):
    from selva.project import Project, Sound
    from selva.render import draft_takes
    from selva.stems import Stem

    scored = GenerationService(service.slot, service.outputs, scorer=clap)
    project = Project(sounds=(Sound("dog barking"), Sound("car engine", "rain")), video=clip)
    result = scored.render_project(draft_takes(project, seed=5, count=2, steps=2), score=True)
    rows = result.scores
    assert [(r.sound, r.seed) for r in rows] == [(0, 5), (0, 6), (1, 7), (1, 8)]
    assert {r.leaked_into for r in rows if r.sound == 0} == {"car engine"}
    assert {r.leaked_into for r in rows if r.sound == 1} <= {"dog barking", "rain"}
    assert sum(r.best for r in rows) == 2 and "sound 2 seed 7: match " in result.info
    assert [t.score is not None for s in result.project.sounds for t in s.takes] == [True] * 4

    base = parse_request(clip, "x", "", 2, 4.5, 11, 0, 0, None, 1)
    stems = scored.run_stems(base, [Stem("dog barking"), Stem("car engine")], score=True)
    assert [(r.sound, r.seed, r.leaked_into) for r in stems.scores] == [
        (0, 11, "car engine"), (1, 12, "dog barking"),
    ]  # fmt: skip


def test_delivered_files_are_48_khz_by_default_and_the_models_rate_on_request(service, clip):
    import av

    from selva.spec import InputError

    def rate_and_samples(path):
        with av.open(path) as f:
            return f.streams.audio[0].rate, sum(fr.samples for fr in f.decode(audio=0))

    req = parse_request(clip, "dog barking", "", 2, 4.5, 5, 0, 0, None, 1)
    flac, wav = service.run(req).candidate_audio(0)
    assert rate_and_samples(flac) == rate_and_samples(wav) == (48_000, 48_000)  # 1 s
    flac, _ = service.run(req, sample_rate="model").candidate_audio(0)
    assert rate_and_samples(flac) == (16_000, 16_000)  # tiny_16k's own rate
    loud = service.run(req, loudness=-23)
    assert loud.project.mix.loudness == -23.0 and loud.project.mix.sample_rate == 48_000
    with pytest.raises(InputError, match="output sample rate must be one of 48000, model"):
        service.run(req, sample_rate=44_100)
    with pytest.raises(InputError, match="loudness target must be one of off, -23, -16, -14"):
        service.run(req, loudness=-20)
