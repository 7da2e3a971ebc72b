"""Where ingest's documents come from: what the user typed -> items, one per file or URL.

`enumerate_sources` turns files, folders, globs, URLs and `python-docs` into *items*: small
JSON-able dicts, one per file or URL (with its format and compression, from its name), or an
`error` item for something found but unusable (a symlink loop, an unreadable folder) so that it
reaches the quarantine instead of being lost. A source that does not exist at all raises
`StageError` here, before any work; a URL that cannot be reached now raises SourceUnavailable.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import stat
import urllib.parse
from typing import Any

from tasks.common import StageError
from tasks.ingest.readers import format_of
from tasks.ingest.readers.python_docs import python_docs_items
from tasks.ingest.records import PYTHON_DOCS
from tasks.ingest.urls import (
    SourceUnavailable,
    http_status,
    is_object_store,
    is_url,
    redact,
    redacted_error,
    url_fs,
)

log = logging.getLogger("forja.ingest")


class _Enumerator:
    """Collects items in a deterministic order, each real file once."""

    def __init__(self, include_hidden: bool, exclude: list[str | os.PathLike]):
        self.include_hidden = include_hidden
        self.items: list[dict[str, Any]] = []
        self.skipped = {"hidden": 0, "duplicate_inputs": 0, "excluded": 0}
        self._files: set[tuple[int, int]] = set()
        self._dirs: set[tuple[int, int]] = set()
        self._exclude: set[tuple[int, int]] = set()
        for p in exclude:
            with contextlib.suppress(OSError):
                st = os.stat(p)
                self._exclude.add((st.st_dev, st.st_ino))

    def error(self, source: str, path: str, reason: str, detail: str) -> None:
        item = {"kind": "error", "source": source, "path": os.path.abspath(path), "size": 0}
        self.items.append({**item, "reason": reason, "detail": detail})

    def file(self, source: str, path: str, st: os.stat_result) -> None:
        key = (st.st_dev, st.st_ino)
        if key in self._files:
            self.skipped["duplicate_inputs"] += 1
            log.info("skipping %s: the same file was already listed by an earlier source", path)
            return
        self._files.add(key)
        fmt, comp = format_of(os.path.basename(path))
        self.items.append(
            {
                "kind": "file",
                "source": source,
                "path": os.path.abspath(path),
                "size": st.st_size,
                "format": fmt,
                "compression": comp,
            }
        )

    def stat_error(self, source: str, path: str, e: OSError) -> None:
        if e.errno == errno.ELOOP:
            self.error(source, path, "symlink_loop", f"{path}: symbolic link loop ({e.strerror})")
        elif os.path.islink(path) and e.errno == errno.ENOENT:
            self.error(source, path, "broken_symlink", f"{path} -> {os.readlink(path)}: target missing")
        else:
            self.error(source, path, "unreadable", f"{path}: {e.strerror or e}")

    def path(self, source: str, path: str, ancestors: frozenset[tuple[int, int]] = frozenset()) -> None:
        try:
            st = os.stat(path)
        except OSError as e:
            self.stat_error(source, path, e)
            return
        if stat.S_ISDIR(st.st_mode):
            self.folder(source, path, st, ancestors)
        elif stat.S_ISREG(st.st_mode):
            self.file(source, path, st)
        else:
            self.error(source, path, "unreadable", f"{path} is not a regular file (a FIFO, socket or device)")

    def folder(
        self, source: str, path: str, st: os.stat_result, ancestors: frozenset[tuple[int, int]]
    ) -> None:
        key = (st.st_dev, st.st_ino)
        if key in self._exclude:
            self.skipped["excluded"] += 1
            log.info("skipping %s: it is the ingest output folder", path)
            return
        if key in ancestors:
            self.error(source, path, "symlink_loop", f"{path} leads back to a folder above it")
            return
        if key in self._dirs:
            self.skipped["duplicate_inputs"] += 1
            log.info("skipping %s: the same folder was already listed", path)
            return
        self._dirs.add(key)
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            self.error(source, path, "unreadable", f"cannot list folder {path}: {e.strerror or e}")
            return
        for entry in entries:
            if entry.name.startswith(".") and not self.include_hidden:
                self.skipped["hidden"] += 1
                continue
            self.path(source, entry.path, ancestors | {key})


def enumerate_sources(
    sources: list[str], include_hidden: bool = False, exclude: list[str | os.PathLike] | None = None
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Items for every source, in order; and counts of what was skipped (hidden, duplicates).

    Raises StageError for a source that does not exist (missing path, glob matching nothing,
    URL answering 404, empty folder), before anything is read.
    """
    if not sources:
        raise StageError("no sources given: pass files, folders, globs, URLs or 'python-docs'")
    en = _Enumerator(include_hidden, exclude or [])
    for source in sources:
        if not isinstance(source, str) or not source.strip():
            raise StageError(f"source {source!r} is empty; pass a path, glob, URL or 'python-docs'")
        shown = redact(source)
        before, dups_before = len(en.items), en.skipped["duplicate_inputs"]
        if source == PYTHON_DOCS:
            if PYTHON_DOCS in (it["kind"] for it in en.items):
                en.skipped["duplicate_inputs"] += 1
                continue
            en.items.extend(python_docs_items())
        elif is_object_store(source):
            _object_store_source(en, source)
        elif is_url(source):
            en.items.append(_url_item(source))
        elif source.startswith("file://"):
            _local_source(en, urllib.parse.unquote(urllib.parse.urlsplit(source).path), shown)
        else:
            _local_source(en, source, shown)
        if len(en.items) == before and source != PYTHON_DOCS:
            if en.skipped["duplicate_inputs"] > dups_before:
                continue  # everything it holds was listed by an earlier source
            raise StageError(
                f"source {shown!r} holds no files to read (only hidden files or nothing at all); "
                "point it at a folder with text, or set include_hidden=true"
            )
    return en.items, en.skipped


