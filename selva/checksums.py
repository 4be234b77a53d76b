"""Checksums of weight files, computed once per file and remembered.

Files with a known MD5 (SelVA's own) are hashed once after download, and so
are the other repos' large files, against the SHA-256 the Hub names their
blob by; the result is remembered in memory and in `verified_md5.json`
(keyed by the blob's path, size and mtime), so a start never re-hashes
gigabytes and a changed file is hashed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from pathlib import Path

from huggingface_hub import constants
from huggingface_hub.utils import tqdm as hub_tqdm

__all__ = ["STATE_DIR_ENV", "blob_sha256", "verify_digest", "verify_md5"]

log = logging.getLogger(__name__)

STATE_DIR_ENV = "SELVA_STATE_DIR"  # where the checksum memo lives (default: $HF_HOME/selva)
_CHUNK = 8 * 1024 * 1024


def blob_sha256(path: Path) -> str | None:
    """The SHA-256 a Hub cache file should have: large (LFS) blobs are named by it. None elsewhere."""
    real = path.resolve()
    if real.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", real.name):
        return real.name
    return None


def _state_file() -> Path:
    base = os.environ.get(STATE_DIR_ENV) or os.path.join(constants.HF_HOME, "selva")
    return Path(base) / "verified_md5.json"


_memo: dict[str, dict] = {}


def _stamp(path: Path) -> tuple[str, int, int]:
    real = path.resolve()  # the blob behind a snapshot symlink: one entry per content
    st = real.stat()
    return str(real), st.st_size, st.st_mtime_ns


def _load_state() -> dict:
    try:
        return json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return {}


def _remember(key: str, entry: dict) -> None:
    _memo[key] = entry
    state_file = _state_file()
    state = _load_state()
    state[key] = entry
    # Write-then-rename: concurrent starts never read half a file (the worst case is a lost entry).
    tmp = state_file.with_name(f"{state_file.name}.{os.getpid()}.tmp")
    try:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(state, indent=0, sort_keys=True))
        os.replace(tmp, state_file)
    except OSError as exc:  # a read-only home only costs a re-hash next start
        log.debug("cannot record the checksum in %s: %s", state_file, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()


def verify_md5(path: str | Path, md5: str) -> bool:
    """Whether `path` has MD5 `md5`; hashed once, then remembered while size and mtime stay the same."""
    return verify_digest(path, "md5", md5)


def verify_digest(path: str | Path, algorithm: str, expected: str) -> bool:
    """Whether `path` hashes to `expected` with `algorithm` ("md5", "sha256"); remembered as for MD5."""
    key, size, mtime_ns = _stamp(Path(path))
    entry = {"size": size, "mtime_ns": mtime_ns, algorithm: expected}
    if _memo.get(key) == entry:
        return True
    if _load_state().get(key) == entry:
        _memo[key] = entry
        return True
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with (
        open(key, "rb") as fh,
        hub_tqdm(
            total=size, unit="B", unit_scale=True, desc=f"Verifying {Path(path).name}", disable=size < 2**27
        ) as bar,
    ):
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    if digest.hexdigest() != expected:
        log.warning("%s: %s %s, expected %s", path, algorithm, digest.hexdigest(), expected)
        return False
    _remember(key, entry)
    return True
