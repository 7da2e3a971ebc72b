"""The flows' parameters: declared once (flows/params.py), the same form in every deployment, and the
same `--set` behaviour through the stage commands and through `forja run`."""

import os
import subprocess
import sys

import pytest
import yaml
from support import ROOT

from flows.params import STAGES, PipelineParams, apply_sets
from forja.settings import apply_sets as apply_stage_sets
from lm.errors import ConfigError
from tasks.clean import CleanConfig

EXTRA = {"retrain": {"continue_from_champion": False, "new_tokenizer": False, "keep_mixture": True}}


def _schemas() -> list[tuple[str, str, dict]]:
    """(where, flow name, parameter schema) of every deployment: `forja serve`'s and infra/prefect.yaml's."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    from flows.deployments import deployments

    found = []
    for d in deployments():
        # What the deployment sends to the server (Prefect keeps it in a private attribute).
        found.append((f"serve:{d.name}", d.flow_name, d._parameter_openapi_schema.model_dump()))
    for dep in yaml.safe_load((ROOT / "infra" / "prefect.yaml").read_text())["deployments"]:
        path, func = dep["entrypoint"].split(":")
        flow = load_flow_from_entrypoint(f"{ROOT / path}:{func}")  # as `prefect deploy` does
        found.append((f"yaml:{dep['name']}", flow.name, parameter_schema(flow).model_dump()))
    return found


SCHEMAS = _schemas()


def test_both_flows_are_deployed_from_both_places():
    assert {(where.split(":")[0], name) for where, name, _ in SCHEMAS} == {
        ("serve", "pipeline"),
        ("serve", "retrain"),
        ("yaml", "pipeline"),
        ("yaml", "retrain"),
    }


@pytest.mark.parametrize(("where", "flow_name", "schema"), SCHEMAS, ids=[s[0] for s in SCHEMAS])
def test_every_field_of_every_group_is_in_the_form_with_its_description_and_default(where, flow_name, schema):
    props, definitions = schema["properties"], schema["definitions"]
    expected = ["sources", "preset", "source_settings", *EXTRA.get(flow_name, {}), *STAGES]
    assert list(props) == expected, (
        "sources, preset, source_settings, the flow's own options, then one group per stage"
    )
    assert props["sources"]["default"] == ["python-docs"] and props["preset"]["default"] == "tiny"
    for name, default in EXTRA.get(flow_name, {}).items():
        assert props[name]["default"] is default and props[name]["type"] == "boolean"
    for name in expected:
        assert props[name].get("description"), f"{where}: parameter {name} has no description"
    for stage, cls in STAGES.items():
        form = definitions[props[stage]["$ref"].rsplit("/", 1)[1]]  # the stage's sub-form
        assert set(form["properties"]) == set(cls.model_fields), f"{where}: fields of {stage}"
        default = props[stage]["default"]  # what the form is filled with
        for field, info in cls.model_fields.items():
            assert form["properties"][field].get("description"), f"{where}: {stage}.{field} undescribed"
            want = info.get_default(call_default_factory=True)
            assert default[field] == (str(want) if hasattr(want, "__fspath__") else want), (
                f"{where}: default of {stage}.{field}"
            )
    assert props["model"]["default"]["n_layer"] is None  # empty: the preset's value
    assert props["clean"]["default"]["near_dedup_threshold"] == CleanConfig().near_dedup_threshold


def test_the_flow_accepts_its_form_and_refuses_an_unknown_group():
    from prefect.exceptions import SignatureMismatchError

    from flows.retrain import retrain

    got = retrain.validate_parameters({"new_tokenizer": True, "train": {"max_steps": 5}})
    assert got["new_tokenizer"] is True and got["train"].max_steps == 5
    with pytest.raises(SignatureMismatchError, match="trian"):
        retrain.validate_parameters({"trian": {"max_steps": 5}})


# ------------------------------------------------------------------ --set onto the pipeline


def test_pipeline_sets_reach_the_stage_that_owns_the_key():
    params = apply_sets(
        PipelineParams(),
        [
            "max_steps=5",
            "tokenize.vocab_size=300",
            'clean.pii_types=["email"]',
            "sources=corpus.txt",
            "run.out=/tmp/r",
        ],
    )
    assert params.train.max_steps == 5 and params.tokenize.vocab_size == 300
    assert params.clean.pii_types == ["email"] and params.sources == ["corpus.txt"]
    assert str(params.run.out) == "/tmp/r"
    assert apply_sets(PipelineParams(), ['sources=["a", "b"]']).sources == ["a", "b"]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (
            "vocab_size=300",
            "setting 'vocab_size' is ambiguous: tokenize.vocab_size, model.vocab_size; say which",
        ),
        ("max_stesp=3", "unknown setting 'max_stesp' (did you mean 'max_steps'?); use a field name"),
        ("model.lr=3", "unknown setting 'model.lr' (did you mean 'train.lr'?)"),
        ("n_layer=two", "invalid value 'two' for 'n_layer': expected an integer"),
        ("tokenize.vocab_size=many", "invalid value 'many' for 'tokenize.vocab_size': expected an integer"),
    ],
)
def test_pipeline_set_errors_name_the_key(item, message):
    with pytest.raises(ConfigError) as e:
        apply_sets(PipelineParams(), [item])
    assert str(e.value).startswith(message)


@pytest.mark.parametrize(
    "items",
    [
        ["near_dedup_threshold=0.5", 'pii_types=["email", "phone"]', "min_chars=5"],
        ['rules={"pii": false}', "max_chars=none"],
    ],
)
def test_a_stage_key_means_the_same_in_forja_clean_and_in_forja_run(items):
    alone = apply_stage_sets(CleanConfig(), items)
    in_pipeline = apply_sets(PipelineParams(), [f"clean.{i}" for i in items]).clean
    bare_in_pipeline = apply_sets(PipelineParams(), items).clean  # these names only clean has
    assert alone == in_pipeline == bare_in_pipeline != CleanConfig()


def _forja(home, *args):
    env = {**os.environ, "FORJA_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "forja.cli", *args], capture_output=True, text=True, timeout=300, env=env
    )


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (
            "near_dedup_threshold=2",
            "invalid value 2.0 for '{p}near_dedup_threshold': Input should be less than 1",
        ),
        ('pii_types=["mail"]', "invalid value 'mail' for '{p}pii_types.0': Input should be"),
        (
            "near_dedup_treshold=0.5",
            "unknown setting '{p}near_dedup_treshold' (did you mean '{p}near_dedup_threshold'?)",
        ),
    ],
)
def test_forja_clean_and_forja_run_refuse_a_bad_clean_setting_alike(tmp_path, value, why):
    """Exit code 2 and one line naming the key, as each command spells it; no traceback, no work."""
    clean = _forja(tmp_path, "clean", str(tmp_path / "ingest"), "--out", str(tmp_path / "c"), "--set", value)
    run = _forja(tmp_path, "run", "--source", str(tmp_path), "--set", f"clean.{value}")
    for result, prefix in ((clean, ""), (run, "clean.")):
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: " + why.format(p=prefix)), result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "c").exists() and not (tmp_path / "runs").exists()


def test_a_run_decontaminates_against_its_evaluation_text(tmp_path):
    """evaluate.eval_text joins clean.eval_texts (the texts clean decontaminates against), once."""
    eval_file = tmp_path / "eval.txt"
    eval_file.write_text("A held-out passage the model is scored on.", encoding="utf-8")
    params = apply_sets(PipelineParams(), [f"evaluate.eval_text={eval_file}", 'clean.languages=["en"]'])
    assert params.clean.eval_texts == [eval_file.resolve()] and params.clean.languages == ["en"]
    again = PipelineParams.model_validate(params.model_dump(mode="json"))  # as `forja reproduce` reads it
    assert again.clean.eval_texts == [eval_file.resolve()]
