"""selva/stems.py and selva/tracks.py: several sources at once, the mix and the multi-track mp4."""

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import av
import gradio as gr
import numpy as np
import pytest
from media_factory import make_video

from selva import tracks
from selva.render import mix_waves
from selva.serving import PipelineSlot
from selva.spec import GenerationRequest, InputError
from selva.stems import Stem, generate_stems, save_stems, stems_from_form, stems_info


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("stems_media") / "clip.mp4", seconds=1.0)


@pytest.fixture(scope="module")
def clip_with_sound(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("stems_media") / "sound.mp4", seconds=1.0, audio=True)


def decoded_tracks(path: Path) -> list[tuple[dict, bool, np.ndarray]]:
    """(metadata, is default, samples) per audio track, in file order."""
    with av.open(str(path)) as f:
        streams = list(f.streams.audio)
        # FFmpeg's mp4 muxer stores `title` as the udta "name" box, read back as "name".
        info = [(dict(s.metadata), bool(s.disposition & av.stream.Disposition.default)) for s in streams]
    out = []
    for k, (meta, default) in enumerate(info):
        with av.open(str(path)) as f:
            wave = np.concatenate([fr.to_ndarray()[0] for fr in f.decode(f.streams.audio[k])])
        out.append((meta, default, wave))
    return out


def test_mix_is_the_gained_sum_and_never_clips():
    a = np.array([0.5, -0.25, 0.1], dtype=np.float32)
    b = np.array([0.2, 0.5, 0.0], dtype=np.float32)
    mix, db = mix_waves([a, b], [1.0, 0.5])
    np.testing.assert_allclose(mix, a + 0.5 * b, rtol=1e-6)
    assert db == 0.0
    loud, db = mix_waves([a, b], [2.0, 2.0])  # peak 1.4: scaled down to 1.0
    np.testing.assert_allclose(loud, (2 * a + 2 * b) / 1.4, rtol=1e-6)
    assert np.abs(loud).max() == pytest.approx(1.0) and db == pytest.approx(20 * np.log10(1 / 1.4))


def test_form_rows_skip_empty_prompts_and_check_gains():
    stems = stems_from_form([("dog barking", "", 1.0), ("", "x", 1.0), (" car engine ", "wind", None)])
    assert stems == [Stem("dog barking"), Stem("car engine", "wind", 1.0)]
    with pytest.raises(InputError, match="stem 1: Gain must be a number from 0 to 2"):
        stems_from_form([("rain", "", 3.0)])
    with pytest.raises(InputError, match="at least one stem"):
        stems_from_form([("", "", 1.0)])
    with pytest.raises(InputError, match="1 to 4 stems"):
        generate_stems(None, GenerationRequest("v.mp4", ""), [Stem("a")] * 5)
    with pytest.raises(InputError, match="stems follow sources in a video"):
        generate_stems(None, GenerationRequest(None, "", duration=1.0), [Stem("a")])


def test_stems_end_to_end(app_pipe, clip, tmp_path):
    """Two stems: seeds seed + k, each reproducible alone, the mix and every track in the files."""
    base = GenerationRequest(clip, "", steps=2, seed=40)
    stems = [Stem("dog barking", gain=1.5), Stem("car engine", "wind", gain=0.5)]
    out = generate_stems(app_pipe, base, stems)
    assert out.seeds == [40, 41] and out.original is None

    for stem, seed, wave in zip(stems, out.seeds, out.audio, strict=True):
        alone = app_pipe(clip, stem.prompt, stem.negative_prompt, steps=2, seed=seed)
        np.testing.assert_array_equal(alone.audio[0].numpy(), wave)

    expected, db = mix_waves(out.audio, [1.5, 0.5])
    np.testing.assert_allclose(out.mix, expected, rtol=1e-6)
    assert np.abs(out.mix).max() <= 1.0 and out.normalised_db == db
    info = stems_info(out)
    assert "1. 'dog barking' seed 40 gain 1.5" in info and "2. 'car engine' seed 41" in info
    assert ("mix normalised by" in info) == (db != 0.0)

    files = save_stems(out, tmp_path, "clip")
    assert [p.name for p in files.stem_audio] == ["clip_1-dog-barking.flac", "clip_2-car-engine.flac"]
    assert files.mix_audio.is_file() and files.seeds == (40, 41)
    with av.open(str(files.mix_video)) as f:
        assert len(f.streams.audio) == 1 and len(f.streams.video) == 1
    tracks = decoded_tracks(files.tracks_video)
    assert [meta.get("name") for meta, _, _ in tracks] == ["mix", "dog barking", "car engine"]
    assert [meta.get("handler_name") for meta, _, _ in tracks] == ["mix", "dog barking", "car engine"]
    assert [default for _, default, _ in tracks] == [True, False, False]
    with av.open(str(files.tracks_video)) as f, av.open(str(files.mix_video)) as g:
        assert len(f.streams.video) == 1
        assert [p.size for p in f.demux(video=0)] == [p.size for p in g.demux(video=0)]  # copied as is
    # Each stem's track carries that stem (AAC, so compare loosely against the other stem).
    for k, wave in enumerate(out.audio):
        got = tracks[k + 1][2]
        n = min(got.size, wave.size)
        assert np.abs(got[:n] - wave[:n]).mean() < np.abs(got[:n] - out.audio[1 - k][:n]).mean()


