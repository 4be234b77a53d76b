"""`selva batch` beyond one process: --shard i/n, torchrun's environment, and --ray (on a local CPU Ray)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import av
import pytest

from selva import cli
from selva.distributed import select_shard, shard_arg, shard_from_env

ROOT = Path(__file__).resolve().parents[1]
TINY = "tiny_16k"
FAST = ["--variant", TINY, "--steps", "2", "--device", "cpu", "--precision", "fp32"]


def run(capsys, *argv: str | Path) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def summary_counts(out: str) -> dict[str, str]:
    lines = out[out.index("summary") :].splitlines()[1:5]
    return dict(line.split() for line in lines)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Three tiny clips and a file that only pretends to be a video."""
    from media_factory import make_video

    folder = tmp_path_factory.mktemp("clips")
    for name in ("dog", "cat", "bird", "street"):
        make_video(folder / f"{name}.mp4", seconds=0.8)
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video" * 32)
    (folder / "jobs.csv").write_text(
        "video,prompt,seed\ndog.mp4,dog barking,1\ncat.mp4,cat meow,2\nbird.mp4,bird song,3\n"
    )
    return folder


# -- sharding: pure ------------------------------------------------------------------------------------


def test_shard_arg_parses_and_refuses():
    assert shard_arg("1/4") == (1, 4) and shard_arg(" 0 / 1 ") == (0, 1)
    for bad in ("4/4", "1/0", "-1/2", "a/b", "2"):
        with pytest.raises(argparse.ArgumentTypeError):
            shard_arg(bad)


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_cover_the_list_exactly_once(count):
    items = list(range(10))
    taken = [
        select_shard(items, argparse.Namespace(shard=(i, count), device="cpu"), {}) for i in range(count)
    ]
    assert sorted(x for part in taken for x in part) == items
    assert all(part == items[i::count] for i, part in enumerate(taken))


def test_torchrun_environment_picks_the_shard():
    env = {"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1"}
    assert shard_from_env(env) == (1, 3)
    assert shard_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None  # one process: the whole list
    assert shard_from_env({}) is None
    args = argparse.Namespace(shard=None, device="cpu")  # an explicit --device is kept
    assert select_shard(list(range(7)), args, env) == [1, 4]
    assert args.device == "cpu"
    # --shard wins over the environment
    assert select_shard(list(range(7)), argparse.Namespace(shard=(0, 2), device="cpu"), env) == [0, 2, 4, 6]


