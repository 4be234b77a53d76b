"""Variant registry and weight look-up: the tiny Hub offline, missing/corrupt files, local folders."""

import dataclasses
import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from tiny_hub import TINY_16K, TINY_44K, build_tiny_hub

import selva.hub
from selva.hub import REPOS, local_path, required_files, resolve, verify_md5
from selva.hub_network import DownloadTracker, hub_unreachable
from selva.loading import network_config
from selva.models.bigvgan import BigVGAN
from selva.models.generator import Generator
from selva.models.text_synch import TextSynch
from selva.models.vae import VAEDecoder
from selva.spec import InputError, WeightsError
from selva.variants import (
    RELEASED,
    VARIANTS_FILE_ENV,
    Variant,
    get_variant,
    human_size,
    known_variants,
    read_variants_file,
    write_variants_file,
)

ROOT = Path(__file__).resolve().parents[1]
SELVA = REPOS["selva"]
GEN_16K = "weights/generator_small_16k_sup_5.pth"


# -- the registry -----------------------------------------------------------------------------


def test_unknown_variant_lists_known_names():
    with pytest.raises(InputError) as err:
        get_variant("huge_96k")
    for name in ("small_16k", "small_44k", "medium_44k", "large_44k"):
        assert name in str(err.value)


def test_real_variants_name_the_reference_files():
    small = get_variant("small_16k")
    assert (small.sample_rate, small.hop_length, small.vocoder) == (16_000, 256, "bigvgan_v1")
    assert small.generator_file.md5 == "1cb0f0deec52de37f67b1fd9965337d0"
    paths = {(f.repo, f.path) for f in required_files("small_16k")}
    assert {
        (SELVA, GEN_16K),
        (SELVA, "weights/video_enc_sup_5.pth"),
        (SELVA, "ext_weights/v1-16.pth"),
        (SELVA, "ext_weights/best_netG.pt"),
        (REPOS["t5"], "model.safetensors"),
        (REPOS["clip"], "open_clip_pytorch_model.bin"),
    } <= paths
    # inference never needs the plain Synchformer
    assert not any("synchformer" in p for _, p in paths)
    for name in ("small_44k", "medium_44k", "large_44k"):
        v = get_variant(name)
        assert (v.sample_rate, v.hop_length, v.vocoder) == (44_100, 512, "bigvgan_v2")
        assert v.vocoder_config is None and v.vocoder_config_file.repo == REPOS["bigvgan_v2"]
        assert v.vae_file.path == "ext_weights/v1-44.pth"
        assert v.generator_file.alt_paths == (f"weights/generator_{name.split('_')[0]}_44khz_sup_5.pth",)
        assert v.text_synch_file == small.text_synch_file  # one video encoder for all
    assert get_variant("large_44k").generator_file.md5 == "ab3db08b124d3aaa53eb7a1f52f1fb3f"
    assert human_size(small.generator_file.size) == "629 MB"


@pytest.mark.parametrize("name", ["small_16k", "small_44k", "medium_44k", "large_44k"])
def test_registry_configs_fit_the_real_checkpoints(name, fixtures_dir):
    """Each variant's network configs, built at real size on `meta`, load its files' manifests strictly."""
    manifests = json.loads((fixtures_dir / "manifests.json").read_text())["files"]
    v = get_variant(name)
    nets = [
        (Generator, network_config(v, "generator"), v.generator_file.path),
        (TextSynch, network_config(v, "text_synch"), v.text_synch_file.path),
        (VAEDecoder, network_config(v, "vae"), v.vae_file.path),
    ]
    if v.vocoder_config is not None:  # the 44.1 kHz vocoder's config comes from its repo
        vocoder = network_config(v, "vocoder")
        nets.append((BigVGAN, vocoder, f'{v.vocoder_file.path} (under key "generator")'))
    for cls, config, path in nets:
        with torch.device("meta"):
            net = cls(config)
            state = {
                k: torch.empty(t["shape"], dtype=getattr(torch, t["dtype"]))
                for k, t in manifests[path].items()
            }
        net.load_state_dict(state, strict=True, assign=True)  # raises on any key or shape mismatch


