"""URL sources: telling a URL from a path, keeping credentials out of logs and errors, the
`SourceUnavailable` error that marks a network failure as transient (a flow retries it), and
`url_fs`, the fsspec filesystem of a URL (for s3://, with credentials from the environment only).

Importing this module also installs a log filter on fsspec, which logs URLs with their
credentials at DEBUG level.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from typing import Any

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


OBJECT_STORES = ("s3",)


def is_object_store(source: str) -> bool:
    """An object-store URL (s3://bucket/prefix): listed like a folder, read through fsspec."""
    return source.split("://", 1)[0].lower() in OBJECT_STORES if "://" in source else False


def s3_options() -> dict[str, Any]:
    """s3fs's options, from the environment only (never from a file, a parameter or a URL):
    AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) sign the requests; without
    them the bucket is read anonymously. AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) points at an
    S3-compatible server (SeaweedFS, MinIO); AWS_DEFAULT_REGION (or AWS_REGION) names the region.
    Passing them explicitly keeps botocore from looking further (~/.aws files, instance metadata).
    The values live in this process's memory only: nothing Forja writes holds them."""
    env = os.environ
    opts: dict[str, Any] = {"use_listings_cache": False}  # an object may change between two runs
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        opts.update(key=key, secret=secret)
        if env.get("AWS_SESSION_TOKEN"):
            opts["token"] = env["AWS_SESSION_TOKEN"]
    else:
        opts["anon"] = True
    client: dict[str, Any] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["endpoint_url"] = endpoint
    region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION")
    if region:
        client["region_name"] = region
    if client:
        opts["client_kwargs"] = client
    return opts


def url_fs(url: str) -> tuple[Any, str]:
    """The fsspec filesystem and path of a URL; an s3:// URL gets `s3_options()`."""
    import fsspec

    if is_object_store(url):
        return fsspec.core.url_to_fs(url, **s3_options())
    return fsspec.core.url_to_fs(url)
