"""URL sources: telling a URL from a path, keeping credentials out of logs and errors, and the
`SourceUnavailable` error that marks a network failure as transient (a flow retries it).

Importing this module also installs a log filter on fsspec, which logs URLs with their
credentials at DEBUG level.
"""

from __future__ import annotations

import logging
import re
import urllib.parse

_SECRET_PARAM = re.compile(
    r"(token|key|secret|sig|signature|password|passwd|pwd|auth|credential|session)", re.I
)


class _RedactURLs(logging.Filter):
    """fsspec logs URLs, credentials included, at DEBUG level: blank them out."""

    _CREDS = re.compile(r"(://)[^/@\s]+@")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "@" in msg:
            record.msg, record.args = self._CREDS.sub(r"\1***@", msg), ()
        return True


for _name in ("fsspec", "fsspec.http", "fsspec.generic"):
    logging.getLogger(_name).addFilter(_RedactURLs())


class SourceUnavailable(ConnectionError):
    """A remote source could not be reached or read (transient): a later retry may succeed."""


def redact(source: str) -> str:
    """`source` with URL credentials (user:password@, secret-looking query values) replaced by ***."""
    if "://" not in source:
        return source
    try:
        parts = urllib.parse.urlsplit(source)
    except ValueError:
        return source
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_PARAM.search(k) for k, _ in pairs):
            query = "&".join(
                f"{urllib.parse.quote(k)}=***" if _SECRET_PARAM.search(k) else f"{k}={v}" for k, v in pairs
            )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def is_url(source: str) -> bool:
    scheme = source.split("://", 1)[0] if "://" in source else ""
    return bool(scheme) and scheme != "file" and scheme.isalnum()


def http_status(e: BaseException) -> tuple[int | None, BaseException | None]:
    """The HTTP status (if any) and the underlying error behind an fsspec exception."""
    seen, cur, cause = set(), e, None
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        status = getattr(cur, "status", None) or getattr(cur, "code", None)
        if isinstance(status, int):
            return status, cur
        if cur is not e:
            cause = cur
        cur = cur.__cause__ or cur.__context__
    return None, cause


def redacted_error(e: BaseException, url: str) -> str:
    """`e` as "Type: message", with `url` in the message redacted."""
    return f"{type(e).__name__}: {str(e).replace(url, redact(url))}"
