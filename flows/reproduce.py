"""`forja reproduce RUN_ID`: re-run a recorded run from its logged config and data digests.

The MLflow run holds the resolved configs (config.json), the digest of the token shards it trained
on and the sha256 of its final weights. Reproducing finds (or rebuilds, through the data stages)
the token folder with that digest, trains again from scratch into a new folder with the same
configs and seed, and compares the new weights with the recorded ones. On a CPU they are bitwise
identical: same inputs and seed, same model.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from forja import tracking
from forja.home import Home
from lm import checkpoint as ckpt
from lm.config import from_dict
from lm.errors import ForjaError
from lm.fileio import sha256_file
from lm.train import train as lm_train
from tasks.common import read_manifest

log = logging.getLogger("forja.reproduce")


class ReproduceError(ForjaError):
    pass


def find_tokens(dataset: str, digest: str) -> Path | None:
    root = Home.from_env().dataset(dataset) / "tokens"
    for m in sorted(root.glob("*/manifest.json")):
        try:
            if read_manifest(m.parent, "tokenize")["digest"] == digest:
                return m.parent
        except Exception:
            continue
    return None


def reproduce(run_id: str, out: Path | None = None) -> dict[str, Any]:
    c = tracking.client()
    try:
        run = c.get_run(run_id)
    except Exception as e:
        raise ReproduceError(
            f"no MLflow run {run_id!r} in {tracking.mlflow.get_tracking_uri()}: {e}"
        ) from None
    tags = run.data.tags
    for needed in ("data.tokens_digest", "checkpoint_sha256"):
        if needed not in tags:
            raise ReproduceError(f"run {run_id} lacks the tag {needed!r}: it was not a finished `forja run`")
    local = Path(c.download_artifacts(run_id, "config.json"))
    recorded = json.loads(local.read_text())
    params, resolved = recorded["params"], recorded["resolved"]
    dataset = params["run"]["dataset"]
    digest = tags["data.tokens_digest"]
    tokens = find_tokens(dataset, digest)
    if tokens is None:
        log.info("token folder %s is gone: rebuilding it through the data stages", digest[:12])
        from flows.params import PipelineParams
        from flows.pipeline import make_task_runner, prepare_data

        p = PipelineParams.model_validate(params)
        data = prepare_data.with_options(task_runner=make_task_runner(p.run))(p)
        if data["tokens"]["digest"] != digest:
            raise ReproduceError(
                f"the sources no longer give the recorded data: tokens digest {data['tokens']['digest'][:12]} "
                f"!= recorded {digest[:12]} (the sources changed since run {run_id})"
            )
        tokens = Path(data["tokens"]["out"])
    model_cfg, train_cfg = from_dict(resolved)
    out = (
        Path(out)
        if out
        else Home.from_env().runs / f"reproduce-{run_id[:12]}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    if tags.get("init_from_sha256"):
        raise ReproduceError(f"run {run_id} started from other weights; reproduce that model's run first")
    result = lm_train(model_cfg, train_cfg, tokens, out)
    new_sha = sha256_file(Path(result.checkpoint) / ckpt.MODEL_FILE)
    same = new_sha == tags["checkpoint_sha256"]
    log.info("reproduced run %s into %s: weights %s", run_id, out, "IDENTICAL" if same else "DIFFER")
    return {
        "run_id": run_id,
        "out": str(out),
        "tokens": str(tokens),
        "recorded_sha256": tags["checkpoint_sha256"],
        "reproduced_sha256": new_sha,
        "identical": same,
        "step": result.step,
    }
