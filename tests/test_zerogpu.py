"""selva.zerogpu: the switch between the normal path and ZeroGPU's ahead-of-time one, and the
ahead-of-time compile itself through a documented stand-in for the third-party `spaces` package
(tests/standins/spaces.py: it records the calls and runs torch.export's graph eagerly)."""

import logging
import sys
from pathlib import Path

import pytest
import torch

from selva import zerogpu
from selva.spec import DependencyError

STANDINS = Path(__file__).parent / "standins"


def test_off_zerogpu_the_normal_path_and_no_spaces_import(monkeypatch):
    monkeypatch.delenv(zerogpu.ZERO_GPU_ENV, raising=False)
    monkeypatch.delitem(sys.modules, "spaces", raising=False)
    assert not zerogpu.on_zerogpu()
    assert (zerogpu.compile_mode(True), zerogpu.compile_mode(False)) == ("jit", "eager")
    assert "spaces" not in sys.modules


def test_on_zerogpu_without_the_spaces_package_a_warning_and_eager(monkeypatch, caplog):
    monkeypatch.setenv(zerogpu.ZERO_GPU_ENV, "true")
    monkeypatch.setitem(sys.modules, "spaces", None)  # Python's way to make `import spaces` fail
    assert zerogpu.on_zerogpu()
    with caplog.at_level(logging.WARNING, logger="selva.zerogpu"):
        assert zerogpu.compile_mode(True) == "eager"
    assert "the `spaces` package is not installed" in caplog.text
    with pytest.raises(DependencyError, match="requirements.txt"):
        zerogpu.import_spaces()
    assert zerogpu.compile_mode(False) == "eager"


def test_on_zerogpu_the_generator_is_compiled_ahead_per_bucket(tiny_hub, monkeypatch):
    from selva.pipeline import SelvaPipeline

    monkeypatch.setenv(zerogpu.ZERO_GPU_ENV, "1")
    monkeypatch.syspath_prepend(str(STANDINS))
    monkeypatch.setitem(sys.modules, "spaces", None)  # undone after the test: the stand-in does not leak
    del sys.modules["spaces"]
    import spaces

    spaces.calls.clear()
    assert zerogpu.compile_mode(True) == "aot"
    pipe = SelvaPipeline.from_pretrained("tiny_16k", device="cpu", dtype="fp32")
    pipe.set_progress_bar_config(disable=True)
    calls = [dict(video=None, prompt="rain on a tin roof", duration=d, num_samples=n, steps=1, seed=5)
             for d, n in ((8.0, 1), (8.0, 2), (4.0, 1))]  # fmt: skip
    eager = [pipe(**call).audio for call in calls]
    compiled = zerogpu.compile_ahead(pipe)
    assert sorted(rows for rows, _ in compiled) == [2, 4]  # both CFG branches of 1 and 2 candidates
    assert ("GPU", zerogpu.AOT_GPU_SECONDS) in spaces.calls
    assert [c[0] for c in spaces.calls].count("aoti_compile") == 2
    seen = []
    for graph in compiled.values():  # which calls reach a compiled graph
        graph.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    for call, expected in zip(calls, eager, strict=True):
        torch.testing.assert_close(pipe(**call).audio, expected, atol=1e-4, rtol=1e-4)
    # 8 s with 1 and 2 candidates run compiled; 4 s (another latent length) runs eager
    assert seen == [2, 4]
