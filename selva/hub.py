"""Which files a variant needs, and where they are on this machine.

Look-up order for every file:

1. `weights_dir` (or `$SELVA_WEIGHTS_DIR`): a folder in the reference layout
   (`weights/`, `ext_weights/`; files of other repos under a folder named
   after the repo, e.g. `flan-t5-base/config.json`). Complete folders are
   used without touching the network.
2. The Hugging Face cache, through `hf_hub_download`: resumable downloads,
   its progress bars, `HF_TOKEN`, `HF_HUB_OFFLINE` and pinned revisions work
   as everywhere else in the ecosystem.

Every file is checked once against its MD5 or blob SHA-256 (`selva.checksums`).
A corrupt file is fetched again; offline, or for a local folder, the error
says which file and what to do. All problems are collected first so one
error lists every missing file, and says why they are missing: HF_HUB_OFFLINE
is set, or there is no network (found by one short look at the Hub before the
first download, `selva.hub_network`, rather than after minutes of retries).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from selva.checksums import STATE_DIR_ENV, blob_sha256, verify_digest, verify_md5
from selva.hub_network import (
    DownloadProgress,
    DownloadTracker,
    accepts_tqdm_class,
    hub_unreachable,
    one_line_per_hub_warning,
)
from selva.spec import WeightsError
from selva.variants import REPOS, Variant, WeightFile, get_variant, human_size

__all__ = [
    "DOWNLOAD_COMMAND",
    "REPOS",
    "STATE_DIR_ENV",
    "DownloadProgress",
    "WeightFile",
    "blob_sha256",
    "download",
    "fetch_files",
    "is_offline",
    "local_path",
    "required_files",
    "resolve",
    "verify_digest",
    "verify_md5",
]

log = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "SELVA_WEIGHTS_DIR"
# What messages tell users to run: works right after the Quick start (`pip install -r requirements.txt`
# puts no `selva` on PATH) and after `pip install -e .` alike.
DOWNLOAD_COMMAND = "python -m selva download"


def required_files(variant: str | Variant) -> list[WeightFile]:
    """Every file `variant` needs for inference (no CLIP image tower, no plain Synchformer)."""
    return [f for _, f in get_variant(variant).all_files()]


def is_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), as huggingface_hub read it or as set since."""
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or env.strip().upper() in {"1", "ON", "YES", "TRUE"}


def local_path(weights_dir: str | Path, f: WeightFile, path: str | None = None) -> Path:
    """Where `f` lives in a local weights folder.

    SelVA's own files keep their repo paths (the reference layout: weights/, ext_weights/);
    other repos' files go under a folder named after the repo, e.g. flan-t5-base/config.json.
    """
    path = path or f.path
    if f.repo == REPOS["selva"]:
        return Path(weights_dir) / path
    return Path(weights_dir) / f.repo.split("/")[-1] / path


def resolve(
    variant: str | Variant,
    *,
    weights_dir: str | Path | None = None,
    revision: str | None = None,
    offline: bool | None = None,
    verify: bool = True,
    on_download: Callable[[DownloadProgress], object] | None = None,
) -> dict[str, Path]:
    """Local paths of everything `variant` needs, downloading what is missing unless offline.

    Returns paths by role: "generator", "text_synch", "vae", "vocoder" (and
    "vocoder_config" for BigVGAN v2) are files; "t5" and "clip" are folders
    holding that encoder's files. `revision` pins the SelVA repo (a branch,
    tag or commit); other repos use the revisions in the registry.
    `on_download` receives a `DownloadProgress` as files download (at each
    file's start and end, and about twice a second between); nothing when all
    are here. Before the first download the Hub is asked once whether it
    answers (`hub_network.NETWORK_CHECK_SECONDS`): with no network this fails
    at once instead of retrying file after file.
    Raises `WeightsError` listing every file that is missing or corrupt.
    """
    v = get_variant(variant)
    weights_dir = _weights_dir(weights_dir)
    offline = is_offline() if offline is None else offline
    finder = _Finder(weights_dir=weights_dir, revision=revision, offline=offline, verify=verify)
    if on_download is not None:
        pending = [f for _, f in v.all_files() if finder.needs_download(f)]
        finder.tracker = DownloadTracker(v.name, pending, on_download)
    found: dict[str, Path] = {}
    for role, f in v.network_files().items():
        path = finder.locate(f)
        if path is not None:
            found[role] = path
    for role, files in (("t5", v.t5.files), ("clip", v.clip.files)):
        folder = finder.locate_group(files)
        if folder is not None:
            found[role] = folder
    if finder.problems:
        raise WeightsError(finder.report(v.name))
    return found


