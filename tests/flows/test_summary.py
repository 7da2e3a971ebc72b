"""The final lines of `forja run` state the registry's champion, read after the decision, on a cached
re-run too: a cached run's own result (which once said "promoted") is no longer the truth after
another run took the alias."""

import json

import httpx
import pytest
from helpers import shakespeare_text
from support import FAST, write_corpus

pytestmark = pytest.mark.slow


def run(servers, corpus, out, *extra):
    sets = [a for kv in [*FAST, "run.export_hf=false", *extra] for a in ("--set", kv)]
    r = servers.forja("run", "--source", str(corpus), "--out", str(out), *sets)
    return json.loads(r.stdout[r.stdout.index("{") : r.stdout.rindex("}") + 1])


def test_a_cached_re_run_reports_the_champion_the_registry_has_now(servers, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", shakespeare_text(100_000))
    short = run(servers, corpus, tmp_path / "short", "max_steps=4", "run.dataset=summary")
    assert short["champion"] is True and short["champion_version"] == short["model_version"]
    longer = run(servers, corpus, tmp_path / "long", "max_steps=60", "run.dataset=summary")
    assert longer["eval_bpb"] < short["eval_bpb"]  # more steps on the same data: a better model
    assert longer["champion"] is True and longer["champion_version"] == longer["model_version"]

    again = run(servers, corpus, tmp_path / "short", "max_steps=4", "run.dataset=summary")  # all Cached
    assert again["model_version"] == short["model_version"]
    assert again["champion"] is False and again["champion_version"] == longer["model_version"]
    assert again["model"] == "forja-summary" and again["champion_uri"] == "models:/forja-summary@champion"
    arts = httpx.post(
        f"{servers.prefect_api}/artifacts/filter",
        json={"artifacts": {"key": {"any_": ["evaluation"]}}, "sort": "CREATED_DESC", "limit": 1},
        timeout=30,
    ).json()
    assert f"forja-summary v{longer['model_version']}" in arts[0]["data"]  # the markdown agrees
