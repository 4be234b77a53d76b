"""SelvaPipeline: parity with the reference end to end, then the product behaviour on the tiny Hub."""

import re
from pathlib import Path

import av
import pytest
import torch
from media_factory import make_audio_only, make_image, make_video, truncate

from selva.loading import build_from_checkpoint
from selva.models.bigvgan import BigVGAN, BigVGANConfig
from selva.models.generator import Generator, GeneratorConfig
from selva.models.text_synch import TextSynch, TextSynchConfig
from selva.models.vae import VAEConfig, VAEDecoder
from selva.pipeline import STAGES, SelvaPipeline
from selva.sequence import SequenceLengths
from selva.spec import CancelToken, GenerationCancelled, InputError, MediaError, WeightsError
from selva.windows import plan_windows

# -- parity with the reference: parity/pipeline_16k.pt -----------------------------------------


@pytest.fixture(scope="module")
def parity(fixtures_dir):
    return torch.load(fixtures_dir / "pipeline_16k.pt", weights_only=True)


@pytest.fixture(scope="module")
def parity_pipe(parity, tiny_hub):
    """The four tiny reference networks, loaded through the production loader, without text encoders."""
    from selva.variants import get_variant

    configs, states = parity["configs"], parity["state_dicts"]
    networks = {
        "text_synch": (TextSynch, TextSynchConfig.from_dict(configs["textsynch"]), states["textsynch"]),
        "generator": (Generator, GeneratorConfig.from_dict(configs["generator"]), states["generator"]),
        "vae": (VAEDecoder, VAEConfig.from_dict(configs["vae"]), states["vae"]),
        "vocoder": (BigVGAN, BigVGANConfig.from_dict(configs["bigvgan"]), states["bigvgan"]),
    }
    built = {
        name: build_from_checkpoint(cls, config, dict(state))
        for name, (cls, config, state) in networks.items()
    }
    return SelvaPipeline(variant=get_variant("tiny_16k"), t5=None, clip=None, **built)


def test_pipeline_reproduces_the_reference_end_to_end(parity, parity_pipe):
    inputs, expected, tol = parity["inputs"], parity["outputs"], parity["tolerance"]

    def check(name, ours):
        torch.testing.assert_close(ours, expected[name], atol=tol[name], rtol=tol[name])

    lengths = SequenceLengths.from_duration(2.0, sample_rate=16000, hop_length=256)
    sync_f = parity_pipe.encode_video(inputs["sync_video"].float(), inputs["t5_f"], inputs["t5_mask"])
    check("sync_f", sync_f)

    (x0,) = parity_pipe.prepare_latents(plan_windows(2.0, 16000), 1, seed=inputs["seed"])
    torch.testing.assert_close(x0, inputs["x0"], atol=0, rtol=0)  # the seed means the same noise

    cond, uncond = parity_pipe.prepare_conditions(
        sync_f, inputs["clip_text_f"], inputs["negative_clip_text_f"], num_samples=1, lengths=lengths
    )
    latent = parity_pipe.denoise(
        x0, cond, uncond, steps=inputs["num_steps"], cfg_strength=inputs["cfg_strength"]
    )
    check("latent", latent)
    mel = parity_pipe.decode_latents(latent)
    check("mel", mel)
    check("audio", parity_pipe.vocode(mel).unsqueeze(1))


# -- the product, on the tiny Hub ---------------------------------------------------------------


@pytest.fixture(scope="module")
def clip3s(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=3.0, audio=True)


