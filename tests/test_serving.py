"""selva/serving.py without gradio: requests, the resident pipeline and its swaps (UI: test_app.py)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from media_factory import make_video

from selva.errors import InputError, WeightsError, is_out_of_memory
from selva.serving import GenerationService, PipelineSlot, parse_request

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
    assert "HF_HUB_OFFLINE=1" in message
    assert slot.pipe is resident and not slot.lock.locked()

    # The next request is served by the same pipeline object: no reload, same result.
    again = service.run(parse_request(clip, "dog barking", "", 2, 4.5, 5, 0, 0, None, 1))
    assert slot.pipe is resident and "model loaded in" not in again.info
    assert "tiny_16k on cpu (fp32)" in again.info
