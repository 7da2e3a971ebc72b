"""The real thing end to end: `forja run` through a real Prefect server into a real MLflow store."""

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import shakespeare_text
from support import FAST, ROOT, write_corpus

from flows.params import PipelineParams, apply_sets

pytestmark = pytest.mark.slow


def sets(*extra):
    return [a for kv in [*FAST, *extra] for a in ("--set", kv)]


@pytest.fixture(autouse=True)
def _tracking_uri(servers):
    """Every test reads this module's MLflow store, whichever module ran before it and whichever
    fixture (first, retrained) happens to be created first."""
    mlflow.set_tracking_uri(servers.home.default_tracking_uri)


@pytest.fixture(scope="module")
def first(servers, tmp_path_factory):
    corpus = write_corpus(tmp_path_factory.mktemp("corpus"), shakespeare_text(150_000))
    r = servers.forja("run", "--source", str(corpus), *sets())
    result = json.loads(r.stdout[r.stdout.index("{") : r.stdout.rindex("}") + 1])
    return {"corpus": corpus, "result": result, "stderr": r.stderr}


def test_flow_run_and_every_task_completed(servers, first):
    run = mlflow.MlflowClient().get_run(first["result"]["mlflow_run_id"])
    flow_run_id = run.data.tags["prefect.flow_run_id"]
    fr = httpx.get(f"{servers.prefect_api}/flow_runs/{flow_run_id}").json()
    assert fr["state"]["type"] == "COMPLETED"
    states = servers.task_states(flow_run_id)
    stages = ("ingest", "clean", "tokenize")
    names = [f"{s}{part}" for s in stages for part in ("-plan", "-shard", "")] + [
        "train",
        "evaluate",
        "register",
    ]
    for name in names:
        assert states.get(name) == "Completed", (name, states)
    assert run.data.tags["prefect.flow_run_url"].startswith("http://127.0.0.1")


def test_prefect_artifacts(servers, first):
    run = mlflow.MlflowClient().get_run(first["result"]["mlflow_run_id"])
    flow_run_id = run.data.tags["prefect.flow_run_id"]
    subs = servers.api("/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}})
    ids = [flow_run_id, *(s["id"] for s in subs)]
    arts = servers.api("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": ids}}, "limit": 50})
    by_key = {a["key"]: a for a in arts if a["key"]}
    keys = {"clean-report", "ingest-report", "training-progress", "evaluation", "mlflow-run", "report-card"}
    assert keys <= set(by_key)
    assert by_key["training-progress"]["data"] == 100.0
    table = json.loads(by_key["clean-report"]["data"])
    assert {"rule", "rows_in", "rows_out"} <= set(table[0])
    assert "bits per byte" in by_key["evaluation"]["data"]
    assert run.info.run_id in by_key["mlflow-run"]["data"]
    card = by_key["report-card"]["data"]
    assert card.startswith(f"# Report card: {run.info.run_name}") and run.info.run_id in card