def test_every_variant_round_trips_through_json(tiny_hub):
    for variant in [*RELEASED.values(), *tiny_hub.variants.values()]:
        data = json.loads(json.dumps(variant.to_dict()))
        assert Variant.from_dict(data) == variant, variant.name
    with pytest.raises(TypeError):
        RELEASED["mine"] = RELEASED["small_16k"]  # read-only: extra variants come from a file


def test_a_variants_file_adds_variants_by_their_fields_not_their_names(tmp_path, monkeypatch):
    # Named like a 16 kHz model, built like small_44k: its fields decide, not its name.
    mine = dataclasses.replace(RELEASED["small_44k"], name="mine_16k", description="my fine-tune")
    path = write_variants_file(tmp_path / "mine.json", [mine])
    assert read_variants_file(path) == {"mine_16k": mine}
    monkeypatch.setenv(VARIANTS_FILE_ENV, str(path))
    assert list(known_variants()) == [*RELEASED, "mine_16k"]
    got = get_variant("mine_16k")
    assert (got.sample_rate, got.hop_length, got.vocoder) == (44_100, 512, "bigvgan_v2")
    monkeypatch.delenv(VARIANTS_FILE_ENV)
    with pytest.raises(InputError, match="unknown variant 'mine_16k'"):
        get_variant("mine_16k")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda data: data["variants"][0].update(name="small_16k"), "the name 'small_16k' is taken"),
        (lambda data: data["variants"][0].update(vocoder="hifigan"), "vocoder must be one of bigvgan_v1"),
        (lambda data: data["variants"][0].update(sample_rate="16k"), "sample_rate must be a whole number"),
        (lambda data: data["variants"][0].pop("vae_file"), "missing vae_file"),
        (lambda data: data["variants"][0]["t5"].update(extra=1), "unknown extra"),
        (lambda data: data.update(version=2), "has version 2"),
        (lambda data: data.pop("format"), "is not a variants file"),
    ],
    ids=["released-name", "vocoder", "rate", "missing", "unknown-key", "version", "format"],
)
def test_a_bad_variants_file_is_an_input_error_naming_the_fault(tmp_path, monkeypatch, edit, message):
    path = write_variants_file(tmp_path / "mine.json", [dataclasses.replace(RELEASED["small_16k"], name="a")])
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    monkeypatch.setenv(VARIANTS_FILE_ENV, str(path))
    with pytest.raises(InputError, match=re.escape(message)) as err:
        get_variant("small_16k")  # a broken file is reported, not half used
    assert str(path) in str(err.value)


def test_a_missing_or_unreadable_variants_file_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(VARIANTS_FILE_ENV, str(tmp_path / "nope.json"))
    with pytest.raises(InputError, match=VARIANTS_FILE_ENV):
        known_variants()
    (tmp_path / "bad.json").write_text("{not json")
    monkeypatch.setenv(VARIANTS_FILE_ENV, str(tmp_path / "bad.json"))
    with pytest.raises(InputError, match="not valid JSON"):
        known_variants()


def test_a_child_process_knows_the_tiny_variants_from_the_environment_alone(tiny_hub):
    """`python -m selva` started with the tiny hub's environment: nothing registers tiny_16k there."""
    env = {**os.environ, **tiny_hub.env(offline=True), "PYTHONPATH": str(ROOT)}  # tests/ not importable
    command = [sys.executable, "-m", "selva", "download", "--variant", TINY_44K]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    paths = dict(line.split("\t")[1:] for line in result.stdout.splitlines())
    assert paths["generator"] == str(tiny_hub.path(SELVA, "weights/generator_small_44k_sup_5.pth"))
    assert paths["vocoder_config"] == str(tiny_hub.path(REPOS["bigvgan_v2"], "config.json"))
    env.pop(VARIANTS_FILE_ENV)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "unknown variant 'tiny_44k'" in result.stderr


# -- the tiny Hub, offline ----------------------------------------------------------------------


def test_tiny_hub_resolves_offline(tiny_hub):
    paths = resolve(TINY_16K)
    snapshot = tiny_hub.snapshot(SELVA)
    assert paths["generator"] == snapshot / GEN_16K
    assert paths["vocoder"] == snapshot / "ext_weights/best_netG.pt"
    assert (paths["t5"] / "config.json").is_file() and (paths["t5"] / "tokenizer.json").is_file()
    assert (paths["clip"] / "open_clip_config.json").is_file()
    assert "vocoder_config" not in paths
    paths44 = resolve(TINY_44K)
    assert paths44["vocoder_config"].name == "config.json"
    assert paths44["vae"].name == "v1-44.pth"


