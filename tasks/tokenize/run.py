"""The whole tokenize stage: the three steps composed, a cached output reused, and the finished
folder published atomically in place of OUT."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from lm.data import FORMAT
from lm.errors import DataError
from lm.fileio import TMP_PREFIX, fsync_dir, read_json, sha256_file
from tasks.common import MANIFEST, StageError, config_dict, read_manifest, verify_outputs
from tasks.tokenize.config import STAGE, UPSTREAM, TokenizeConfig
from tasks.tokenize.encode import encode_part
from tasks.tokenize.parts import list_parts
from tasks.tokenize.shards import finalize
from tasks.tokenize.tokenizer import reuse_tokenizer, train_tokenizer

log = logging.getLogger("forja.tokenize")


def _cached(out: Path, config: TokenizeConfig, upstream: str) -> dict[str, Any] | None:
    """The manifest of OUT if it was made from the same input and config and is intact."""
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        m = read_json(path)
    except (OSError, ValueError):
        return None
    if m.get("stage") != STAGE or m.get("upstream") != upstream or m.get("config") != config_dict(config):
        return None
    if config.tokenizer is not None and (
        not config.tokenizer.is_file() or sha256_file(config.tokenizer) != m.get("tokenizer_sha256")
    ):
        return None
    try:
        verify_outputs(out, m)
    except DataError as e:
        log.warning("%s; tokenizing again", e)
        return None
    return m


def _check_replaceable(out: Path) -> None:
    """Refuse to replace anything but an earlier token folder (or an empty folder)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise StageError(f"out={out} is a file; choose a folder for the token output")
    if not any(out.iterdir()):
        return
    try:
        m = read_json(out / MANIFEST)
    except (OSError, ValueError):
        m = {}
    if m.get("stage") != STAGE and m.get("format") != FORMAT:
        raise StageError(
            f"out={out} exists and is not a token folder; refusing to replace it: choose a new or empty folder"
        )


def _publish(staging: Path, out: Path) -> None:
    """Move the finished staging folder onto OUT; an earlier OUT is moved aside, then deleted.

    Readers see the old folder or the new one, never a mix (between the two renames OUT is absent).
    """
    fsync_dir(staging)
    old = None
    if out.exists():
        old = out.parent / f"{TMP_PREFIX}{out.name}.old-{os.getpid()}-{time.monotonic_ns()}"
        os.rename(out, old)
    os.rename(staging, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_own_leftovers(out: Path) -> None:
    """Delete what an interrupted run_tokenize into `out` left beside it: its staging folder
    (.tmp-<out>.<8 characters>) and the earlier output it was replacing (.tmp-<out>.old-<pid>-<ns>).
    Nothing else: other stages may be writing their own temporary files in the same folder now."""
    ours = re.compile(rf"{re.escape(TMP_PREFIX + out.name)}\.(?:[a-z0-9_]{{8}}|old-\d+-\d+)")
    for p in out.parent.glob(f"{TMP_PREFIX}{out.name}.*"):
        if not ours.fullmatch(p.name):
            continue
        log.info("removing %s, left by an interrupted tokenize", p)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def run_tokenize(
    in_dir: str | os.PathLike, out: str | os.PathLike, config: TokenizeConfig | None = None
) -> dict[str, Any]:
    """The whole stage: tokenizer, then every part, then shards and manifest; returns the manifest.

    If OUT already holds the output of the same input (by its manifest digest) and config, that is
    returned as it is. Otherwise the folder is built next to OUT and renamed onto it at the end.
    """
    config = config or TokenizeConfig()
    in_dir, out = Path(in_dir), Path(out)
    upstream = read_manifest(in_dir, UPSTREAM)["digest"]
    parts = list_parts(in_dir)
    _remove_own_leftovers(out)  # also when cached: a run killed after publishing leaves some
    if (cached := _cached(out, config, upstream)) is not None:
        log.info("%s is up to date (digest %s); nothing to do", out, cached["digest"][:12])
        return cached
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out.name}.", dir=out.parent))
    try:
        if config.tokenizer is not None:
            tok = reuse_tokenizer(config.tokenizer, staging)
        else:
            tok = train_tokenizer(in_dir, staging, config)
        t1 = time.perf_counter()
        work = staging / "work"
        results = [encode_part(p, tok["path"], work, config) for p in parts]
        manifest = finalize(in_dir, staging, tok, results, config)
        shutil.rmtree(work)
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    elapsed = time.perf_counter() - t1
    c = manifest["counts"]
    log.info(
        "tokenized %s docs (%.1f MB) into %s tokens (train %s, val %s) in %.1fs (%.1f MB/s; tokenizer %.1fs)",
        f"{c['docs']:,}",
        c["bytes"] / 1e6,
        f"{c['tokens']:,}",
        f"{manifest['splits']['train']['tokens']:,}",
        f"{manifest['splits']['val']['tokens']:,}",
        elapsed,
        c["bytes"] / 1e6 / max(elapsed, 1e-9),
        t1 - t0,
    )
    return manifest
