"""selva.compile on the CPU (inductor): compiled networks give the eager outputs, and a second
duration runs on the first compile.

The networks are the smallest that still have every kind of block (joint and
fused DiT blocks; a divided space-time block, the text cross-attention and the
pooling; upsampler, AMP block and fused anti-aliased activations), with
freshly initialised weights: compiling is what is tested here, parity with
the reference is tested elsewhere. Each compile takes a while on two cores, so each network compiles once.
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch._dynamo.utils import counters

from selva.compile import (
    CUDA_GRAPH_MODE,
    CompilePlan,
    bucket_rows,
    compile_networks,
    compile_pipeline,
    compile_plan,
    is_compiled,
)
from selva.compile_cache import INDUCTOR_CACHE_ENV, compile_cache_dir
from selva.models.bigvgan import BigVGAN, BigVGANConfig
from selva.models.generator import Generator, GeneratorConfig
from selva.models.text_synch import MotionFormerConfig, TextSynch, TextSynchConfig
from selva.sequence import SequenceLengths

TINY_GENERATOR = GeneratorConfig(
    latent_dim=8, clip_dim=16, sync_dim=12, text_dim=24, hidden_dim=32, depth=2, fused_depth=1, num_heads=2
)
TINY_TEXT_SYNCH = TextSynchConfig(
    text_dim=24, motionformer=MotionFormerConfig(embed_dim=32, depth=1, num_heads=2, img_size=32)
)
TINY_VOCODER = BigVGANConfig(
    num_mels=8,
    upsample_rates=(4, 2),
    upsample_kernel_sizes=(8, 4),
    upsample_initial_channel=16,
    resblock_kernel_sizes=(3,),
    resblock_dilation_sizes=((1, 3),),
)
TOLERANCE = dict(atol=1e-4, rtol=1e-4)
ROOT = Path(__file__).resolve().parents[1]


def compiles() -> int:
    """Graphs dynamo has compiled in this process so far."""
    return counters["stats"]["unique_graphs"]


def random_snakes(vocoder: BigVGAN) -> BigVGAN:
    """Per-channel snake parameters (they start equal), so broadcasting over channels is exercised."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in vocoder.named_parameters():
            if name.endswith((".alpha", ".beta")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return vocoder.eval()


def test_compile_plans():
    cuda = compile_plan("cuda")
    assert (cuda.generator_mode, cuda.mode, cuda.dynamic, cuda.cuda_graphs) == (
        CUDA_GRAPH_MODE,
        "default",
        None,
        True,
    )
    assert not compile_plan("cuda", "max-autotune-no-cudagraphs").cuda_graphs
    cpu = compile_plan("cpu")
    assert (cpu.generator_mode, cpu.dynamic, cpu.cuda_graphs) == ("default", True, False)
    assert compile_plan("cpu", CUDA_GRAPH_MODE).generator_mode == "default"  # no CUDA graphs off CUDA
    assert compile_plan("mps", "max-autotune").generator_mode == "max-autotune"


def test_compile_pipeline_leaves_an_offloaded_vocoder_eager(tmp_path, monkeypatch):
    # Nothing is compiled before a first call, so this costs no compile time.
    monkeypatch.setenv("SELVA_STATE_DIR", str(tmp_path))
    monkeypatch.delenv(INDUCTOR_CACHE_ENV, raising=False)  # restored after the test
    pipe = SimpleNamespace(
        generator=Generator(TINY_GENERATOR),
        text_synch=TextSynch(TINY_TEXT_SYNCH),
        vocoder=BigVGAN(TINY_VOCODER),
        device=torch.device("cpu"),
        offload=True,
        variant=SimpleNamespace(name="tiny_16k"),
    )
    compile_pipeline(pipe)
    folder = compile_cache_dir("tiny_16k", "cpu")
    assert os.environ[INDUCTOR_CACHE_ENV] == str(folder) and folder.is_dir()
    assert folder.parent == tmp_path / "compile" and folder.name.startswith(torch.__version__)
    assert is_compiled(pipe.generator) and is_compiled(pipe.text_synch, "encode_segments")
    assert not is_compiled(pipe.vocoder)
    forward = pipe.generator.forward
    compile_pipeline(pipe)  # twice is once
    assert pipe.generator.forward is forward


def generator_inputs(gen: Generator, duration: float, seed: int):
    """Both CFG branches in one batch, as the pipeline runs them, at `duration`'s lengths."""
    cfg = gen.config
    n = SequenceLengths.from_duration(duration, sample_rate=16000, hop_length=256)
    g = torch.Generator().manual_seed(seed)
    cond = gen.preprocess_conditions(
        torch.randn(1, n.clip_len, cfg.clip_dim, generator=g),
        torch.randn(1, n.sync_len, cfg.sync_dim, generator=g),
        torch.randn(1, 77, cfg.text_dim, generator=g),
        latent_len=n.latent_len,
    )
    both = cond.cat(gen.empty_conditions(1, latent_len=n.latent_len, clip_len=n.clip_len))
    latent = torch.randn(1, n.latent_len, cfg.latent_dim, generator=g)
    return torch.cat([latent, latent]), torch.full((2,), 0.3), both


def test_compiled_generator_matches_eager_at_two_durations():
    gen = Generator(TINY_GENERATOR).eval()
    inputs = [generator_inputs(gen, 2.0, 0), generator_inputs(gen, 1.5, 1)]
    with torch.inference_mode():
        eager = [gen(*x) for x in inputs]
        compile_networks(gen, None, None, device="cpu")
        before = compiles()
        for x, expected in zip(inputs, eager, strict=True):
            torch.testing.assert_close(gen(*x), expected, **TOLERANCE)
    assert compiles() == before + 1  # one graph, dynamic in the sequence lengths


def test_compiled_text_synch_matches_eager_at_two_durations():
    ts = TextSynch(TINY_TEXT_SYNCH).eval()
    size = TINY_TEXT_SYNCH.motionformer.img_size
    g = torch.Generator().manual_seed(0)
    # 32 and 24 frames (3 and 2 segments), prompts of 7 and 9 T5 tokens
    inputs = [
        (torch.randn(1, frames, 3, size, size, generator=g), torch.randn(1, words, 24, generator=g))
        for frames, words in ((32, 7), (24, 9))
    ]
    with torch.inference_mode():

        def run(video, text):
            # one segment at a time, as the pipeline runs it on the CPU
            return ts(video, text, torch.ones(text.shape[:2], dtype=torch.bool), segment_chunk=1)

        eager = [run(*x) for x in inputs]
        compile_networks(None, ts, None, device="cpu")
        before = compiles()
        for x, expected in zip(inputs, eager, strict=True):
            torch.testing.assert_close(run(*x), expected, **TOLERANCE)
    assert compiles() == before + 1


def test_compiled_vocoder_matches_eager_at_two_durations():
    voc = random_snakes(BigVGAN(TINY_VOCODER))
    g = torch.Generator().manual_seed(0)
    mels = [torch.randn(1, TINY_VOCODER.num_mels, frames, generator=g) for frames in (20, 13)]
    with torch.inference_mode():
        eager = [voc(mel) for mel in mels]
        compile_networks(None, None, voc, device="cpu")
        before = compiles()
        for mel, expected in zip(mels, eager, strict=True):
            torch.testing.assert_close(voc(mel), expected, **TOLERANCE)
    assert compiles() == before + 1


def test_bucket_rows():
    assert [bucket_rows(n) for n in (1, 2, 3, 4, 5, 9, 17, 32, 33, 65)] == [1, 2, 4, 4, 8, 16, 32, 32, 64, 96]


def repeated(conditions, times: int):
    return dataclasses.replace(
        conditions,
        **{
            f.name: getattr(conditions, f.name).repeat_interleave(times, dim=0)
            for f in dataclasses.fields(conditions)
        },
    )


def test_two_row_counts_in_one_bucket_compile_once():
    # Static shapes, as CUDA's first compile: without the padding, 6 rows after 8 would compile again.
    gen = Generator(TINY_GENERATOR).eval()
    static = CompilePlan("cpu", "default", "default", dynamic=False)
    with torch.inference_mode():  # inputs made inside too, as the pipeline makes them (dynamo guards on it)
        latent, t, both = generator_inputs(gen, 1.0, 2)  # 2 rows: both CFG branches of one candidate
        four = (latent.repeat(4, 1, 1), t.repeat(4), repeated(both, 4))  # 8 rows: 4 candidates
        three = (latent.repeat(3, 1, 1), t.repeat(3), repeated(both, 3))  # 6 rows: 3 candidates
        expected = gen(*three)
        compile_networks(gen, None, None, device="cpu", plan=static)
        before = compiles()
        gen(*four)
        got = gen(*three)
    assert compiles() == before + 1  # one graph for the bucket of 8 rows
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, **TOLERANCE)