def test_original_soundtrack_is_mixed_and_kept_as_a_track(app_pipe, clip_with_sound, tmp_path):
    base = GenerationRequest(clip_with_sound, "", steps=2, seed=3)
    out = generate_stems(app_pipe, base, [Stem("dog barking", gain=0.5)], original_audio_gain=0.8)
    assert out.original is not None and np.abs(out.original).max() > 0.05
    expected, _ = mix_waves([out.audio[0], out.original], [0.5, 0.8])
    np.testing.assert_allclose(out.mix, expected, rtol=1e-6)
    assert "original audio at 0.8" in stems_info(out)
    files = save_stems(out, tmp_path, "sound")
    titles = [meta.get("name") for meta, _, _ in decoded_tracks(files.tracks_video)]
    assert titles == ["mix", "dog barking", "original"]


# -- the serving layer and the app ----------------------------------------------------------------------


def test_original_audio_level_on_the_main_generate(app_pipe, clip_with_sound):
    """The app's Generate mixes the original soundtrack at the chosen level (0 replaces it)."""
    from selva.app import handlers

    studio = handlers.Studio(PipelineSlot.wrap(app_pipe))

    def mp4_audio(level: float) -> np.ndarray:
        video, *_, info, seed = studio.generate(
            str(clip_with_sound), "dog barking", "", 2, 4.5, 9, 0, 0, None, 1, level, progress=None
        )
        assert ("original audio at" in info) == bool(level)
        with av.open(video) as f:
            return np.concatenate([fr.to_ndarray()[0] for fr in f.decode(audio=0)])

    replaced, kept = mp4_audio(0.0), mp4_audio(1.0)
    n = min(replaced.size, kept.size)
    original = tracks.original_audio(clip_with_sound, 0.0, 1.0, 48_000)  # the mp4's delivered rate
    # Same seed, so the difference between the two soundtracks is the original at gain 1 (AAC-coded).
    diff = kept[:n] - replaced[:n]
    assert np.corrcoef(diff[: original.size], original[: min(n, original.size)])[0, 1] > 0.9
    with pytest.raises(gr.Error, match="Original audio level must be a number from 0 to 2"):
        studio.generate(str(clip_with_sound), "dog", "", 2, 4.5, 9, 0, 0, None, 1, 5.0, progress=None)


def test_stems_handler_history_and_recall(app_pipe, clip_with_sound):
    from selva.app import handlers
    from selva.app import stems as stems_ui

    studio = handlers.Studio(PipelineSlot.wrap(app_pipe))
    rows = ["dog barking", "", 1.0, "car engine", "wind", 0.5, "", "", 1.0, "", "", 1.0]
    *values, result = studio.generate_stems(
        str(clip_with_sound), *rows, 2, 4.5, 20, 0, 0, None, 0.5, progress=None
    )  # fmt: skip
    mix_video, tracks_video, mix_audio, *players, info = values
    assert result.seeds == (20, 21) and players[2:] == [None, None]
    assert "seed 20" in info and "seed 21" in info and "original audio at 0.5" in info
    titles = [meta.get("name") for meta, _, _ in decoded_tracks(Path(tracks_video))]
    assert titles == ["mix", "dog barking", "car engine", "original"]

    past, listing, *labels = stems_ui.remember([], result, *values[:7])
    assert len(past) == 1 and listing["choices"] == [("1. dog barking + car engine (seed 20)", 0)]
    assert labels[1]["label"] == "Stem 2: car engine (seed 21)" and labels[2]["visible"] is False
    again = stems_ui.recall(past, 0)
    assert again[0] == mix_video and again[3]["value"] == players[0] and again[-1] == info

    with pytest.raises(gr.Error, match="at least one stem"):
        studio.generate_stems(str(clip_with_sound), *[""] * 12, 2, 4.5, 1, 0, 0, None, 0, progress=None)