def test_revision_pin(tiny_hub):
    commit = tiny_hub.commit(SELVA)
    assert resolve(TINY_16K, revision=commit)["generator"].parent.parent.name == commit
    with pytest.raises(WeightsError) as err:
        resolve(TINY_16K, revision="v9")
    assert GEN_16K in str(err.value)
    assert "flan-t5" not in str(err.value)  # the pin applies to the SelVA repo only


def _entries(message: str) -> list[str]:
    return re.findall(r"^  - (\S+): (\S+) \(([^)]+)\)$", message, flags=re.M)


def test_offline_missing_files_are_all_listed(fresh_tiny_hub, tmp_path):
    hub = fresh_tiny_hub
    gone = [(SELVA, GEN_16K), (SELVA, "ext_weights/best_netG.pt"), (REPOS["t5"], "model.safetensors")]
    for repo, path in gone:
        hub.remove(repo, path)
    with pytest.raises(WeightsError) as err:
        resolve(TINY_16K)
    message = str(err.value)
    v = get_variant(TINY_16K)
    sizes = {(f.repo, f.path): human_size(f.size) for f in required_files(v)}
    assert sorted(_entries(message)) == sorted((r, p, sizes[r, p]) for r, p in gone)
    assert "3 file(s) missing" in message and "HF_HUB_OFFLINE" in message
    assert f"put it at <weights_dir>/{GEN_16K}" in message
    assert "put it at <weights_dir>/flan-t5-base/model.safetensors" in message
    # with a local folder the destinations are inside it
    with pytest.raises(WeightsError) as err:
        resolve(TINY_16K, weights_dir=tmp_path)
    assert f"put it at {tmp_path / GEN_16K}" in str(err.value)


def test_offline_without_any_cache_lists_every_file(tmp_path, fixtures_dir, monkeypatch):
    hub = build_tiny_hub(tmp_path, fixtures_dir, repos=())
    hub.activate(monkeypatch, offline=True)
    with pytest.raises(WeightsError) as err:
        resolve(TINY_44K)
    listed = {(r, p) for r, p, _ in _entries(str(err.value))}
    assert listed == {(f.repo, f.path) for f in required_files(TINY_44K)}


def test_corrupt_file_offline_is_reported(fresh_tiny_hub):
    fresh_tiny_hub.corrupt(SELVA, GEN_16K)
    with pytest.raises(WeightsError) as err:
        resolve(TINY_16K)
    message = str(err.value)
    assert GEN_16K in message and "corrupt" in message and "HF_HUB_OFFLINE" in message
    assert "best_netG" not in message


@pytest.mark.parametrize("truncate", [False, True], ids=["flipped", "partial"])
def test_corrupt_file_is_fetched_again_online(fresh_tiny_hub, monkeypatch, truncate):
    hub = fresh_tiny_hub
    hub.serve(monkeypatch)
    blob = hub.corrupt(SELVA, GEN_16K, truncate=truncate)
    paths = resolve(TINY_16K)
    assert hub.calls == [(SELVA, GEN_16K, True)]  # only the broken file, with force_download
    md5 = get_variant(TINY_16K).generator_file.md5
    assert hashlib.md5(paths["generator"].read_bytes()).hexdigest() == md5
    assert blob.read_bytes() == hub.files[SELVA][GEN_16K]


T5_WEIGHTS = "model.safetensors"


def test_corrupt_encoder_file_without_md5_is_caught_by_its_blob_sha256(fresh_tiny_hub, monkeypatch):
    """T5 has no MD5 in the registry; the Hub names its blob by its SHA-256, which is checked instead."""
    t5 = get_variant(TINY_16K).t5
    assert all(f.md5 is None for f in t5.files)
    fresh_tiny_hub.corrupt(t5.repo, T5_WEIGHTS)
    with pytest.raises(WeightsError) as err:
        resolve(TINY_16K)
    assert T5_WEIGHTS in str(err.value) and "SHA-256" in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)

    fresh_tiny_hub.serve(monkeypatch)
    paths = resolve(TINY_16K)
    assert fresh_tiny_hub.calls == [(t5.repo, T5_WEIGHTS, True)]  # fetched again, nothing else
    assert (paths["t5"] / T5_WEIGHTS).read_bytes() == fresh_tiny_hub.files[t5.repo][T5_WEIGHTS]