def test_mlflow_run_records_params_metrics_datasets_artifacts_and_model(first):
    c = mlflow.MlflowClient()
    run = c.get_run(first["result"]["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["train.max_steps"] == "20" and p["model.d_model"] == "64" and p["tokenize.vocab_size"] == "512"
    assert p["model.vocab_size"] == "512"  # resolved from the tokenizer
    losses = c.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == list(range(1, 21))
    for name in (
        "lr",
        "grad_norm",
        "tokens_per_s",
        "mfu",
        "val_loss",
        "val_bpb",
        "eval_bpb",
        "eval_perplexity",
    ):
        assert name in run.data.metrics, name
    assert any(k.startswith("system/") for k in run.data.metrics)  # system metrics
    inputs = {d.dataset.name: d.dataset for d in run.inputs.dataset_inputs}
    assert inputs["tokens"].digest == run.data.tags["data.tokens_digest"][:36]
    assert inputs["clean"].digest == run.data.tags["data.clean_digest"][:36]
    for tag in ("git_commit", "preset", "prefect.flow_run_id", "checkpoint_sha256"):
        assert run.data.tags.get(tag), tag
    names = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"config.json", "loss_curve.png", "samples.txt", "data", "tokenizer", "metrics.jsonl"} <= names


def test_registered_champion_generates_text_through_pyfunc(first):
    c = mlflow.MlflowClient()
    champ = c.get_model_version_by_alias("forja", "champion")
    assert champ.run_id == first["result"]["mlflow_run_id"] and str(champ.version) == "1"
    assert float(champ.tags["eval_bpb"]) == pytest.approx(first["result"]["eval_bpb"], abs=1e-4)
    model = mlflow.pyfunc.load_model("models:/forja@champion")
    out = model.predict(pd.DataFrame({"prompt": ["ROMEO:"]}), params={"max_new_tokens": 8, "seed": 1})
    assert out[0].startswith("ROMEO:") and len(out[0]) > len("ROMEO:")
    local = Path(mlflow.artifacts.download_artifacts("models:/forja@champion"))
    assert (local / "artifacts" / "hf" / "config.json").is_file()  # the HF export is logged with the model


def test_report_card_of_a_run_by_id_and_by_model_uri(servers, first, tmp_path):
    """`forja report` prints the card that the run logged (report.md) and that its model version
    carries as description; its figures are those of the run's own manifests and model."""
    from typer.testing import CliRunner

    from forja.cli import app
    from forja.report_run import description, portable
    from lm.config import from_dict
    from lm.models import build_model

    c = mlflow.MlflowClient()
    run_id = first["result"]["mlflow_run_id"]
    by_id = CliRunner().invoke(app, ["report", run_id])
    assert by_id.exit_code == 0, by_id.output
    md = by_id.stdout
    by_uri = CliRunner().invoke(app, ["report", "models:/forja/1", "--html", str(tmp_path / "card.html")])
    assert by_uri.exit_code == 0 and by_uri.stdout == md
    logged = Path(c.download_artifacts(run_id, "report.md", str(tmp_path))).read_text()
    assert logged == md  # what the run logged at its end, figures and all
    assert c.get_model_version("forja", "1").description == description(md)
    assert "loss_curve.png` in the MLflow run's artifacts" in portable(md)

    def row(name):
        line = next(x for x in md.splitlines() if x.startswith(f"| {name} |"))
        return [cell.strip() for cell in line.strip("|").split(" | ")]

    def manifest(stage):
        return json.loads(
            Path(c.download_artifacts(run_id, f"data/{stage}/manifest.json", str(tmp_path))).read_text()
        )

    assert row("items read (ingest)")[1] == f"{manifest('ingest')['counts']['run']['items']:,}"
    assert row("documents after cleaning")[1] == f"{manifest('clean')['counts']['rows_out']:,}"
    assert row("tokens")[1] == f"{manifest('tokens')['counts']['tokens']:,}"
    resolved = json.loads(Path(c.download_artifacts(run_id, "config.json", str(tmp_path))).read_text())[
        "resolved"
    ]
    model_cfg, train_cfg = from_dict(resolved)
    flops = build_model(model_cfg).flops_per_token(train_cfg.seq_len)  # lm's own estimate
    assert row("FLOPs per token (training)")[1].startswith(f"{flops:,.0f} = 6N ")
    assert row("steps")[1] == "20" and row("tokens per second")[1] != "-"
    assert float(row("bits per byte (fixed evaluation set)")[1]) == pytest.approx(
        first["result"]["eval_bpb"], abs=1e-4
    )
    page = (tmp_path / "card.html").read_text()
    assert "data:image/png;base64," in page and "<table>" in page

    priced = CliRunner().invoke(app, ["report", run_id, "--set", "report.price_per_hour=3600"])
    assert re.search(r"\| estimated cost \| [0-9.]+ USD \(.* at 3600 USD/h\) \|", priced.stdout), (
        priced.stdout
    )
    r = servers.forja("report", "0123456789abcdef0123456789abcdef", check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1].startswith("error: no MLflow run '0123456789abcdef")
    unknown = CliRunner().invoke(app, ["report", "models:/forja@nobody"])
    assert "no registered model models:/forja@nobody" in str(unknown.exception)


def test_eval_and_sample_accept_model_uris(servers, first, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(shakespeare_text(2000))
    r = servers.forja("eval", "models:/forja@champion", "--text", str(text), "--json")
    assert json.loads(r.stdout)["bytes"] == 2000
    run_id = first["result"]["mlflow_run_id"]
    r = servers.forja(
        "sample", f"runs:/{run_id}/model", "--prompt", "KING", "--max-new-tokens", "5", "--seed", "0"
    )
    assert r.stdout.startswith("KING")


def test_rerun_on_unchanged_data_is_cached_end_to_end(servers, first):
    r = servers.forja("run", "--source", str(first["corpus"]), *sets())
    result = json.loads(r.stdout[r.stdout.index("{") : r.stdout.rindex("}") + 1])
    run = mlflow.MlflowClient().get_run(result["mlflow_run_id"])
    states = servers.task_states(run.data.tags["prefect.flow_run_id"])
    for name in ("ingest", "clean", "tokenize", "train", "evaluate", "register"):
        assert states[name] == "Cached", (name, states)
    for name in ("ingest-shard", "clean-shard", "tokenize-shard", "tokenize-plan", "clean-plan"):
        assert name not in states  # nothing of a cached stage runs
    assert result["eval_bpb"] == first["result"]["eval_bpb"]


def wait_for(what, poll, timeout=600):  # generous: only a bound; CI machines can be loaded
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = poll()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_served_deployments_run_from_the_ui_api_and_keep_the_nightly_schedule(servers, first, tmp_path):
    """`forja serve` registers both deployments; a run triggered as the UI's "Custom run" does
    (POST /deployments/{id}/create_flow_run with parameters) is picked up and completes."""
    log = (tmp_path / "serve.log").open("w")
    cmd = [
        sys.executable,
        "-m",
        "forja.cli",
        "serve",
        "--cron",
        "30 2 * * *",
        "--source",
        str(first["corpus"]),
    ]
    proc = subprocess.Popen(cmd, env=servers.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:

        def deployments():
            found = {d["name"]: d for d in servers.api("/deployments/filter")}
            return found if {"forja-pipeline", "forja-retrain-nightly"} <= set(found) else None

        # the trigger lines are printed once the deployments exist: the printed line works at once
        wait_for(
            "the trigger lines", lambda: "prefect deployment run" in (tmp_path / "serve.log").read_text()
        )
        line = next(x for x in (tmp_path / "serve.log").read_text().splitlines() if "forja-pipeline'" in x)
        assert line.strip().startswith(f"PREFECT_API_URL={servers.prefect_api} ")
        assert line.strip().endswith("deployment run 'pipeline/forja-pipeline'")
        found = deployments()
        assert found, "trigger lines printed before the deployments were registered"
        nightly = found["forja-retrain-nightly"]
        assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["30 2 * * *"]
        assert nightly["parameters"]["sources"] == [str(first["corpus"])]
        assert "train" in found["forja-pipeline"]["parameter_openapi_schema"]["properties"]  # the UI form

        params = apply_sets(PipelineParams(sources=[str(first["corpus"])]), FAST)
        body = {"parameters": params.model_dump(mode="json")}
        run = servers.api(f"/deployments/{found['forja-pipeline']['id']}/create_flow_run", body)

        def finished():
            state = httpx.get(f"{servers.prefect_api}/flow_runs/{run['id']}", timeout=30).json()["state"]
            return state if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

        state = wait_for("the triggered flow run", finished, timeout=900)
        assert state["type"] == "COMPLETED", (state, (tmp_path / "serve.log").read_text()[-3000:])
        states = servers.task_states(run["id"])
        for name in ("ingest", "clean", "tokenize"):  # the same data as the first run: cached
            assert states[name] == "Cached", (name, states)
        assert states["evaluate"] in ("Completed", "Cached"), states
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


@pytest.fixture(scope="module")
def retrained(servers, tmp_path_factory):
    """The retrain scenario on a dataset of its own (so that the default dataset of `first` stays
    as it was, whatever runs first): a pipeline run, a retrain with nothing new, then new data and
    a retrain that trains longer."""
    corpus = write_corpus(tmp_path_factory.mktemp("grown"), shakespeare_text(150_000))
    dataset = "run.dataset=retrain-e2e"
    r = servers.forja("run", "--source", str(corpus), *sets(dataset))
    start = json.loads(r.stdout[r.stdout.index("{") : r.stdout.rindex("}") + 1])
    unchanged = servers.forja("retrain", "--source", str(corpus), *sets(dataset))
    (corpus / "more.txt").write_text(shakespeare_text(300_000)[150_000:])
    r = servers.forja("retrain", "--source", str(corpus), *sets(dataset, "max_steps=40"))
    result = json.loads(r.stdout[r.stdout.index("{") : r.stdout.rindex("}") + 1])
    return {"corpus": corpus, "start": start, "unchanged": unchanged.stdout, "result": result}


def test_retrain_stops_early_without_new_data_then_promotes_only_a_better_model(retrained):
    assert "nothing new" in retrained["unchanged"]
    result, start = retrained["result"], retrained["start"]
    c = mlflow.MlflowClient()
    champ = c.get_model_version_by_alias("forja-retrain-e2e", "champion")
    v1 = float(c.get_model_version("forja-retrain-e2e", start["model_version"]).tags["eval_bpb"])
    v2 = float(c.get_model_version("forja-retrain-e2e", result["model_version"]).tags["eval_bpb"])
    assert str(champ.version) == (result["model_version"] if v2 < v1 else start["model_version"])
    assert result["champion"] == (v2 < v1)
    run = c.get_run(result["mlflow_run_id"])
    # the champion's tokenizer was reused: same tokenizer digest as the run it retrains
    first_run = c.get_run(start["mlflow_run_id"])
    assert run.data.tags["tokenizer_sha256"] == first_run.data.tags["tokenizer_sha256"]
    assert run.data.tags["eval_set_digest"] == first_run.data.tags["eval_set_digest"]


def drop_tokens(servers, dataset, digest):
    for folder in (servers.home.dataset(dataset) / "tokens").iterdir():
        manifest = folder / "manifest.json"
        if manifest.is_file() and json.loads(manifest.read_text())["digest"] == digest:
            shutil.rmtree(folder)


def test_reproduce_gives_bitwise_identical_weights(servers, retrained):
    c = mlflow.MlflowClient()
    run = c.get_run(retrained["result"]["mlflow_run_id"])
    # its token folder is gone: reproduce rebuilds it through the data stages and checks the digest
    drop_tokens(servers, "retrain-e2e", run.data.tags["data.tokens_digest"])
    r = servers.forja("reproduce", run.info.run_id)
    out = json.loads(r.stdout[r.stdout.index("{") : r.stdout.rindex("}") + 1])
    assert out["identical"] is True and out["recorded_sha256"] == out["reproduced_sha256"]
    # once its sources have grown, its data cannot be rebuilt, and reproduce says so
    (retrained["corpus"] / "later.txt").write_text(shakespeare_text(400_000)[300_000:])
    drop_tokens(servers, "retrain-e2e", run.data.tags["data.tokens_digest"])
    r = servers.forja("reproduce", run.info.run_id, check=False)
    assert r.returncode == 2 and "the sources changed" in r.stderr


def dom(url, profile):
    """The page's DOM after its scripts ran, as headless Chromium renders it (a tall window: the
    MLflow tables draw only the rows in view)."""
    out = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1600,6000",
            "--virtual-time-budget=20000",
            f"--user-data-dir={profile}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.stdout


needs_chromium = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium is not installed (.ci/run installs it)"
)


@needs_chromium
def test_browser_shows_the_flow_run_and_the_mlflow_run(servers, first):
    run = mlflow.MlflowClient().get_run(first["result"]["mlflow_run_id"])
    flow_run_id = run.data.tags["prefect.flow_run_id"]
    flow_run = httpx.get(f"{servers.prefect_api}/flow_runs/{flow_run_id}").json()
    profile = first["corpus"].parent / "chrome"

    page = dom(f"{servers.specs[0].url}/runs/flow-run/{flow_run_id}", profile)
    assert flow_run["name"] in page
    page = dom(f"{servers.mlflow_url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}", profile)
    assert run.info.run_name in page
    for metric in ("eval_bpb", "val_loss"):  # the run page lists its metrics
        assert metric in page, metric


@needs_chromium
def test_browser_compares_two_runs_and_shows_the_card_of_a_model_version(servers, first, retrained):
    c = mlflow.MlflowClient()
    runs = [c.get_run(first["result"]["mlflow_run_id"]), c.get_run(retrained["result"]["mlflow_run_id"])]
    profile = first["corpus"].parent / "chrome"
    ids = ",".join(f'"{r.info.run_id}"' for r in runs)
    exps = ",".join(sorted({f'"{r.info.experiment_id}"' for r in runs}))
    page = dom(f"{servers.mlflow_url}/#/compare-runs?runs=[{ids}]&experiments=[{exps}]", profile)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))
    metrics = text[text.index("Metrics Show diff only") :]
    # The table draws the first metrics by name only (about 17 rows, whatever the window's height):
    # compare a figure among them that differs between the runs, the training tokens.
    assert "data.train_tokens " in metrics, metrics[:3000]
    for r in runs:  # each run's column: its name, and its figure
        assert r.info.run_name in text
        assert f" {int(r.data.metrics['data.train_tokens'])} " in metrics, r.data.metrics
    assert runs[0].data.metrics["data.train_tokens"] != runs[1].data.metrics["data.train_tokens"]

    page = dom(f"{servers.mlflow_url}/#/models/forja/versions/1", profile)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))
    items = c.get_run(runs[0].info.run_id).data.metrics["data.ingest.items"]
    assert f"Report card: {runs[0].info.run_name}" in text  # the description is the card
    assert f"items read (ingest) {int(items):,}" in text
    assert "FLOPs per token" in text and "bits per byte" in text