class CallCounter:
    """Counts forward calls of a module through a forward hook (the real module still runs)."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.outputs: list[torch.Tensor] = []
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.calls += 1
        self.outputs.append(output)

    def remove(self):
        self._handle.remove()


@pytest.fixture
def text_synch_calls(pipe):
    pipe.clear_caches()
    counter = CallCounter(pipe.text_synch)
    yield counter
    counter.remove()


def test_generates_audio_for_the_whole_clip(pipe, clip3s, tmp_path):
    out = pipe(clip3s, "dog barking", "wind noise", steps=3, seed=7)
    assert out.sample_rate == 16000
    assert out.seed == 7 and out.start == 0.0
    assert out.duration == pytest.approx(3.0)
    assert out.audio.shape == (1, 48000)
    assert out.audio.dtype == torch.float32 and torch.isfinite(out.audio).all()
    assert out.audio.abs().max() <= 1.0
    for stage in ("probe", "text", "decode", "text_synch", "flow", "vae", "vocoder", "total"):
        assert out.timings[stage] >= 0.0

    flac, wav = out.save_audio(tmp_path / "a.flac"), out.save_audio(tmp_path / "a.wav")
    for path in (flac, wav):
        with av.open(str(path)) as f:
            stream = f.streams.audio[0]
            assert stream.rate == 16000
            assert float(f.duration / av.time_base) == pytest.approx(3.0, abs=0.01)

    mp4 = out.save_video(tmp_path / "a.mp4")
    with av.open(str(mp4)) as f:
        assert [s.type for s in f.streams] == ["video", "audio"]
        assert f.streams.audio[0].codec_context.name == "aac"
        assert float(f.duration / av.time_base) == pytest.approx(3.0, abs=1 / 25 + 0.03)


def test_an_exact_eight_second_clip_keeps_every_frame(pipe, tmp_path, text_synch_calls):
    clip = make_video(tmp_path / "eight.mp4", seconds=8.0, fps=25)  # 200 frames
    out = pipe(clip, "a car engine", steps=1, seed=0)
    assert out.duration == pytest.approx(8.0)
    assert out.audio.shape == (1, 128000)  # 250 latents * 2 * 256 hops
    (sync_f,) = text_synch_calls.outputs
    assert sync_f.shape[:2] == (1, 192)  # 24 segments of 8 tokens


def test_a_reroll_skips_decoding_and_text_synch(pipe, clip3s, text_synch_calls):
    first = pipe(clip3s, "dog barking", steps=2, seed=1)
    assert text_synch_calls.calls == 1 and "decode" in first.timings

    # Another seed, step count, CFG strength and negative prompt: same video and prompt.
    again = pipe(clip3s, "dog barking", "wind noise", steps=3, cfg_strength=2.0, seed=2)
    assert text_synch_calls.calls == 1
    assert "decode" not in again.timings and "text_synch" not in again.timings

    # The prompt conditions the video encoder, so a new prompt must run it again.
    pipe(clip3s, "rain", steps=1, seed=1)
    assert text_synch_calls.calls == 2
    # So must another span of the same video.
    pipe(clip3s, "dog barking", steps=1, seed=1, start=0.5, duration=2.0)
    assert text_synch_calls.calls == 3


def test_the_same_seed_gives_the_same_audio(pipe, clip3s):
    a = pipe(clip3s, "dog barking", steps=2, seed=123)
    b = pipe(clip3s, "dog barking", steps=2, seed=123)
    c = pipe(clip3s, "dog barking", steps=2, seed=124)
    torch.testing.assert_close(a.audio, b.audio, atol=0, rtol=0)
    assert not torch.equal(a.audio, c.audio)


def test_a_random_seed_is_reported_and_reproduces(pipe, clip3s):
    a = pipe(clip3s, "dog barking", steps=2)
    b = pipe(clip3s, "dog barking", steps=2, seed=a.seed)
    torch.testing.assert_close(a.audio, b.audio, atol=0, rtol=0)


def test_candidates_come_from_one_batch_and_differ(pipe, clip3s):
    out = pipe(clip3s, "dog barking", steps=2, seed=5, num_samples=3)
    assert out.audio.shape == (3, 48000)
    assert not torch.equal(out.audio[0], out.audio[1])
    # Candidate k of a batch is the single result for seed + k.
    single = pipe(clip3s, "dog barking", steps=2, seed=6)
    # (batched matmuls round differently; the tiny random vocoder amplifies that a little)
    torch.testing.assert_close(out.audio[1:2], single.audio, atol=5e-3, rtol=0)


def test_a_span_of_the_video(pipe, clip3s):
    out = pipe(clip3s, "dog barking", steps=1, seed=1, start=1.0)
    assert out.start == 1.0 and out.duration == pytest.approx(2.0)
    assert out.audio.shape == (1, 32000)


def test_negative_prompt_changes_only_the_unconditional_branch(pipe, clip3s):
    plain = pipe(clip3s, "dog barking", steps=2, seed=9)
    steered = pipe(clip3s, "dog barking", "wind noise", steps=2, seed=9)
    assert not torch.equal(plain.audio, steered.audio)
    # With cfg 1 the unconditional branch has no weight, so the negative prompt cannot matter.
    a = pipe(clip3s, "dog barking", steps=2, seed=9, cfg_strength=1.0)
    b = pipe(clip3s, "dog barking", "wind noise", steps=2, seed=9, cfg_strength=1.0)
    torch.testing.assert_close(a.audio, b.audio, atol=0, rtol=0)


def test_other_containers_and_orientations(pipe, tmp_path):
    webm = make_video(tmp_path / "clip.webm", seconds=1.0, codec="vp9")
    rotated = make_video(tmp_path / "portrait.mp4", seconds=1.0, size=(48, 64), rotation=270)
    vfr = make_video(tmp_path / "vfr.mp4", seconds=1.0, vfr=True)
    for clip in (webm, rotated, vfr):
        out = pipe(clip, "dog barking", steps=1, seed=1)
        assert out.audio.shape[0] == 1 and out.duration > 0.6


def test_cancel_stops_between_steps(pipe, clip3s):
    token = CancelToken()

    def on_step(p, i, t, state):
        if i == 1:
            token.cancel()

    steps = []

    def record(p, i, t, state):
        steps.append(i)
        on_step(p, i, t, state)

    with pytest.raises(GenerationCancelled):
        pipe(clip3s, "dog barking", steps=5, seed=1, callback_on_step_end=record, cancel=token)
    assert steps == [0, 1]  # stopped before the third step
    # The token belongs to that call: the next call runs normally.
    assert pipe(clip3s, "dog barking", steps=1, seed=1).audio.shape == (1, 48000)


def test_cancel_before_the_call_does_no_work(pipe, clip3s):
    token = CancelToken()
    token.cancel()
    stages = []
    with pytest.raises(GenerationCancelled):
        pipe(clip3s, "dog barking", steps=2, seed=1, cancel=token, callback_on_stage=stages.append)
    assert stages == []


def test_callbacks_report_stages_and_steps(pipe, clip3s):
    pipe.clear_caches()
    stages, steps = [], []

    def on_step(p, i, t, state):
        assert p is pipe and state["latents"].shape == (1, 94, 20)
        steps.append((i, t))

    pipe(
        clip3s, "dog barking", steps=4, seed=1, callback_on_stage=stages.append, callback_on_step_end=on_step
    )
    assert stages == list(STAGES)
    assert steps == [(0, 0.25), (1, 0.5), (2, 0.75), (3, 1.0)]
    # A re-roll reuses the sync features: no decode, no TextSynch.
    stages.clear()
    pipe(clip3s, "dog barking", steps=1, seed=2, callback_on_stage=stages.append)
    assert stages == ["probe", "text", "flow", "vae", "vocoder"]


def test_step_callback_can_replace_the_latents(pipe, clip3s):
    def zero(p, i, t, state):
        return {"latents": torch.zeros_like(state["latents"])} if i == 1 else None

    a = pipe(clip3s, "dog barking", steps=2, seed=1, callback_on_step_end=zero)
    b = pipe(clip3s, "dog barking", steps=2, seed=5, callback_on_step_end=zero)
    torch.testing.assert_close(a.audio, b.audio)  # the seed's noise was replaced at the end


def test_concurrent_callers_each_get_their_own_result(pipe, clip3s, tmp_path):
    """Two threads share one pipeline; each result equals the same call made alone."""
    import threading

    other = make_video(tmp_path / "other.mp4", seconds=2.0)
    jobs = [(clip3s, "dog barking", 3, 1.0), (other, "rain", 7, None)]
    pipe.clear_caches()
    alone = [pipe(v, p, steps=3, seed=s, duration=d).audio for v, p, s, d in jobs]
    pipe.clear_caches()
    results, errors = [None, None], []
    barrier = threading.Barrier(2)

    def run(k: int) -> None:
        v, p, s, d = jobs[k]
        try:
            barrier.wait()
            results[k] = pipe(v, p, steps=3, seed=s, duration=d).audio
        except Exception as exc:  # surfaced below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got, want in zip(results, alone, strict=True):
        torch.testing.assert_close(got, want)


def test_prompt_conditions_textsynch_and_the_negative_never_reaches_it(pipe, clip3s):
    """TextSynch's own input and output tensors, seen through a forward hook."""
    seen = []
    hook = pipe.text_synch.register_forward_hook(
        lambda module, args, output: seen.append((args[1].clone(), output.clone()))
    )
    try:
        for prompt, negative in (("dog barking", ""), ("dog barking", "wind noise"), ("rain", "")):
            pipe.clear_caches()
            pipe(clip3s, prompt, negative, steps=1, seed=1)
    finally:
        hook.remove()
    (text_a, sync_a), (text_a_neg, sync_a_neg), (text_b, sync_b) = seen
    assert torch.equal(text_a, text_a_neg) and torch.equal(sync_a, sync_a_neg)
    torch.testing.assert_close(text_a, pipe.encode_prompt("dog barking").t5)
    assert sync_a.shape == sync_b.shape
    assert (sync_a - sync_b).abs().max() > 1e-3  # another prompt follows other motion