def test_download_fills_a_weights_dir_that_then_serves_alone(fresh_tiny_hub, tmp_path):
    folder = tmp_path / "weights"  # made by download
    selva.hub.download(TINY_44K, weights_dir=folder)
    for _, f in get_variant(TINY_44K).all_files():
        target = local_path(folder, f)
        assert target.read_bytes() == fresh_tiny_hub.files[f.repo][f.path], target
    assert not list(folder.rglob("*.part"))  # nothing half-written left behind

    shutil.rmtree(fresh_tiny_hub.cache_dir)  # the folder alone, offline
    paths = resolve(TINY_44K, weights_dir=folder)
    assert all(p.is_relative_to(folder) for p in paths.values()), paths


def test_download_into_an_empty_cache(tmp_path, fixtures_dir, monkeypatch):
    hub = build_tiny_hub(tmp_path, fixtures_dir, repos=())
    hub.serve(monkeypatch)
    paths = selva.hub.download(TINY_44K)
    fetched = {(repo, path) for repo, path, _ in hub.calls}
    assert fetched == {(f.repo, f.path) for f in required_files(TINY_44K)}
    assert paths["vocoder"].read_bytes() == hub.files[REPOS["bigvgan_v2"]]["bigvgan_generator.pt"]
    hub.calls.clear()
    resolve(TINY_44K)  # everything cached and verified: nothing is fetched again
    assert hub.calls == []


def _rename_44k_generator(files):
    content = files[SELVA].pop("weights/generator_small_44k_sup_5.pth")
    files[SELVA]["weights/generator_small_44khz_sup_5.pth"] = content


def test_other_spelling_of_44k_generator_online(tmp_path, fixtures_dir, monkeypatch):
    hub = build_tiny_hub(tmp_path, fixtures_dir, repos=(), edit=_rename_44k_generator)
    hub.serve(monkeypatch)
    paths = resolve(TINY_44K)
    assert paths["generator"].name == "generator_small_44khz_sup_5.pth"
    assert [c for c in hub.calls if c[1] == "<list>"] == [(SELVA, "<list>", False)]  # listed once


def test_other_spelling_of_44k_generator_offline(tmp_path, fixtures_dir, monkeypatch):
    hub = build_tiny_hub(tmp_path, fixtures_dir, edit=_rename_44k_generator)
    hub.activate(monkeypatch, offline=True)
    assert resolve(TINY_44K)["generator"].name == "generator_small_44khz_sup_5.pth"


# -- local folders ------------------------------------------------------------------------------


def _no_hub(*args, **kwargs):
    raise AssertionError("the Hub (or its cache) was consulted")


@pytest.mark.parametrize("offline", [True, False], ids=["offline", "online"])
def test_local_weights_dir_needs_no_network_and_no_cache(tmp_path, fixtures_dir, monkeypatch, offline):
    hub = build_tiny_hub(tmp_path / "hub", fixtures_dir, repos=())  # an empty HF cache
    hub.activate(monkeypatch, offline=offline)
    monkeypatch.setattr(selva.hub, "HfApi", _no_hub)
    monkeypatch.setattr(selva.hub, "hf_hub_download", _no_hub)
    folder = hub.write_weights_dir(tmp_path / "weights_dir", TINY_16K)
    paths = resolve(TINY_16K, weights_dir=folder)
    assert paths["generator"] == folder / GEN_16K
    assert paths["vocoder"] == folder / "ext_weights/best_netG.pt"
    assert paths["t5"] == folder / "flan-t5-base"
    assert paths["clip"] == folder / "DFN5B-CLIP-ViT-H-14-384"
    monkeypatch.setenv("SELVA_WEIGHTS_DIR", str(folder))  # the same through the environment
    assert resolve(TINY_16K) == paths


def test_reference_layout_folder_with_text_encoders_from_the_cache(tiny_hub, tmp_path):
    folder = tiny_hub.write_weights_dir(tmp_path, TINY_16K, text_encoders=False)
    paths = resolve(TINY_16K, weights_dir=folder)
    assert paths["text_synch"] == folder / "weights/video_enc_sup_5.pth"
    assert paths["t5"] == tiny_hub.snapshot(REPOS["t5"])