@pytest.fixture(scope="module")
def mixed(servers, tmp_path_factory):
    """A weighted mixture of two sources (two halves of tinyshakespeare, weights 3:1) on a dataset of
    its own, then a retrain without --source (the champion's mixture again: nothing new)."""
    text = shakespeare_text(160_000)
    play = write_corpus(tmp_path_factory.mktemp("play"), text[:80_000], n_files=2)
    other = write_corpus(tmp_path_factory.mktemp("other"), text[80_000:], n_files=2)
    (other / "polish.txt").write_bytes(POLISH.encode("iso8859-2"))  # this source's own encoding
    dataset = ("run.dataset=mix-e2e", "run.export_hf=false", 'ingest.encodings={"other": "iso8859-2"}')
    mix = ("--source", f"play={play}:3", "--source", f"other={other}:1")
    r = servers.forja("run", *mix, *sets(*dataset))
    result = json.loads(r.stdout[r.stdout.index("{") : r.stdout.rindex("}") + 1])
    again = servers.forja("retrain", *sets(*dataset))
    return {
        "result": result,
        "retrain": again.stdout + again.stderr,
        "halves": (text[:80_000], text[80_000:]),
    }


POLISH = "Zażółć gęślą jaźń. Pchnąć w tę łódź jeża lub ośm skrzyń fig. Źle śpię, gdy żuraw łka.\n"