def test_plain_batch_does_not_import_ray():
    code = (
        "import sys; from selva import cli;"
        "cli.build_parser().parse_args(['batch', 'x.csv', '--shard', '0/2']);"
        "import selva.distributed; assert 'ray' not in sys.modules, 'ray imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# -- sharding on the tiny models -----------------------------------------------------------------------


def test_two_shards_write_every_clip_once(tiny_hub, clips, tmp_path, capsys):
    out_dir = tmp_path / "out"
    written: list[set[str]] = []
    for index in (0, 1):
        before = set(p.name for p in out_dir.iterdir()) if out_dir.exists() else set()
        code, out, err = run(
            capsys, "batch", clips / "jobs.csv", "--shard", f"{index}/2", "--out", out_dir, *FAST
        )
        assert code == 0, err
        written.append({p.name for p in out_dir.iterdir()} - before)
    # Positions 0 and 2 (dog, bird) then 1 (cat): disjoint, and together the whole list.
    assert written == [{"dog.flac", "dog.mp4", "bird.flac", "bird.mp4"}, {"cat.flac", "cat.mp4"}]
    # A shard rerun resumes: its clips exist, nothing is redone.
    code, out, _ = run(capsys, "batch", clips / "jobs.csv", "--shard", "1/2", "--out", out_dir, *FAST)
    assert code == 0 and summary_counts(out)["skipped"] == "1" and summary_counts(out)["done"] == "0"


def test_shards_split_and_resume_stems_rows_by_their_files(clips, tmp_path, capsys):
    """A stems row is one clip of the list: its shard owns all its files, and skips it once they exist."""
    listing = clips / "stems_jobs.csv"
    listing.write_text("video,prompt,prompt_2\ndog.mp4,dog barking,car engine\ncat.mp4,cat meow,\n")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    files = ["dog_1-dog-barking.flac", "dog_2-car-engine.flac", "dog_mix.flac", "dog_mix.mp4"]
    for name in files:
        (out_dir / name).write_bytes(b"done")
    argv = ["batch", listing, "--out", out_dir, "--variant", "nope"]  # loading anything would fail
    code, _, err = run(capsys, *argv, "--shard", "0/2")
    assert code == 2 and "unknown variant 'nope'" in err  # the tracks mp4, written last, is missing
    (out_dir / "dog_tracks.mp4").write_bytes(b"done")
    code, out, err = run(capsys, *argv, "--shard", "0/2")
    assert code == 0, err
    assert summary_counts(out) == {"done": "0", "skipped": "1", "failed": "0", "s/clip": "-"}
    (out_dir / "cat.mp4").write_bytes(b"done")  # shard 1's one-prompt row: cat.flac is missing
    code, _, err = run(capsys, *argv, "--shard", "1/2")
    assert code == 2 and "unknown variant 'nope'" in err


# -- Ray: a local instance on the CPU -----------------------------------------------------------------


STEMS = ["street_1-dog-barking.flac", "street_2-car-engine.flac", "street_mix.flac", "street_mix.mp4"]
STEMS += ["street_tracks.mp4"]


def test_ray_batch_writes_all_reports_broken_and_resumes(tiny_hub, clips, tmp_path, capsys):
    with_broken = clips / "with_broken.csv"
    rows = (clips / "jobs.csv").read_text().replace("video,prompt,seed", "video,prompt,seed,prompt_2,gain_2")
    # A stems row (two prompts: the files of `selva generate` with two --prompt) and a broken clip.
    with_broken.write_text(rows + "street.mp4,dog barking,4,car engine,0.5\nbroken.mp4,dog barking,4\n")
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "batch", with_broken, "--ray", "--workers", "1", "--out", out_dir, *FAST)
    assert code == 1, err
    counts = summary_counts(out)
    assert (counts["done"], counts["skipped"], counts["failed"]) == ("4", "0", "1")
    assert f"{with_broken} line 6 (broken.mp4)" in out  # named in the summary's failure list
    names = sorted(p.name for p in out_dir.iterdir())  # all outputs, and no temporary leftovers
    singles = [f"{n}.{ext}" for n in ("dog", "cat", "bird") for ext in ("flac", "mp4")]
    assert names == sorted(singles + STEMS)
    with av.open(str(out_dir / "street_tracks.mp4")) as container:
        assert [s.metadata.get("name") for s in container.streams.audio] == [
            "mix",
            "dog barking",
            "car engine",
        ]
    import ray

    assert not ray.is_initialized()  # the Ray it started is shut down

    # Finished clips, the stems row's too, are skipped before anything is scheduled (Ray does not
    # even start: the variant would not load).
    stamps = {p.name: p.stat().st_mtime_ns for p in out_dir.iterdir()}
    without_broken = clips / "without_broken.csv"
    without_broken.write_text(with_broken.read_text().replace("broken.mp4,dog barking,4\n", ""))
    code, out, _ = run(
        capsys, "batch", without_broken, "--ray", "--out", out_dir, *FAST[2:], "--variant", "nope"
    )
    assert code == 0
    assert summary_counts(out) == {"done": "0", "skipped": "4", "failed": "0", "s/clip": "-"}
    assert {p.name: p.stat().st_mtime_ns for p in out_dir.iterdir()} == stamps


def test_ray_refuses_shard(tiny_hub, clips, tmp_path, capsys):
    code, _, err = run(
        capsys, "batch", clips / "jobs.csv", "--ray", "--shard", "0/2", "--out", tmp_path, *FAST
    )
    assert code == 2 and "--shard and --ray" in err


def test_ray_missing_weights_fail_before_ray_starts(tiny_hub, clips, tmp_path, capsys):
    # Offline, a revision the cache does not hold means no weights at all.
    argv = ["batch", clips / "jobs.csv", "--ray", "--revision", "no-such-tag", "--out", tmp_path, *FAST]
    code, _, err = run(capsys, *argv)
    assert code == 3, err
    assert "Traceback" not in err
    assert "actor(s)" not in err  # Ray never started: its pool is logged once it is up