def test_corrupt_local_file_is_reported(tiny_hub, tmp_path):
    folder = tiny_hub.write_weights_dir(tmp_path, TINY_16K)
    vae = folder / "ext_weights/v1-16.pth"
    vae.write_bytes(vae.read_bytes()[:1000])
    with pytest.raises(WeightsError) as err:
        resolve(TINY_16K, weights_dir=folder)
    assert str(vae) in str(err.value) and "replace it" in str(err.value)


def test_weights_dir_must_be_a_folder(tiny_hub, tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match="not a folder"):
        resolve(TINY_16K, weights_dir=tmp_path / "nowhere")
    monkeypatch.setenv("SELVA_WEIGHTS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(WeightsError, match="SELVA_WEIGHTS_DIR"):
        resolve(TINY_16K)


def test_local_path_layout(tmp_path):
    v = get_variant("small_44k")
    assert local_path(tmp_path, v.vae_file) == tmp_path / "ext_weights/v1-44.pth"
    vocoder = tmp_path / "bigvgan_v2_44khz_128band_512x/bigvgan_generator.pt"
    assert local_path(tmp_path, v.vocoder_file) == vocoder


# -- MD5 once -----------------------------------------------------------------------------------


def test_md5_is_remembered_until_the_file_changes(fresh_tiny_hub, monkeypatch):
    hub = fresh_tiny_hub
    path = hub.path(SELVA, GEN_16K)
    md5 = get_variant(TINY_16K).generator_file.md5
    assert verify_md5(path, md5)
    state = json.loads((hub.root / "selva-state" / "verified_md5.json").read_text())
    assert state[str(path.resolve())]["md5"] == md5

    # A new process (no in-memory memo) trusts the record instead of hashing again.
    monkeypatch.setattr(selva.checksums, "_memo", {})
    hashed = []
    real_new = hashlib.new
    monkeypatch.setattr(
        selva.checksums.hashlib, "new", lambda name, **kw: hashed.append(name) or real_new(name, **kw)
    )
    assert verify_md5(path, md5) and hashed == []
    hub.corrupt(SELVA, GEN_16K)  # new mtime: hashed again, and found wrong
    assert not verify_md5(path, md5) and hashed == ["md5"]


def test_state_dir_unwritable_only_costs_a_rehash(fresh_tiny_hub, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SELVA_STATE_DIR", str(blocker / "sub"))  # cannot be created
    monkeypatch.setattr(selva.checksums, "_memo", {})
    assert verify_md5(fresh_tiny_hub.path(SELVA, GEN_16K), get_variant(TINY_16K).generator_file.md5)


def test_fetch_files_offline_missing(fresh_tiny_hub):
    shutil.rmtree(fresh_tiny_hub.snapshot(REPOS["clip"]))
    with pytest.raises(WeightsError, match="open_clip_config.json") as err:
        selva.hub.fetch_files(get_variant("small_16k").clip.files)
    assert "open_clip_pytorch_model.bin (3.95 GB)" in str(err.value)


# -- no network, slow networks, download progress ----------------------------------------------


def _refused_endpoint() -> str:
    """An http endpoint on this machine where nothing listens: every connection is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_no_network_fails_at_once_with_the_missing_files_message(fresh_tiny_hub, monkeypatch, caplog):
    hub = fresh_tiny_hub
    hub.remove(SELVA, GEN_16K)
    hub.remove(REPOS["t5"], "model.safetensors")
    hub.activate(monkeypatch, offline=False)
    monkeypatch.setattr(constants, "ENDPOINT", _refused_endpoint())
    with pytest.raises(WeightsError) as err:
        resolve(TINY_16K)
    message = str(err.value)
    assert {(r, p) for r, p, _ in _entries(message)} == {(SELVA, GEN_16K), (REPOS["t5"], "model.safetensors")}
    assert "2 file(s) missing and there is no network" in message and constants.ENDPOINT in message
    assert "connect to the network and run `python -m selva download --variant tiny_16k`" in message
    assert "HF_HUB_OFFLINE" not in message  # it is not set: never advise unsetting it
    # one look at the Hub, none of huggingface_hub's retries
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]


def test_offline_message_says_hf_hub_offline_is_set(fresh_tiny_hub):
    fresh_tiny_hub.remove(SELVA, GEN_16K)
    with pytest.raises(WeightsError) as err:
        resolve(TINY_16K)
    message = str(err.value)
    assert "missing and HF_HUB_OFFLINE is set" in message and "no network" not in message
    assert "unset HF_HUB_OFFLINE and run `python -m selva download --variant tiny_16k`" in message


def test_the_network_check_tells_an_answer_from_a_refused_connection(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the tiny Hub of other tests may have set it
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        assert hub_unreachable(timeout=30) is None
    finally:
        server.shutdown()
        server.server_close()
    monkeypatch.setattr(constants, "ENDPOINT", _refused_endpoint())
    assert "refused" in hub_unreachable(timeout=30)


def test_the_download_command_without_network_exits_3_naming_what_to_run(tmp_path):
    """The real `small_16k`, an empty cache, a refused Hub: the first start's case, end to end."""
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_ENDPOINT": _refused_endpoint(),
        "SELVA_STATE_DIR": str(tmp_path / "state"),
        "PYTHONPATH": str(ROOT),
    }
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "SELVA_WEIGHTS_DIR"):
        env.pop(key, None)
    # The timeout only bounds a broken build; the check itself gives up within 5 s by construction.
    done = subprocess.run(
        [sys.executable, "-m", "selva", "download", "--variant", "small_16k"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "small_16k: 11 file(s) missing and there is no network" in done.stderr
    assert "`python -m selva download --variant small_16k`" in done.stderr
    assert "Retrying" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), done.stderr  # no line printed twice


def test_hub_warnings_print_once_under_a_configured_root_logger():
    code = (
        "import logging; logging.basicConfig(format='%(message)s'); "
        "import selva.hub_network as n; n.one_line_per_hub_warning(); "
        "logging.getLogger('huggingface_hub.utils._http').warning('Retrying in 1s [Retry 1/5].')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stderr.count("Retrying in 1s") == 1, done.stderr


def test_download_progress_names_files_and_counts_bytes(tmp_path, fixtures_dir, monkeypatch):
    hub = build_tiny_hub(tmp_path, fixtures_dir, repos=())  # nothing cached: every file downloads
    hub.serve(monkeypatch)
    monkeypatch.setattr(selva.hub_network, "REPORT_EVERY_SECONDS", 0.0)  # every bar update reported
    seen = []
    resolve(TINY_16K, on_download=seen.append)
    files = required_files(TINY_16K)
    total = sum(f.size for f in files)
    assert {p.total_bytes for p in seen} == {total} and {p.file_count for p in seen} == {len(files)}
    assert {p.file for p in seen} - {""} == {f.path for f in files}
    done = [p.bytes_done for p in seen]
    assert done == sorted(done) and done[-1] == total and seen[-1].fraction == 1.0
    assert seen[-1].files_done == len(files)
    # the fake download's bar counted bytes inside the files, not only at their ends
    ends = {sum(f.size for f in files[:k]) for k in range(len(files) + 1)}
    assert set(done) - ends
    text = seen[len(seen) // 2].describe()
    assert text.startswith("Downloading tiny_16k: ") and " of " in text and "file " in text
    hub.calls.clear()
    seen.clear()
    resolve(TINY_16K, on_download=seen.append)  # all cached now: nothing to report
    assert seen == [] and hub.calls == []


def test_progress_speed_and_time_left_from_an_explicit_clock():
    now = [100.0]
    f = required_files("small_16k")[0]
    seen = []
    tracker = DownloadTracker("small_16k", [f], seen.append, clock=lambda: now[0])
    tracker.begin(f)
    now[0] = 110.0
    tracker.advance(f.size // 4)  # a quarter in 10 s
    p = seen[-1]
    assert p.bytes_done == f.size // 4 and p.seconds == 10.0
    assert p.speed == pytest.approx(f.size / 40, rel=1e-3)
    assert p.eta == pytest.approx(30, rel=1e-2)
    assert "about 30 s left" in p.describe() and "file 1 of 1" in p.describe()
    tracker.advance(1)  # within REPORT_EVERY_SECONDS of the last report: not reported
    assert len(seen) == 2
    tracker.end(f)
    assert seen[-1].bytes_done == f.size and seen[-1].files_done == 1