def test_weighted_mixture_logs_per_source_figures_datasets_and_retrain_keeps_it(servers, mixed):
    # ingest.encodings: the other source's legacy file read as its own encoding (no detection)
    sources = servers.home.dataset("mix-e2e") / "sources"
    docs = pa.concat_tables(
        [pq.read_table(p) for p in sources.glob("other/ingest/data/*.parquet")]
    ).to_pylist()
    (polish,) = [d for d in docs if d["path"].endswith("polish.txt")]
    assert polish["text"].strip() == POLISH.strip() and polish["encoding"] == "iso8859-2"
    assert polish.get("encoding_confidence") is None  # set, not detected
    plays = pa.concat_tables([pq.read_table(p) for p in sources.glob("play/ingest/data/*.parquet")])
    assert "iso8859-2" not in plays.column("encoding").to_pylist()
    c = mlflow.MlflowClient()
    run = c.get_run(mixed["result"]["mlflow_run_id"])
    m = run.data.metrics
    for name in ("val_bpb/play", "val_bpb/other", "val_bpb", "val_loss", "eval_bpb"):
        assert name in m, name
    assert m["val_bpb/play"] != m["val_bpb/other"]
    assert m["tokens/play"] == 3 * m["tokens/other"] == 0.75 * 20 * 8 * 64  # steps x batch x seq_len
    history = c.get_metric_history(run.info.run_id, "tokens/play")
    assert [h.step for h in history] == [10, 20] and history[0].value == history[1].value / 2
    inputs = {d.dataset.name: d.dataset for d in run.inputs.dataset_inputs}
    for name in ("play", "other"):
        folder = json.loads(inputs[f"tokens/{name}"].profile)  # the token folder of that source alone
        assert folder["weight"] == (0.75 if name == "play" else 0.25) and folder["train"]["tokens"] > 0
        tokens = servers.home.dataset("mix-e2e") / "sources" / name / "tokens"
        digests = [json.loads((f / "manifest.json").read_text())["digest"][:36] for f in tokens.iterdir()]
        assert inputs[f"tokens/{name}"].digest in digests
    assert inputs["tokens"].digest == run.data.tags["data.tokens_digest"][:36]
    assert json.loads(run.data.tags["data.mixture"]) == {"play": 0.75, "other": 0.25}
    assert "nothing new" in mixed["retrain"]  # the champion's two sources again, not python-docs
    # the fixed evaluation set holds validation text of both sources
    lines = (servers.home.dataset("mix-e2e") / "eval" / "eval.jsonl").read_text().splitlines()
    starts = [json.loads(line)["text"].strip()[:60] for line in lines]
    assert all(any(s in half for s in starts) for half in mixed["halves"])