def download(
    variant: str | Variant, *, revision: str | None = None, weights_dir: str | Path | None = None
) -> dict[str, Path]:
    """Fetch and verify every file of `variant` ahead of time (the `selva download` command).

    With `weights_dir`, the folder is filled in the local layout (made if
    needed): files it lacks are fetched into the Hugging Face cache, then
    hard-linked (or copied) into it, so the folder alone serves later runs.
    """
    v = get_variant(variant)
    log.info("%s: %s to check or download", v.name, human_size(v.download_bytes()))
    if weights_dir is None:
        return resolve(v, revision=revision)
    folder = Path(weights_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    found = resolve(v, weights_dir=folder, revision=revision)
    for role, f in v.all_files():
        source = found[role] / f.path if role in ("t5", "clip") else found[role]
        target = local_path(folder, f, _repo_path_of(source, f))
        if not target.exists():
            _place(source, target)
    return resolve(v, weights_dir=folder, revision=revision, offline=True, verify=False)  # checked above


def _place(source: Path, target: Path) -> None:
    """`source` at `target`: a hard link where the file system allows it, else a copy; never half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    try:
        try:
            os.link(source.resolve(), partial)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(source, partial)
        os.replace(partial, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise WeightsError(f"cannot write {target}: {exc}") from exc


def fetch_files(
    files: Sequence[WeightFile],
    *,
    revision: str | None = None,
    offline: bool | None = None,
    on_download: Callable[[DownloadProgress], object] | None = None,
) -> Path:
    """The folder (one snapshot of one repo) holding `files`, downloaded as needed.

    For a text encoder loaded on its own; `revision` overrides the files' own;
    `on_download` as for `resolve`.
    """
    offline = is_offline() if offline is None else offline
    finder = _Finder(weights_dir=None, revision=None, offline=offline, verify=True)
    files = tuple(replace(f, revision=revision or f.revision) for f in files)
    if on_download is not None:
        pending = [f for f in files if finder.needs_download(f)]
        finder.tracker = DownloadTracker(files[0].repo, pending, on_download)
    folder = finder.locate_group(files)
    if finder.problems or folder is None:
        raise WeightsError(finder.report(files[0].repo))
    return folder


# -- look-up ------------------------------------------------------------------------------------


@dataclass
class _Problem:
    file: WeightFile
    kind: str  # "missing" | "corrupt" | "error"
    detail: str
    destination: Path | None = None


class _Finder:
    """Locates files one by one and keeps every problem for a single report."""

    def __init__(self, *, weights_dir: Path | None, revision: str | None, offline: bool, verify: bool):
        self.weights_dir = weights_dir
        self.revision = revision
        self.offline = offline
        self.verify = verify
        self.problems: list[_Problem] = []
        self._listings: dict[tuple[str, str | None], set[str]] = {}
        self.tracker: DownloadTracker | None = None
        self.no_network: str | None = None  # why the Hub cannot be reached, once found out
        self._network_checked = False
        if not offline:
            one_line_per_hub_warning()

    def needs_download(self, f: WeightFile) -> bool:
        """Whether `f` is neither in the local folder nor in the cache (so it would be fetched)."""
        return not self.offline and self._local(f) is None and self._cached(f, self.revision_of(f)) is None

    def _network_problem(self) -> str | None:
        """Why the Hub cannot be reached (asked once per look-up), or None."""
        if not self._network_checked:
            self._network_checked = True
            problem = hub_unreachable()
            if problem is not None:
                self.no_network = problem
                log.warning("the Hub (%s) cannot be reached: %s", constants.ENDPOINT, problem)
        return self.no_network

    def _fetch(self, f: WeightFile, path: str, revision: str | None, **kwargs) -> Path:
        """hf_hub_download of one file, its bytes counted by the tracker if there is one."""
        if self.tracker is None:
            return Path(hf_hub_download(f.repo, path, revision=revision, **kwargs))
        if accepts_tqdm_class(hf_hub_download):
            kwargs["tqdm_class"] = self.tracker.bar_class()
        self.tracker.begin(f)
        found = Path(hf_hub_download(f.repo, path, revision=revision, **kwargs))
        self.tracker.end(f)
        return found

    def _cached(self, f: WeightFile, revision: str | None) -> Path | None:
        for p in f.paths:
            try:
                return Path(hf_hub_download(f.repo, p, revision=revision, local_files_only=True))
            except LocalEntryNotFoundError:
                continue
        return None

    @property
    def offline_reason(self) -> str:
        return "HF_HUB_OFFLINE is set" if is_offline() else "downloads are off"

    def revision_of(self, f: WeightFile) -> str | None:
        return self.revision if self.revision and f.repo == REPOS["selva"] else f.revision

    def locate(self, f: WeightFile) -> Path | None:
        local = self._local(f)
        if local is not None:
            if self._intact(local, f):
                return local
            self.problems.append(
                _Problem(
                    f,
                    "corrupt",
                    f"{local} does not match its MD5 {f.md5}: replace it with a fresh copy "
                    f"(https://huggingface.co/{f.repo}/resolve/main/{f.path})",
                )
            )
            return None
        return self._from_hub(f)

    def locate_group(self, files: tuple[WeightFile, ...]) -> Path | None:
        """Files that must share one folder (a transformers or open_clip snapshot)."""
        if self.weights_dir is not None:
            local = [local_path(self.weights_dir, f) for f in files]
            if all(p.is_file() for p in local):
                return local[0].parent
        paths = [self._from_hub(f) for f in files]
        if any(p is None for p in paths):
            return None
        folders = {p.parent for p in paths}
        if len(folders) != 1:  # cannot happen within one snapshot; guard against odd caches
            raise WeightsError(f"files of {files[0].repo} are spread over {sorted(map(str, folders))}")
        return folders.pop()

    def _local(self, f: WeightFile) -> Path | None:
        if self.weights_dir is None:
            return None
        for p in f.paths:
            candidate = local_path(self.weights_dir, f, p)
            if candidate.is_file():
                return candidate
        return None

    def _from_hub(self, f: WeightFile) -> Path | None:
        revision = self.revision_of(f)
        try:
            path = self._download(f, revision)
        except _NotFound as exc:
            self.problems.append(_Problem(f, "missing", str(exc), self._destination(f)))
            return None
        except (RepositoryNotFoundError, GatedRepoError) as exc:
            detail = f"cannot access {f.repo} ({type(exc).__name__}): if it is gated or private, set HF_TOKEN"
            self.problems.append(_Problem(f, "error", detail))
            return None
        except RevisionNotFoundError:
            self.problems.append(_Problem(f, "error", f"{f.repo} has no revision {revision!r}"))
            return None
        except OSError as exc:  # HTTP errors, full disks, permissions
            self.problems.append(_Problem(f, "error", f"download failed: {exc}", self._destination(f)))
            return None
        if self._intact(path, f):
            return path
        if self.offline:
            self.problems.append(
                _Problem(
                    f,
                    "corrupt",
                    f"{path} is corrupt or incomplete ({_checksum_of(path, f)} does not match) and "
                    f"{self.offline_reason}: go online to fetch it again, "
                    "or delete it and place a good copy",
                    self._destination(f),
                )
            )
            return None
        log.warning("%s/%s is corrupt or incomplete: downloading it again", f.repo, f.path)
        repo_path = _repo_path_of(path, f)
        problem = self._network_problem()
        try:
            if problem is not None:
                raise OSError(f"there is no network ({problem})")
            path = self._fetch(f, repo_path, revision, force_download=True)
        except OSError as exc:
            detail = f"{path} is corrupt or incomplete and downloading it again failed: {exc}"
            self.problems.append(_Problem(f, "corrupt", detail, self._destination(f)))
            return None
        if self._intact(path, f):
            return path
        self.problems.append(
            _Problem(
                f,
                "corrupt",
                f"{path} still does not match its {_checksum_of(path, f)} after downloading it again",
            )
        )
        return None

    def _download(self, f: WeightFile, revision: str | None) -> Path:
        """`f` from the cache, or downloaded under its name or an alternative spelling."""
        # Cache first: online, hf_hub_download would ask the Hub about every cached file on every
        # start (and wait out a timeout for each on a dead network). The files of a variant do
        # not change under it, and a cached copy that went bad is caught by its checksum.
        cached = self._cached(f, revision)
        if cached is not None:
            return cached
        if self.offline:
            raise _NotFound(f"not in the Hugging Face cache and {self.offline_reason}")
        if self._network_problem() is not None:
            raise _NotFound("not in the Hugging Face cache and there is no network")
        try:
            return self._fetch(f, f.path, revision)
        except LocalEntryNotFoundError as exc:  # the network went away since the check
            self.no_network = " ".join(str(exc).split())  # the files after this one fail at once
            raise _NotFound("not in the Hugging Face cache and there is no network") from None
        except EntryNotFoundError:
            if not f.alt_paths:
                raise _NotFound(f"{f.repo} has no file {f.path}") from None
        # Not under its documented name: list the repo once for the other spellings.
        listing = self._listing(f.repo, revision)
        for p in f.alt_paths:
            if p in listing:
                log.info("%s: using %s (the documented name %s is absent)", f.repo, p, f.path)
                return self._fetch(f, p, revision)
        raise _NotFound(f"{f.repo} has none of {', '.join(f.paths)}")

    def _listing(self, repo: str, revision: str | None) -> set[str]:
        key = (repo, revision)
        if key not in self._listings:
            self._listings[key] = set(HfApi().list_repo_files(repo, revision=revision))
        return self._listings[key]

    def _intact(self, path: Path, f: WeightFile) -> bool:
        if not self.verify:
            return True
        if f.md5 is not None:
            return verify_md5(path, f.md5)
        sha256 = blob_sha256(path)
        return sha256 is None or verify_digest(path, "sha256", sha256)

    def _destination(self, f: WeightFile) -> Path:
        return local_path(self.weights_dir or Path("<weights_dir>"), f)

    def report(self, name: str) -> str:
        missing = [p for p in self.problems if p.kind == "missing"]
        others = [p for p in self.problems if p.kind != "missing"]
        lines: list[str] = []
        if missing:
            if self.offline:
                why = self.offline_reason
                go = "unset HF_HUB_OFFLINE and run" if is_offline() else "run"
            elif self.no_network is not None:
                reached = f"the Hub at {constants.ENDPOINT} cannot be reached: {self.no_network}"
                why = f"there is no network ({reached})"
                go = "connect to the network and run"
            else:
                why = "they could not be downloaded"
                go = "fix the problems shown and run"
            lines.append(f"{name}: {len(missing)} file(s) missing and {why}:")
            for p in missing:
                lines.append(f"  - {p.file.repo}: {p.file.path} ({human_size(p.file.size)})")
                lines.append(f"      put it at {p.destination}")
                if not self.offline and self.no_network is None:  # else the reason is said once above
                    lines.append(f"      ({p.detail})")
            total = human_size(sum(p.file.size for p in missing))
            where = f"folders shown under {self.weights_dir}" if self.weights_dir else "places shown"
            command = DOWNLOAD_COMMAND if "/" in name else f"{DOWNLOAD_COMMAND} --variant {name}"
            lines.append(
                f"Missing in total: {total}. Either {go} `{command}` to fill the Hugging Face cache "
                f"({constants.HF_HUB_CACHE}), "
                f"or copy the files to the {where} and pass --weights-dir DIR "
                f"(or set {WEIGHTS_DIR_ENV}=DIR)."
            )
        if others:
            lines.append(f"{name}: {len(others)} file(s) unusable:")
            for p in others:
                lines.append(f"  - {p.file.repo}: {p.file.path} ({human_size(p.file.size)}): {p.detail}")
        return "\n".join(lines)


class _NotFound(Exception):
    pass


def _repo_path_of(path: Path, f: WeightFile) -> str:
    """Which spelling of `f` the cached or local `path` is (both mirror the repo's paths)."""
    return next((p for p in f.paths if path.as_posix().endswith("/" + p)), f.path)


def _weights_dir(weights_dir: str | Path | None) -> Path | None:
    if weights_dir is None:
        env = os.environ.get(WEIGHTS_DIR_ENV, "").strip()
        if not env:
            return None
        weights_dir, source = env, f"{WEIGHTS_DIR_ENV}={env}"
    else:
        source = f"weights_dir {weights_dir}"
    path = Path(weights_dir).expanduser()
    if not path.is_dir():
        raise WeightsError(f"{source} is not a folder; point it at a folder with weights/ and ext_weights/")
    return path


def _checksum_of(path: Path, f: WeightFile) -> str:
    return f"MD5 {f.md5}" if f.md5 is not None else f"SHA-256 {blob_sha256(path)}"