def test_rows_stay_within_one_to_four_and_a_removed_row_is_reset():
    from selva.app import stems as stems_ui

    def shown(count: int, delta: int) -> tuple:
        count, *rest = stems_ui.resize(count, delta)
        rows, (add, remove), fields = rest[:4], rest[4:6], rest[6:]
        prompts, negatives, gains = fields[:4], fields[4:8], fields[8:]
        return count, [r["visible"] for r in rows], (add["interactive"], remove["interactive"]), (
            prompts, negatives, gains
        )

    count, rows, buttons, _ = shown(2, 1)
    assert count == 3 and rows == [True, True, True, False] and buttons == (True, True)
    count, rows, buttons, _ = shown(4, 1)  # four at most: Add is disabled
    assert count == 4 and rows == [True] * 4 and buttons == (False, True)
    count, rows, buttons, (prompts, negatives, gains) = shown(2, -1)  # one at least: Remove is disabled
    assert count == 1 and rows == [True, False, False, False] and buttons == (True, False)
    # Kept rows are left as typed (no value in the update); hidden ones are emptied and back at gain 1.
    assert "value" not in prompts[0] and prompts[1:] == ["", "", ""]
    assert negatives[1:] == ["", "", ""] and gains[1:] == [1.0, 1.0, 1.0]


def test_stems_endpoint_from_gradio_client(app_server, clip):
    from gradio_client import Client, handle_file

    client = Client(app_server.url, verbose=False)
    assert "/stems" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    rows = ["dog barking", "", 1.0, "car engine", "", 1.0, "", "", 1.0, "", "", 1.0]
    mix_video, tracks_video, mix_audio, *stems, info = client.predict(
        handle_file(str(clip)), *rows, 2, 4.5, 5, 0, 0, "tiny_16k", 0, api_name="/stems"
    )  # fmt: skip
    assert "seed 5" in info and "seed 6" in info
    assert Path(stems[0]).suffix == ".flac" and stems[2] is None and stems[3] is None
    with av.open(str(tracks_video)) as f:
        assert len(f.streams.audio) == 3


# -- the command line ---------------------------------------------------------------------------------


def test_cli_writes_stems_and_the_mix(tiny_hub, clip, tmp_path):
    from selva import cli

    out = tmp_path / "out"
    code = cli.main([
        "generate", str(clip), "--prompt", "dog barking", "--prompt", "car engine",
        "--gain", "1", "--gain", "0.5",
        "--negative", "", "--negative", "wind", "--seed", "8", "--steps", "2", "--variant", "tiny_16k",
        "--device", "cpu", "--precision", "fp32", "--out", str(out), "-q",
    ])  # fmt: skip
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "clip_1-dog-barking.flac", "clip_2-car-engine.flac",
        "clip_mix.flac", "clip_mix.mp4", "clip_tracks.mp4",
    ]  # fmt: skip
    titles = [meta.get("name") for meta, _, _ in decoded_tracks(out / "clip_tracks.mp4")]
    assert titles == ["mix", "dog barking", "car engine"]
    # Mismatched pairs are a usage error before any model loads.
    assert cli.main(["generate", str(clip), "--prompt", "a", "--prompt", "b", "--gain", "1", "-q"]) == 2


# -- MCP (gradio[mcp]): python app.py --mcp ---------------------------------------------------------------


@pytest.fixture(scope="module")
def mcp_url(app_pipe) -> str:
    """The app as `python app.py --mcp` launches it (launch.launch_options(mcp=True)): its MCP URL."""
    from served import served

    from selva.app import launch, page

    assert launch.build_parser().parse_args(["--mcp"]).mcp
    demo = page.build_demo(app_pipe, examples=False)
    with served(demo, **launch.launch_options(mcp=True)) as url:
        yield f"{url}gradio_api/mcp/"