# -- bad input: clear errors before any heavy work ----------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps must be a whole number from 1 to 100 (25 is typical), got 0"),
        ({"steps": 101}, "steps must be a whole number from 1 to 100"),
        ({"steps": 2.5}, "steps must be a whole number"),
        ({"cfg_strength": 0.5}, "cfg_strength must be a number from 1 to 10 (4.5 is typical)"),
        ({"cfg_strength": "strong"}, "cfg_strength must be a number from 1 to 10"),
        ({"cfg_strength": float("nan")}, "cfg_strength must be a number from 1 to 10"),
        ({"seed": -3}, "seed must be a whole number from 0 to 4294967295"),
        ({"seed": 2**32}, "seed must be a whole number from 0 to 4294967295"),
        ({"num_samples": 0}, "num_samples must be a whole number from 1 to 4"),
        ({"num_samples": 5}, "num_samples must be a whole number from 1 to 4"),
        ({"start": -1.0}, "start must be 0 s or later"),
        ({"start": None}, "start must be 0 s or later, got None"),
        ({"duration": "8"}, "duration must be positive"),
        ({"duration": 0}, "duration must be positive"),
        ({"duration": 601}, "over the limit of 600 s"),
        ({"start": 3.5}, "at or past the end of the 3.00 s video"),
        ({"duration": 5.0}, "runs past the end of the 3.00 s video; use at most 3.00 s"),
        ({"start": 2.7}, "needs at least 0.64 s of video"),
    ],
)
def test_bad_arguments_are_named(pipe, clip3s, kwargs, message):
    with pytest.raises(InputError, match=re.escape(message)):
        pipe(clip3s, "dog barking", **kwargs)


