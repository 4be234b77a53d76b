"""The ComfyUI node pack (comfyui_selva/) on the tiny models, fed ComfyUI-shaped tensors.

ComfyUI itself cannot be installed here; where a test needs it, the few pieces
of it the pack touches (folder_paths, comfy.model_management, comfy.utils) are
stood in for through sys.modules with the behaviour of ComfyUI's own code.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import av
import pytest
import torch
from media_factory import frame_color, frame_index, make_picture, make_video

from comfyui_selva import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, loader
from comfyui_selva.features import SelvaFeatures
from comfyui_selva.frames import source_indices, to_sync_frames
from comfyui_selva.stages import InputError, WeightsError
from selva.media import read_frames
from selva.sequence import SequenceLengths
from selva.variants import human_size

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "comfyui_selva" / "workflows" / "selva_video_to_audio_api.json"
GENERATOR = "weights/generator_small_16k_sup_5.pth"

load_model = NODE_CLASS_MAPPINGS["SelvaModelLoader"]().load
extract = NODE_CLASS_MAPPINGS["SelvaFeatureExtractor"]().extract
sample = NODE_CLASS_MAPPINGS["SelvaSampler"]().sample


def as_image(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (T, 3, H, W) -> a ComfyUI IMAGE: float (T, H, W, 3) in [0, 1]."""
    return frames.permute(0, 2, 3, 1).float() / 255