# One joint block: the least graph that still runs every piece of the forward, since inductor
# compiles it in full in the first process (minutes on two busy cores).
CACHED_GENERATOR = dataclasses.replace(TINY_GENERATOR, depth=1, fused_depth=0)

CHILD = """
import json, sys
import torch
from types import SimpleNamespace
from torch._dynamo.utils import counters
from selva.compile import compile_pipeline
from selva.models.generator import Generator
from test_compile import CACHED_GENERATOR, generator_inputs

torch.manual_seed(0)
gen = Generator(CACHED_GENERATOR).eval()
pipe = SimpleNamespace(generator=gen, text_synch=None, vocoder=None, device=torch.device("cpu"),
                       offload=False, variant=SimpleNamespace(name="tiny_16k"))
compile_pipeline(pipe)
with torch.inference_mode():
    gen(*generator_inputs(gen, 1.0, 0))
print(json.dumps({"inductor": dict(counters["inductor"]), "graphs": counters["stats"]["unique_graphs"]}))
"""


def compile_in_a_new_process(state_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != INDUCTOR_CACHE_ENV}
    env.update(
        SELVA_STATE_DIR=str(state_dir),
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        TORCHINDUCTOR_COMPILE_THREADS="1",  # no pool of compile workers for one tiny graph
    )
    done = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_second_process_reads_the_compile_cache(tmp_path):
    first = compile_in_a_new_process(tmp_path)
    assert first["inductor"].get("fxgraph_cache_miss", 0) >= 1  # compiled, and stored
    folder = compile_cache_dir("tiny_16k", "cpu")  # named alike in this process (same torch and CPU)
    assert (tmp_path / "compile" / folder.name).is_dir()
    second = compile_in_a_new_process(tmp_path)
    assert second["graphs"] == first["graphs"]  # dynamo traced the same graphs again...
    assert second["inductor"].get("fxgraph_cache_miss", 0) == 0  # ...and inductor compiled none of them
    assert second["inductor"].get("fxgraph_cache_hit", 0) == first["inductor"]["fxgraph_cache_miss"]