def test_prompt_must_be_text(pipe, clip3s):
    with pytest.raises(InputError, match="prompt must be a string"):
        pipe(clip3s, None)


def test_bad_files_are_named(pipe, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    short = make_video(tmp_path / "short.mp4", seconds=0.4)
    cases = {
        empty: "empty",
        tmp_path / "missing.mp4": "no file at",
        make_audio_only(tmp_path / "voice.m4a"): "contains only audio",
        make_image(tmp_path / "still.png"): "still image",
        truncate(
            make_video(tmp_path / "ok.mp4", seconds=2.0), tmp_path / "cut.mp4", 0.3
        ): "damaged or truncated",
    }
    for path, pattern in cases.items():
        with pytest.raises(MediaError, match=f"(?i){pattern}"):
            pipe(path, "dog barking", steps=1)
    with pytest.raises(InputError, match="needs at least 0.64 s"):
        pipe(short, "dog barking", steps=1)


def test_unknown_variant_lists_the_known_ones(tiny_hub):
    with pytest.raises(InputError, match="small_16k"):
        SelvaPipeline.from_pretrained("small_61k")


def test_missing_weights_offline_say_what_to_fetch(fresh_tiny_hub):
    fresh_tiny_hub.remove("jnwnlee/SelVA", "weights/generator_small_16k_sup_5.pth")
    with pytest.raises(WeightsError, match="generator_small_16k_sup_5.pth"):
        SelvaPipeline.from_pretrained("tiny_16k", device="cpu")


def test_saving_to_a_bad_place_leaves_nothing(pipe, clip3s, tmp_path):
    out = pipe(clip3s, "dog barking", steps=1, seed=1)
    target = tmp_path / "no_such_dir" / "a.mp4"
    with pytest.raises(MediaError):
        out.save_video(target)
    assert not target.exists()
    with pytest.raises(MediaError):
        out.save_audio(tmp_path / "a.ogg")
    assert list(Path(tmp_path).iterdir()) == []


def test_one_probe_per_clip(pipe, clip3s, tmp_path, monkeypatch):
    """The call's probe is handed to frame reading and to the mux; none of them probes again."""
    from selva import media

    probed = []
    real_probe = media.probe

    def counting_probe(path):
        probed.append(Path(path))
        return real_probe(path)

    monkeypatch.setattr(media, "probe", counting_probe)
    pipe.clear_caches()
    out = pipe(clip3s, "dog barking", steps=1, seed=1)
    out.save_video(tmp_path / "a.mp4")
    assert probed == [clip3s] and out.info is not None and out.info.path == clip3s


class PromptLog:
    """The prompt lists a text encoder's forward is called with (the real encoder still runs)."""

    def __init__(self, encoder: torch.nn.Module):
        self.batches: list[list[str]] = []
        self._handle = encoder.register_forward_hook(lambda m, args, out: self.batches.append(list(args[0])))

    def remove(self):
        self._handle.remove()


def test_the_negative_prompt_gets_no_t5_and_each_clip_prompt_is_encoded_alone(pipe, clip3s):
    """Alone, so a prompt's cached features never depend on the prompt it came with (bit-exact takes)."""
    pipe.clear_caches()
    t5, clip = PromptLog(pipe.t5), PromptLog(pipe.clip)
    try:
        out = pipe(clip3s, "dog barking", "wind noise", steps=1, seed=3)
        assert t5.batches == [["dog barking"]]
        assert clip.batches == [["dog barking"], ["wind noise"]]
        positive, negative = pipe.encode_prompts("dog barking", "wind noise")
        assert torch.equal(negative, pipe.clip(["wind noise"]))
        assert torch.equal(positive.clip, pipe.clip(["dog barking"]))

        # A re-roll with a new negative prompt encodes only that prompt, with CLIP only.
        t5.batches.clear(), clip.batches.clear()
        again = pipe(clip3s, "dog barking", "traffic", steps=1, seed=3)
        assert t5.batches == [] and clip.batches == [["traffic"]]
        assert not torch.equal(out.audio, again.audio)
    finally:
        t5.remove(), clip.remove()


def test_frames_start_decoding_before_the_text_encoders_run(pipe, clip3s, monkeypatch):
    import selva.features as features_module

    events: list[str] = []

    class RecordedFeed(features_module.FrameFeed):
        def __init__(self, *args, **kwargs):
            events.append("feed")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(features_module, "FrameFeed", RecordedFeed)
    pipe.clear_caches()
    pipe(clip3s, "dog barking", steps=1, seed=0, callback_on_stage=events.append)
    assert events[:4] == ["probe", "feed", "text", "decode"]
    # Cached sync features: nothing is decoded.
    events.clear()
    pipe(clip3s, "dog barking", steps=1, seed=1, callback_on_stage=events.append)
    assert "feed" not in events and "decode" not in events


def test_a_cancel_during_text_synch_stops_before_the_next_chunk(pipe, tmp_path):
    clip = make_video(tmp_path / "long.mp4", seconds=20.0)  # past one window: chunks of 24 segments
    token = CancelToken()
    pipe.clear_caches()
    counter = CallCounter(pipe.text_synch)
    counter_hook = pipe.text_synch.register_forward_hook(lambda *a: token.cancel())
    try:
        with pytest.raises(GenerationCancelled):
            pipe(clip, "dog barking", steps=1, seed=0, cancel=token)
        assert counter.calls == 1  # the first chunk ran, the second never started
    finally:
        counter.remove(), counter_hook.remove()
