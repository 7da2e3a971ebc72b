"""Small file helpers shared by every stage: digests, atomic writes and a lock between processes.

Nothing is ever written under its final name until it is complete: we write to a temporary
sibling (same folder, so `os.replace` is an atomic rename on POSIX) and rename at the end.
A crash leaves at worst a `.tmp-*` file or folder, never a half-written final one.

Fault injection, for the reliability suite only (as FORJA_FAULT_KILL_SAVE is for checkpoints):
`FORJA_FAULT_KILL_WRITE=GLOB[:HIT]` SIGKILLs the process group at the HIT-th (default 1st)
`atomic_path` of this process whose final path matches GLOB (fnmatch; `*` also matches `/`),
when its temporary file is written and not yet renamed: a kill at a chosen write, without a
test polling the disk for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"
KILL_WRITE_ENV = "FORJA_FAULT_KILL_WRITE"
_kill_write_hits = 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (bounded memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """Digest of a JSON-serialisable object, independent of key order."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode())


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside `path` durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to `final`; on success rename it onto `final`.

    The caller writes the file at the yielded path. On an exception the temporary file is removed
    and `final` is left untouched (an older version stays readable).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{final.name}.", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the final file gets the usual mode
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        _fault_kill_write(final)
        os.replace(tmp, final)
        if fsync:
            fsync_dir(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fault_kill_write(final: Path) -> None:
    """The FORJA_FAULT_KILL_WRITE seam (see the module docstring); does nothing when it is unset."""
    global _kill_write_hits
    spec = os.environ.get(KILL_WRITE_ENV)
    if not spec:
        return
    pattern, _, hit = spec.partition(":")
    if fnmatch.fnmatch(str(final), pattern):
        _kill_write_hits += 1
        if _kill_write_hits == int(hit or 1):
            os.killpg(os.getpgrp(), signal.SIGKILL)


def atomic_write_bytes(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(final: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(final, text.encode("utf-8"))


def atomic_write_json(final: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(final, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to `final`; on success rename it onto `final`.

    `final` must not exist yet (folders cannot be swapped atomically over a non-empty one).
    """
    final = Path(final)
    if final.exists():
        raise FileExistsError(f"{final} already exists; refusing to overwrite it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}.", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        fsync_dir(tmp)
        os.rename(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) while the block runs.

    A POSIX advisory lock (flock): it serialises processes on this machine that take the same lock,
    and the kernel drops it if the holder dies, so a killed process never leaves it held.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def staging_path(final: str | os.PathLike, role: str = "staging") -> Path:
    """A temporary sibling of `final` for one process's work: `.tmp-<name>.<role>-<pid>-<ns>`.

    The pid in the name lets `remove_dead_leftovers` tell a killed run's folder from a live one's."""
    final = Path(final)
    return final.parent / f"{TMP_PREFIX}{final.name}.{role}-{os.getpid()}-{time.monotonic_ns()}"


def publish_dir(staging: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move a finished `staging` folder onto `final`; an earlier `final` is moved aside, then deleted.

    Readers see the old folder or the new one, never a mix (between the two renames `final` is
    absent). The caller writes the folder's manifest before this: the manifest is the last file."""
    staging, final = Path(staging), Path(final)
    fsync_dir(staging)
    old = None
    if final.exists():
        old = staging_path(final, "old")
        os.rename(final, old)
    os.rename(staging, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


_LEFTOVER = re.compile(r"^" + re.escape(TMP_PREFIX) + r"(?P<name>.+)\.[a-z]+-(?P<pid>\d+)-\d+$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def remove_dead_leftovers(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete what killed processes left in `folder`: `staging_path` folders and files (of `final`
    named `name`, or of any) whose process is gone. A live process's work (a concurrent run on the
    same data) is left alone, and so is anything not named by `staging_path`."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _LEFTOVER.match(p.name)
        if m is None or (name is not None and m["name"] != name):
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or _alive(pid):
            continue
        _remove(p)
        removed.append(p)
    return removed


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def remove_stale_tmp(folder: str | os.PathLike) -> list[Path]:
    """Delete leftovers of interrupted atomic writes directly under `folder`; return them."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.name.startswith(TMP_PREFIX):
            _remove(p)
            removed.append(p)
    return removed


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
