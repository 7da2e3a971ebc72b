"""The data stages map over shards on any task runner and give the same bytes."""

import json

import pytest
from helpers import shakespeare_text
from support import last_json_line, run_python, write_corpus

pytestmark = pytest.mark.slow

SCRIPT = """
import json, sys
from flows.params import PipelineParams, apply_sets
from flows.pipeline import make_task_runner, prepare_data
params = apply_sets(PipelineParams(sources=[sys.argv[1]]), sys.argv[2:])
data = prepare_data.with_options(task_runner=make_task_runner(params.run))(params)
print(json.dumps({stage: data[stage]["digest"] for stage in ("ingest", "clean", "tokens")}))
"""


def run_stages(servers, home, corpus, *sets):
    env = {**servers.env, "FORJA_HOME": str(home)}
    stage_sets = ["ingest.split=blank_line", "tokenize.vocab_size=512", "ingest.shard_files=1", *sets]
    r = run_python(["-c", SCRIPT, str(corpus), *stage_sets], env=env)
    return last_json_line(r.stdout), r.stderr


def test_dask_cluster_gives_the_same_digests_as_threads(servers, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", shakespeare_text(200_000), n_files=4)
    threads, _ = run_stages(servers, tmp_path / "home-threads", corpus, "run.runner=threads")
    dask, log = run_stages(servers, tmp_path / "home-dask", corpus, "run.runner=dask", "run.workers=2")
    assert "DaskTaskRunner" in log or "dask" in log.lower()
    assert dask == threads
    # four input files, one per shard: the ingest shards really were mapped (4 ingest-shard tasks)
    ingest = json.loads(
        (tmp_path / "home-dask" / "data" / "default" / "ingest" / "manifest.json").read_text()
    )
    assert ingest["counts"]["run"]["files"] == 4