def decoded_squashed(path: Path, size: int = 224) -> torch.Tensor:
    """Every frame of a clip, squashed to size x size with torch's antialiased bicubic on uint8
    (the resize selva.media applies), as uint8 (T, 3, size, size)."""
    with av.open(str(path)) as container:
        pictures = [torch.from_numpy(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    batch = torch.stack(pictures).permute(0, 3, 1, 2)
    return torch.nn.functional.interpolate(
        batch, size=(size, size), mode="bicubic", align_corners=False, antialias=True
    )


def painted(count: int, width: int = 64, height: int = 48) -> torch.Tensor:
    """An IMAGE whose frame k carries the index k (see media_factory)."""
    return torch.stack([torch.from_numpy(make_picture(k, width, height)) for k in range(count)]).float() / 255


class CallCounter:
    """Counts forward calls of a module through a forward hook (the module still runs)."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.calls += 1

    def remove(self):
        self._handle.remove()


@pytest.fixture(scope="module")
def model(tiny_hub):
    """tiny_16k through the loader node, outside ComfyUI (device auto: the CPU here)."""
    (pipe,) = load_model("tiny_16k", "fp32", "keep_in_vram")
    yield pipe
    loader.release()


@pytest.fixture(scope="module")
def clip25(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("comfy_media") / "clip25.mp4", seconds=3.0, fps=25)


@pytest.fixture(scope="module")
def clip30(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("comfy_media") / "clip30.mp4", seconds=3.0, fps=30)


@pytest.fixture
def comfyui(tmp_path, monkeypatch):
    """A stand-in for the parts of ComfyUI the pack uses, installed in sys.modules.

    folder_paths keeps model folders as ComfyUI's does (add_model_folder_path,
    get_folder_paths, models_dir); comfy.model_management raises its
    InterruptProcessingException once after `state.interrupt` is set, then clears
    the flag; comfy.utils.ProgressBar records its updates, and setting
    `state.cancel_at` presses Cancel when the bar reaches that value.
    """
    state = types.SimpleNamespace(
        models_dir=tmp_path / "ComfyUI" / "models", interrupt=False, cancel_at=None, progress=[], folders={}
    )

    folder_paths = types.ModuleType("folder_paths")
    folder_paths.models_dir = str(state.models_dir)
    folder_paths.folder_names_and_paths = state.folders

    def add_model_folder_path(name, path, is_default=False):
        paths = state.folders.setdefault(name, ([], set()))[0]
        if path in paths:
            if is_default:
                paths.remove(path)
                paths.insert(0, path)
        elif is_default:
            paths.insert(0, path)
        else:
            paths.append(path)

    folder_paths.add_model_folder_path = add_model_folder_path
    folder_paths.get_folder_paths = lambda name: list(state.folders[name][0])

    management = types.ModuleType("comfy.model_management")

    class InterruptProcessingException(Exception):
        pass

    def throw_exception_if_processing_interrupted():
        if state.interrupt:
            state.interrupt = False
            raise InterruptProcessingException()

    management.InterruptProcessingException = InterruptProcessingException
    management.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    management.get_torch_device = lambda: torch.device("cpu")
    management.soft_empty_cache = lambda force=False: None

    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            state.progress.append((value, total or self.total))
            if value == state.cancel_at:
                state.interrupt = True

    utils.ProgressBar = ProgressBar
    comfy = types.ModuleType("comfy")
    comfy.__path__ = []
    comfy.model_management, comfy.utils = management, utils
    for name, module in {
        "folder_paths": folder_paths,
        "comfy": comfy,
        "comfy.model_management": management,
        "comfy.utils": utils,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    state.InterruptProcessingException = InterruptProcessingException
    loader.release()  # a pipeline loaded outside this "ComfyUI" must not be handed back inside it
    yield state
    loader.release()


# -- the contract ComfyUI reads ------------------------------------------------------------------


def test_the_pack_exports_three_nodes_with_their_display_names():
    assert set(NODE_CLASS_MAPPINGS) == {"SelvaModelLoader", "SelvaFeatureExtractor", "SelvaSampler"}
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
    outputs = {name: cls.RETURN_TYPES for name, cls in NODE_CLASS_MAPPINGS.items()}
    assert outputs == {
        "SelvaModelLoader": ("SELVA_MODEL",),
        "SelvaFeatureExtractor": ("SELVA_FEATURES", "FLOAT"),
        "SelvaSampler": ("AUDIO",),
    }


@pytest.mark.parametrize("name", ["SelvaModelLoader", "SelvaFeatureExtractor", "SelvaSampler"])
def test_each_node_follows_the_classic_node_contract(name, tiny_hub):
    cls = NODE_CLASS_MAPPINGS[name]
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}
    assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS)
    assert cls.CATEGORY == "audio/SelVA" and cls.DESCRIPTION
    params = inspect.signature(getattr(cls(), cls.FUNCTION)).parameters
    for section in ("required", "optional"):
        for input_name, (kind, options) in spec.get(section, {}).items():
            assert input_name in params, f"{name}.{cls.FUNCTION} does not take {input_name}"
            assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"
            if isinstance(kind, list):
                assert options["default"] in kind
            elif kind in ("INT", "FLOAT"):
                assert options["min"] <= options["default"] <= options["max"]


def test_the_variant_list_is_the_registry_with_medium_44k_first_choice(tiny_hub):
    variant, options = NODE_CLASS_MAPPINGS["SelvaModelLoader"].INPUT_TYPES()["required"]["variant"]
    assert variant[:4] == ["small_16k", "small_44k", "medium_44k", "large_44k"]
    assert {"tiny_16k", "tiny_44k"} <= set(variant)  # from the tiny hub's variants file
    assert options["default"] == "medium_44k"


def test_importing_the_pack_imports_nothing_from_comfyui():
    code = (
        "import sys, comfyui_selva\n"
        "print(sorted(m for m in sys.modules if m == 'folder_paths' or m.split('.')[0] == 'comfy'))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


# -- frames: any rate and size in, 25 fps 224 px out -------------------------------------------------


def test_a_30_fps_clip_is_resampled_by_time_like_the_video_decoder(clip30):
    # every decoded frame, as ComfyUI's GetVideoComponents hands them over
    with av.open(str(clip30)) as container:
        pictures = [torch.from_numpy(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    image30 = torch.stack(pictures).float() / 255
    assert image30.shape[0] == 90
    indices = source_indices(90, 30.0, 75)
    assert indices[:3] == [0, 2, 3] and indices[-1] == 89  # running 1/25 sums: frame 1 (1/30 s) is skipped
    ours = to_sync_frames(image30, indices, size=64)
    decoded = read_frames(clip30, duration=3.0, fps=25, size=64)
    assert [frame_index(f) for f in ours] == [frame_index(f) for f in decoded]


def test_slower_clips_repeat_frames_and_the_last_frame_holds():
    # the first source frame at or after k / 25 s, as selva.media.read_frames picks it
    slow = source_indices(10, 12.5, 20)
    assert slow[0] == 0 and slow[-2:] == [9, 9]  # the last frame holds
    assert all(0 <= b - a <= 1 for a, b in zip(slow[:-1], slow[1:], strict=True))  # in order, none skipped
    assert all(1 <= slow.count(i) <= 3 for i in range(10))  # each shown about twice
    assert source_indices(3, 24.0, 4) == [0, 1, 2, 2]  # 3 frames at 24 fps last 0.125 s


def test_frames_are_squashed_to_224_and_rounded_to_uint8():
    image = painted(4)  # 64x48
    out = to_sync_frames(image, [0, 1, 2, 3])
    assert out.shape == (4, 3, 224, 224) and out.dtype == torch.uint8
    for k, frame in enumerate(out):
        expected = torch.tensor(frame_color(k), dtype=torch.int16)[:, None, None]
        assert (frame.to(torch.int16) - expected).abs().max() <= 1  # flat colours stay flat
    rgba = torch.cat([image, torch.ones_like(image[..., :1])], dim=-1)
    assert torch.equal(to_sync_frames(rgba, [0, 1, 2, 3]), out)
    grey = to_sync_frames(image[..., :1], [0])
    assert torch.equal(grey[0, 0], grey[0, 1]) and torch.equal(grey[0, 0], out[0, 0])


# -- the nodes against the pipeline ---------------------------------------------------------------


def test_extractor_and_sampler_make_the_pipelines_audio(model, clip25, tmp_path):
    image = as_image(decoded_squashed(clip25))  # every frame, as ComfyUI decodes them, at 224 px
    features, duration = extract(model, image, "dog barking", 25.0, 0.0, str(tmp_path))
    assert duration == pytest.approx(3.0)
    (audio,) = sample(model, features, "dog barking", "wind noise", 0.0, 4, 4.5, 3)
    out = model(clip25, "dog barking", "wind noise", steps=4, cfg_strength=4.5, seed=3)
    assert audio["sample_rate"] == out.sample_rate == 16000
    assert audio["waveform"].shape == (1, 1, out.audio.shape[1]) == (1, 1, 48000)
    torch.testing.assert_close(audio["waveform"][0], out.audio, atol=1e-5, rtol=1e-4)

    # A shorter span from the same features is the pipeline's shorter span.
    (short,) = sample(model, features, "", "wind noise", 1.5, 4, 4.5, 3)  # empty prompt: the extractor's
    out = model(clip25, "dog barking", "wind noise", steps=4, cfg_strength=4.5, seed=3, duration=1.5)
    torch.testing.assert_close(short["waveform"][0], out.audio, atol=1e-5, rtol=1e-4)


def test_a_20_second_span_runs_through_the_pipelines_windows(comfyui, model, tmp_path):
    clip = make_video(tmp_path / "clip20.mp4", seconds=20.0, fps=25, gop=25)
    image = as_image(decoded_squashed(clip))
    features, duration = extract(model, image, "dog barking", 25.0, 0.0, str(tmp_path))
    assert duration == pytest.approx(20.0)
    (audio,) = sample(model, features, "dog barking", "wind noise", 0.0, 2, 4.5, 3)
    out = model(clip, "dog barking", "wind noise", steps=2, cfg_strength=4.5, seed=3)
    assert out.windows == 3  # the app's call sonifies 20 s in overlapping 8 s windows
    assert audio["waveform"].shape == (1, 1, out.audio.shape[1]) == (1, 1, 20 * 16000)
    torch.testing.assert_close(audio["waveform"][0], out.audio, atol=1e-5, rtol=0)
    # The node's bar counts the steps of every window pass: two equal windows, then the last.
    assert comfyui.progress == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_a_30_fps_clip_gives_audio_as_long_as_the_clip(model, clip30, tmp_path):
    image30 = as_image(read_frames(clip30, duration=3.0, fps=30, size=64))
    features, duration = extract(model, image30, "dog barking", 30.0, 0.0, str(tmp_path))
    assert abs(duration - 3.0) <= 1 / 25
    lengths = SequenceLengths.from_duration(duration, sample_rate=16000, hop_length=256)
    assert lengths.sync_frames == 75 and features.sync.shape[1] == lengths.sync_len
    (audio,) = sample(model, features, "dog barking", "", 0.0, 2, 4.5, 0)
    assert abs(audio["waveform"].shape[-1] / audio["sample_rate"] - 3.0) <= 1 / 25

    # Taken for 25 fps, the same frames would describe a 3.6 s clip, slowed down.
    _, misread = extract(model, image30, "dog barking", 25.0, 0.0, str(tmp_path))
    assert misread == pytest.approx(3.6)


def test_fps_comes_from_a_video_info_when_connected(model, tmp_path):
    image = painted(45)
    info = {"source_fps": 30.0, "loaded_fps": 15.0, "loaded_frame_count": 45}
    _, duration = extract(model, image, "dog barking", 30.0, 0.0, str(tmp_path), video_info=info)
    assert duration == pytest.approx(3.0)  # 45 frames at the loaded 15 fps, not the widget's 30


@pytest.mark.parametrize("variant, rate", [("tiny_16k", 16000), ("tiny_44k", 44100)])
def test_the_sampler_returns_comfyui_audio(variant, rate, tiny_hub, tmp_path):
    (pipe,) = load_model(variant, "fp32", "auto")
    features, duration = extract(pipe, painted(50), "rain", 25.0, 0.0, str(tmp_path))
    (audio,) = sample(pipe, features, "rain", "", 0.0, 2, 4.5, 5)
    assert set(audio) == {"waveform", "sample_rate"}
    wave = audio["waveform"]
    assert audio["sample_rate"] == rate
    assert wave.ndim == 3 and wave.shape[:2] == (1, 1) and wave.dtype == torch.float32
    assert abs(wave.shape[-1] / rate - duration) <= 1 / 25
    assert torch.isfinite(wave).all() and wave.abs().max() <= 1.0
    loader.release()


def test_bad_inputs_are_named(model, tmp_path):
    with pytest.raises(InputError, match="needs at least 0.64 s"):
        extract(model, painted(10), "rain", 25.0, 0.0, str(tmp_path))
    with pytest.raises(InputError, match="images must be"):
        extract(model, torch.zeros(3, 48, 64), "rain", 25.0, 0.0, str(tmp_path))
    features, _ = extract(model, painted(25), "rain", 25.0, 0.0, str(tmp_path))
    with pytest.raises(InputError, match="runs past the end"):
        sample(model, features, "rain", "", 2.0, 1, 4.5, 0)
    other = dataclasses.replace(features, text_synch="someone/else.pth@0")
    with pytest.raises(InputError, match="another SelVA video encoder"):
        sample(model, other, "rain", "", 0.0, 1, 4.5, 0)


# -- the feature cache on disk --------------------------------------------------------------------


def test_features_are_cached_on_disk_by_frames_and_prompt(model, clip25, tmp_path):
    image = as_image(read_frames(clip25, duration=3.0, fps=25, size=224))
    cache = tmp_path / "cache"
    counter = CallCounter(model.text_synch)
    try:
        first, _ = extract(model, image, "dog barking", 25.0, 0.0, str(cache))
        assert counter.calls == 1
        files = sorted(cache.iterdir())
        assert [f.name for f in files] == [f"{first.key}.pt"]  # no temporary file left behind

        again, _ = extract(model, image, "dog barking", 25.0, 0.0, str(cache))
        assert counter.calls == 1  # read back from disk: TextSynch did not run
        assert isinstance(again, SelvaFeatures) and again.key == first.key
        assert torch.equal(again.sync, first.sync) and again.duration == first.duration

        other, _ = extract(model, image, "car engine", 25.0, 0.0, str(cache))
        assert counter.calls == 2 and other.key != first.key
        assert len(list(cache.iterdir())) == 2

        (cache / f"{first.key}.pt").write_bytes(b"not a checkpoint")
        healed, _ = extract(model, image, "dog barking", 25.0, 0.0, str(cache))
        assert counter.calls == 3 and torch.equal(healed.sync, first.sync)
        assert torch.equal(torch.load(cache / f"{first.key}.pt", weights_only=True)["sync"], first.sync)
    finally:
        counter.remove()


def test_the_cache_defaults_to_the_system_temp_folder(model, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    features, _ = extract(model, painted(20), "rain", 25.0, 0.0, "")
    assert (tmp_path / "selva-features" / f"{features.key}.pt").is_file()


# -- inside ComfyUI ---------------------------------------------------------------------------------


def test_inside_comfyui_weights_come_from_models_selva(comfyui, fresh_tiny_hub):
    models_selva = comfyui.models_dir / "selva"
    fresh_tiny_hub.write_weights_dir(models_selva)
    shutil.rmtree(fresh_tiny_hub.cache_dir)  # nothing left in the Hugging Face cache
    (pipe,) = load_model("tiny_16k", "fp32", "auto")
    assert comfyui.folders["selva"][0] == [str(models_selva)]  # registered with folder_paths
    assert pipe.device == torch.device("cpu")  # ComfyUI's device
    assert load_model("tiny_16k", "fp32", "auto")[0] is pipe  # kept across executions


def test_a_selva_folder_from_extra_model_paths_is_searched_too(comfyui, fresh_tiny_hub, tmp_path):
    elsewhere = tmp_path / "shared_models" / "selva"
    comfyui.folders["selva"] = ([str(elsewhere)], set())  # as extra_model_paths.yaml registers it
    fresh_tiny_hub.write_weights_dir(elsewhere)
    shutil.rmtree(fresh_tiny_hub.cache_dir)
    load_model("tiny_16k", "fp32", "auto")
    assert comfyui.folders["selva"][0] == [str(elsewhere), str(comfyui.models_dir / "selva")]
    assert not (comfyui.models_dir / "selva").exists()  # the folder with the weights was enough


def test_missing_weights_name_each_file_its_size_and_the_download_command(comfyui, fresh_tiny_hub):
    fresh_tiny_hub.remove("jnwnlee/SelVA", GENERATOR)
    models_selva = comfyui.models_dir / "selva"
    with pytest.raises(WeightsError) as caught:
        load_model("tiny_16k", "fp32", "auto")
    message = str(caught.value)
    size = human_size(len(fresh_tiny_hub.files["jnwnlee/SelVA"][GENERATOR]))
    assert f"jnwnlee/SelVA: {GENERATOR} ({size})" in message
    assert f"put it at {models_selva / GENERATOR}" in message
    assert f"selva download --variant tiny_16k --weights-dir {models_selva}" in message
    assert "weights/, ext_weights/, flan-t5-base/, DFN5B-CLIP-ViT-H-14-384/" in message
    assert models_selva.is_dir()  # made, so the message points at a real folder


def test_outside_comfyui_missing_weights_point_at_the_hugging_face_cache(fresh_tiny_hub):
    loader.release()
    fresh_tiny_hub.remove("jnwnlee/SelVA", GENERATOR)
    with pytest.raises(WeightsError, match=r"selva download --variant tiny_16k$"):
        load_model("tiny_16k", "fp32", "auto")


def test_the_sampler_reports_progress_and_stops_when_cancelled(comfyui, model, tmp_path):
    features, _ = extract(model, painted(25), "rain", 25.0, 0.0, str(tmp_path))
    sample(model, features, "rain", "", 0.0, 3, 4.5, 0)
    assert comfyui.progress == [(1, 3), (2, 3), (3, 3)]

    comfyui.progress.clear()
    comfyui.cancel_at = 2  # the user presses Cancel during step 2
    steps = CallCounter(model.generator)
    try:
        with pytest.raises(comfyui.InterruptProcessingException):
            sample(model, features, "rain", "", 0.0, 10, 4.5, 0)
    finally:
        steps.remove()
    assert steps.calls == 2 and comfyui.progress[-1] == (2, 10)

    comfyui.interrupt = True  # pressed before the sampler starts: no step runs
    steps = CallCounter(model.generator)
    try:
        with pytest.raises(comfyui.InterruptProcessingException):
            sample(model, features, "rain", "", 0.0, 10, 4.5, 0)
    finally:
        steps.remove()
    assert steps.calls == 0


# -- the example workflow ---------------------------------------------------------------------------

# ComfyUI core nodes the example uses: required inputs, optional inputs (name -> type) and output
# types. From ComfyUI's comfy_extras/nodes_video.py (LoadVideo, GetVideoComponents, CreateVideo,
# SaveVideo) and comfy_extras/nodes_audio.py (SaveAudio); COMBO and STRING inputs are widgets.
CORE_NODES = {
    "LoadVideo": ({"file": "COMBO"}, {}, ("VIDEO",)),
    "GetVideoComponents": ({"video": "VIDEO"}, {}, ("IMAGE", "AUDIO", "FLOAT")),
    "CreateVideo": ({"images": "IMAGE", "fps": "FLOAT"}, {"audio": "AUDIO"}, ("VIDEO",)),
    "SaveVideo": (
        {"video": "VIDEO", "filename_prefix": "STRING", "format": "COMBO", "codec": "COMBO"},
        {},
        (),
    ),
    "SaveAudio": ({"audio": "AUDIO", "filename_prefix": "STRING"}, {}, ()),
}


def _node_io(class_type: str) -> tuple[dict[str, object], dict[str, object], tuple[str, ...]]:
    """(required inputs, all inputs, output types) of a node: ours from INPUT_TYPES, core from the table."""
    if class_type in NODE_CLASS_MAPPINGS:
        cls = NODE_CLASS_MAPPINGS[class_type]
        spec = cls.INPUT_TYPES()
        required = {name: kind for name, (kind, _) in spec["required"].items()}
        optional = {name: kind for name, (kind, _) in spec.get("optional", {}).items()}
        return required, {**required, **optional}, cls.RETURN_TYPES
    required, optional, outputs = CORE_NODES[class_type]
    return required, {**required, **optional}, outputs


def test_the_example_workflow_wires_existing_outputs_into_declared_inputs(tiny_hub):
    workflow = json.loads(WORKFLOW.read_text())
    classes = {node["class_type"] for node in workflow.values()}
    assert classes <= set(NODE_CLASS_MAPPINGS) | set(CORE_NODES)
    assert set(NODE_CLASS_MAPPINGS) <= classes
    for node_id, node in workflow.items():
        required, every, _ = _node_io(node["class_type"])
        inputs = node["inputs"]
        assert set(required) <= set(inputs) <= set(every), f"node {node_id} ({node['class_type']})"
        for name, value in inputs.items():
            kind = every[name]
            if isinstance(value, list):  # a link: [source node id, output index]
                source, index = value
                assert source in workflow, f"node {node_id}.{name} links to a missing node {source}"
                outputs = _node_io(workflow[source]["class_type"])[2]
                assert 0 <= index < len(outputs), f"node {node_id}.{name}: {source} has no output {index}"
                assert outputs[index] == kind, f"node {node_id}.{name}: {outputs[index]} into {kind}"
            elif node["class_type"] in NODE_CLASS_MAPPINGS:
                options = NODE_CLASS_MAPPINGS[node["class_type"]].INPUT_TYPES()["required"][name][1]
                if isinstance(kind, list):
                    assert value in kind
                elif kind in ("INT", "FLOAT"):
                    assert options["min"] <= value <= options["max"]
                else:
                    assert kind == "STRING" and isinstance(value, str)