def mcp_session(url: str, work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run `await work(session)` in an initialised MCP client session on `url` (streamable HTTP)."""
    import asyncio

    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def run() -> Any:
        async with streamable_http_client(url) as (read, write, _), ClientSession(read, write) as session:
            await session.initialize()
            return await work(session)

    return asyncio.run(run())


def test_mcp_lists_generate_and_stems_with_their_descriptions(mcp_url):
    async def listed(session) -> dict:
        return {tool.name: tool for tool in (await session.list_tools()).tools}

    tools = mcp_session(mcp_url, listed)
    assert {"generate", "generate_stems"} <= set(tools)
    assert "follows the prompted source" in tools["generate"].description
    stems = tools["generate_stems"]
    assert "one per prompt" in stems.description
    properties = stems.inputSchema["properties"]
    assert {"video", "prompt_1", "gain_4", "original_audio_gain"} <= set(properties)
    assert "level in the mix" in properties["gain_1"].get("description", "")
    # A caller names the stems it wants: every other prompt and negative may be left out.
    assert set(stems.inputSchema["required"]) == {"video", "prompt_1"}
    assert "url" in properties["video"]["format"]  # gradio takes files as URLs (or data: URLs)


def fetched(url: str, folder: Path) -> Path:
    """Download a file the MCP server returned as a URL."""
    import httpx

    assert url.startswith("http://127.0.0.1:"), url
    response = httpx.get(url, timeout=60)
    response.raise_for_status()
    path = folder / Path(url.split("?")[0]).name
    path.write_bytes(response.content)
    return path


def test_mcp_calls_generate_and_generate_stems_on_a_clip(mcp_url, clip, tmp_path):
    """Both tools called as an agent would: the clip goes in as a data: URL, files come back as URLs."""
    import base64

    video = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode("ascii")
    stems_args = {"video": video, "prompt_1": "dog barking", "prompt_2": "car engine", "gain_2": 0.5}
    stems_args |= {"steps": 2, "seed": 11}
    progress: list[float] = []

    async def calls(session) -> tuple:
        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append(value)

        # Without a progress token (what many clients send) and with one: gradio runs each differently.
        # /generate's negative prompt has no default in the schema: it is passed, empty.
        single_args = {"video": video, "prompt": "dog barking", "negative_prompt": "", "steps": 2, "seed": 3}
        single = await session.call_tool("generate", single_args)
        stems = await session.call_tool("generate_stems", stems_args)
        watched = await session.call_tool("generate_stems", stems_args, progress_callback=on_progress)
        return single, stems, watched

    single, stems, watched = mcp_session(mcp_url, calls)
    for result in (single, stems, watched):
        assert not result.isError, result.content
    texts = [c.text for c in single.content]
    # result, candidates 2-4 (unused), the audio files, the info line
    assert len(texts) == 6 and texts[1:4] == ["None"] * 3
    assert "seed 3" in texts[5] and "1.00 s from 0.00 s" in texts[5]
    with av.open(str(fetched(texts[0], tmp_path))) as f:
        assert len(f.streams.video) == 1 and len(f.streams.audio) == 1
        assert float(f.duration / av.time_base) == pytest.approx(1.0, abs=0.1)

    texts = [c.text for c in stems.content]
    assert watched.content[-1].text.split(" · total")[0] == texts[-1].split(" · total")[0]  # same stems
    assert progress, "a call with a progress token gets progress notifications"
    # mix mp4, tracks mp4, mix FLAC, stems 1-4 (3 and 4 unused), the info line
    assert len(texts) == 8 and texts[5:7] == ["None", "None"]
    assert "1. 'dog barking' seed 11 gain 1" in texts[7] and "2. 'car engine' seed 12 gain 0.5" in texts[7]
    mix_video, tracks_video, mix_audio, stem_1, stem_2 = (fetched(url, tmp_path) for url in texts[:5])
    with av.open(str(mix_video)) as f:
        assert len(f.streams.video) == 1 and len(f.streams.audio) == 1
    titles = [meta.get("name") for meta, _, _ in decoded_tracks(tracks_video)]
    assert titles == ["mix", "dog barking", "car engine"]
    for path in (mix_audio, stem_1, stem_2):
        assert path.suffix == ".flac"
        with av.open(str(path)) as f:
            samples = sum(frame.samples for frame in f.decode(audio=0))
        assert samples == 48_000  # 1 s, delivered at 48 kHz (tiny_16k makes 16 kHz)


def test_an_oversized_data_url_gets_the_limit_and_what_to_do_instead(mcp_url):
    """Over the MCP limit, a tool call gets a tool error with the message, not a bare HTTP 413."""
    import base64
    import json

    import httpx
    from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE

    from selva.spec import MCP_MAX_REQUEST_BYTES

    assert MCP_MAX_REQUEST_BYTES == DEFAULT_MAX_REQUEST_BODY_SIZE  # ours answers at the mcp package's limit
    video = "data:video/mp4;base64," + base64.b64encode(bytes(3_300_000)).decode("ascii")  # 4.4 MB

    async def call(session):
        return await session.call_tool("generate", {"video": video, "prompt": "dog barking"})

    result = mcp_session(mcp_url, call)
    assert result.isError
    (text,) = [c.text for c in result.content]
    assert "This MCP request is 4.4 MB; the server takes at most 4 MiB per request" in text
    assert "about 3 MB of video sent as a data: URL" in text and "public http(s) URL" in text
    assert "handle_file(path)" in text

    # Any other method gets a JSON-RPC error with the request's own id; the session goes on.
    ping = {"jsonrpc": "2.0", "id": "big-1", "method": "ping", "params": {"pad": "x" * MCP_MAX_REQUEST_BYTES}}
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    reply = httpx.post(mcp_url, content=json.dumps(ping), headers=headers, timeout=60)
    assert reply.status_code == 200 and reply.json()["id"] == "big-1"
    assert reply.json()["error"]["message"].startswith("This MCP request is 4.2 MB")

    async def listed(session):
        return [tool.name for tool in (await session.list_tools()).tools]

    assert "generate" in mcp_session(mcp_url, listed)  # requests within the limit are served as before


def test_the_reply_to_a_huge_request_finds_its_id_at_either_end():
    """Past 32 MiB only a body's ends are kept: the id is read before "params" or at the very end."""
    from selva.app.mcp_compat import oversized_reply

    head = b'{"method":"tools/call","params":{"name":"generate","arguments":{"id":99,"video":"data:'
    tail = b'AAAA"}},"jsonrpc":"2.0","id":5}'  # the Python SDK's order
    reply = oversized_reply(head, 50_000_000, end=tail)
    assert reply["id"] == 5 and reply["result"]["isError"]
    assert "This MCP request is 50.0 MB" in reply["result"]["content"][0]["text"]
    head = b'{"jsonrpc":"2.0","id":"a","method":"ping","params":{"x":"'
    reply = oversized_reply(head, 9_000_000, end=b'A"}}')
    assert reply["id"] == "a" and "at most 4 MiB" in reply["error"]["message"]
    assert oversized_reply(b"not json", 9_000_000)["id"] is None


def test_the_mcp_tools_functions_return_scores_when_asked(app_pipe, clip, tmp_path_factory):
    """`score=True` on /generate's and /stems' functions: the scores end the info line API callers get."""
    from tiny_clap import write_tiny_clap

    from selva.app import handlers

    clap = write_tiny_clap(tmp_path_factory.mktemp("clap"))
    studio = handlers.Studio(PipelineSlot.wrap(app_pipe), scorer=str(clap))
    *_, info, result = studio.generate(
        str(clip), "dog barking", "rain", 2, 4.5, 31, 0, 0, None, 2, score=True, progress=None
    )
    assert [(r.seed, r.leaked_into) for r in result.scores] == [(31, "rain"), (32, "rain")]
    best = next(r for r in result.scores if r.best)
    assert "Scores (CLAP: a hint for choosing, not a judgement of quality):" in info
    assert f"seed {best.seed}: match {best.agreement:.2f} · leak {best.leakage:.2f} · score" in info
    *_, info, stems = studio.generate_stems(
        str(clip), "dog barking", "", 1, "car engine", "", 0.5, *[None] * 6, 2, 4.5, 11, 0, 0, None,
        score=True, progress=None,
    )  # fmt: skip
    assert [(r.sound, r.seed, r.leaked_into) for r in stems.scores] == [
        (0, 11, "car engine"), (1, 12, "dog barking"),
    ]  # fmt: skip
    assert "sound 2 seed 12: match " in info
    # Not asked (the page's and the tools' default): no scores.
    *_, info, result = studio.generate(str(clip), "dog barking", "", 2, 4.5, 31, 0, 0, None, 1, progress=None)
    assert result.scores == () and "Scores" not in info


def test_stems_decode_the_span_once_and_run_text_synch_once_per_prompt(app_pipe, clip, monkeypatch):
    from selva import media

    reads, real = [], media.iter_frames
    monkeypatch.setattr(media, "iter_frames", lambda *a, **k: reads.append(a) or real(*a, **k))
    calls = []
    hook = app_pipe.text_synch.register_forward_hook(lambda m, args, out: calls.append(out.shape))
    app_pipe.clear_caches()
    try:
        stems = [Stem("dog barking"), Stem("car engine"), Stem("rain", "wind")]
        generate_stems(app_pipe, GenerationRequest(clip, "", steps=1, seed=5), stems)
        assert len(reads) == 1 and len(calls) == 3
        # The same stems again: every feature is cached.
        generate_stems(app_pipe, GenerationRequest(clip, "", steps=1, seed=6), stems)
        assert len(reads) == 1 and len(calls) == 3
    finally:
        hook.remove()