def _local_source(en: _Enumerator, source: str, shown: str) -> None:
    if any(c in source for c in "*?["):
        matches = sorted(glob.glob(source, recursive=True))
        if not matches:
            raise StageError(f"source {shown!r}: the glob matches no file; check the pattern")
        for m in matches:
            en.path(shown, m)
    elif os.path.lexists(source):
        en.path(shown, source)
    else:
        raise StageError(f"source {shown!r} does not exist; check the path (relative to {os.getcwd()})")


def _url_item(url: str) -> dict[str, Any]:
    """Check that a URL exists: 404 / 410 -> StageError, 401 / 403 -> StageError (credentials),
    anything else (5xx, 429, refused connection, timeout) -> SourceUnavailable, to be retried."""
    shown = redact(url)
    try:
        fs, path = url_fs(url)
        info = fs.info(path)
    except (ImportError, ValueError) as e:
        raise StageError(f"source {shown!r}: unsupported URL ({type(e).__name__}: {e})") from None
    except Exception as e:
        # fsspec's HTTP info turns every failure into FileNotFoundError; the cause tells them apart.
        status, cause = http_status(e)
        if status in (404, 410) or (status is None and cause is None and isinstance(e, FileNotFoundError)):
            raise StageError(f"source {shown!r} does not exist (not found); check the URL") from None
        if status in (401, 403):
            raise StageError(
                f"source {shown!r}: access denied (HTTP {status}); check the credentials"
            ) from None
        raise SourceUnavailable(
            f"source {shown!r} cannot be reached: {redacted_error(cause or e, url)}"
        ) from None
    fmt, comp = format_of(urllib.parse.urlsplit(url).path)
    size = info.get("size")
    return {
        "kind": "url",
        "source": shown,
        "path": shown,
        "url": url,
        "size": int(size) if size is not None else None,
        "format": fmt,
        "compression": comp,
    }


def _object_store_source(en: _Enumerator, source: str) -> None:
    """s3://bucket/prefix: one item per object under the prefix (or the one object it names), in
    key order, hidden names (a '.' after a '/') skipped unless include_hidden. Each item keeps
    the object's ETag, so that a changed object changes ingest's fingerprint.
    Credentials come from the environment (tasks/ingest/urls.py: s3_options)."""
    shown = redact(source)
    scheme = source.split("://", 1)[0]
    try:
        fs, path = url_fs(source)
        path = path.rstrip("/")
        if path.count("/") == 0 or fs.isdir(path):  # a bucket, or a prefix: every object below it
            found = fs.find(path, detail=True)
        elif fs.isfile(path):
            found = {path: fs.info(path)}
        else:
            raise FileNotFoundError(path)
    except ImportError as e:
        raise StageError(
            f"source {shown!r}: cannot read object stores ({e}); pip install -e '.[s3]' (s3fs)"
        ) from None
    except ValueError as e:
        raise StageError(f"source {shown!r}: not a valid object-store URL ({e})") from None
    except PermissionError:
        raise StageError(
            f"source {shown!r}: access denied; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(and AWS_ENDPOINT_URL for a server other than AWS) in the environment"
        ) from None
    except FileNotFoundError:
        raise StageError(f"source {shown!r} does not exist (no such bucket or prefix)") from None
    except Exception as e:
        raise SourceUnavailable(f"source {shown!r} cannot be reached: {redacted_error(e, source)}") from None
    for key in sorted(found):
        info = found[key]
        if info.get("type", "file") != "file" or key.endswith("/"):
            continue
        if not en.include_hidden and "/." in "/" + key.split("/", 1)[-1]:
            en.skipped["hidden"] += 1
            continue
        url = f"{scheme}://{key}"
        fmt, comp = format_of(key.rsplit("/", 1)[-1])
        etag = info.get("ETag") or info.get("etag")
        en.items.append(
            {
                "kind": "url",
                "source": shown,
                "path": url,
                "url": url,
                "size": int(info.get("size") or info.get("Size") or 0),
                "format": fmt,
                "compression": comp,
                **({"etag": str(etag).strip('"')} if etag else {}),
            }
        )
