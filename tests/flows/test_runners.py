"""The data stages map over shards on any task runner and give the same bytes."""

import json

import pytest
from helpers import shakespeare_text
from support import last_json_line, run_python, write_corpus

pytestmark = pytest.mark.slow

SCRIPT = """
import json, os, sys
from flows.params import PipelineParams, apply_sets
from flows.pipeline import make_task_runner, prepare_data
params = apply_sets(PipelineParams(sources=[sys.argv[1]]), sys.argv[2:])
out = {"pid": os.getpid()}
if params.run.runner == "dask":
    # A cluster of our own, so that its scheduler can say which tasks its worker processes ran.
    from distributed import Client, LocalCluster, get_task_stream
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    run = params.run.model_copy(update={"dask_address": cluster.scheduler_address})
    params = params.model_copy(update={"run": run})
    with get_task_stream(client) as stream:
        state = prepare_data.with_options(task_runner=make_task_runner(run))(params, return_state=True)
    data = state.result()
    with get_client(sync_client=True) as prefect:
        runs = prefect.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    out |= {
        "task_runs": [[t.name, t.state_name] for t in runs],
        "ran_on_dask": [[str(s["key"]), s["worker"]] for s in stream.data],
        "worker_pids": client.run(os.getpid),
    }
    client.close()
    cluster.close()
else:
    data = prepare_data.with_options(task_runner=make_task_runner(params.run))(params)
out["digests"] = {stage: data[stage]["digest"] for stage in ("ingest", "clean", "tokens")}
print(json.dumps(out))
"""


def run_stages(servers, home, corpus, *sets):
    env = {**servers.env, "FORJA_HOME": str(home)}
    stage_sets = ["ingest.split=blank_line", "tokenize.vocab_size=512", "ingest.shard_files=1", *sets]
    r = run_python(["-c", SCRIPT, str(corpus), *stage_sets], env=env)
    return last_json_line(r.stdout), r.stderr


def test_dask_cluster_gives_the_same_digests_as_threads(servers, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", shakespeare_text(200_000), n_files=4)
    threads, _ = run_stages(servers, tmp_path / "home-threads", corpus, "run.runner=threads")
    dask, _ = run_stages(servers, tmp_path / "home-dask", corpus, "run.runner=dask", "run.workers=2")
    assert dask["digests"] == threads["digests"]
    # four input files, one per shard: the ingest shards really were mapped (4 ingest-shard tasks)
    ingest = json.loads(
        (tmp_path / "home-dask" / "data" / "default" / "ingest" / "manifest.json").read_text()
    )
    assert ingest["counts"]["run"]["files"] == 4

    # Prefect's task-run records of the flow run: every shard task of the three stages completed ...
    shards = [name for name, state in dask["task_runs"] if "-shard-" in name]
    assert sorted({name.split("-shard-")[0] for name in shards}) == ["clean", "ingest", "tokenize"]
    assert sum(name.startswith("ingest-shard-") for name in shards) == 4
    assert all(state == "Completed" for _, state in dask["task_runs"]), dask["task_runs"]
    # ... and the Dask scheduler ran exactly that many shard tasks, all in the cluster's worker
    # processes (not in the flow's process, as a thread runner would)
    workers = dask["worker_pids"]
    assert dask["pid"] not in workers.values() and len(workers) == 2
    assert len(dask["ran_on_dask"]) == len(shards), (dask["ran_on_dask"], shards)
    assert all(worker in workers for _, worker in dask["ran_on_dask"])
