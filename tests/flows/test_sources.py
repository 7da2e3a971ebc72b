"""`--source NAME=PATH[:WEIGHT]`: parsing, the errors that name the bad source, redaction."""

import json

import pytest

from flows.params import PipelineParams, apply_sets, flatten, recorded
from flows.sources import SourceSpec, parse_sources, split_spec
from lm.errors import ConfigError


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("data/web", None),  # a bare PATH: today's meaning
        ("python-docs", None),
        ("https://example.org/a?x=1", None),
        ("web=data/web:3", ("web", "data/web", 3.0)),
        ("web=data/web", ("web", "data/web", None)),
        ("books=b.txt:0.25", ("books", "b.txt", 0.25)),
        ("web=http://host:8080", ("web", "http://host:8080", None)),  # a port, not a weight
        ("web=http://host:8080/a.txt:2", ("web", "http://host:8080/a.txt", 2.0)),
    ],
)
def test_a_source_is_a_bare_path_or_name_path_weight(spec, parsed):
    assert split_spec(spec) == parsed


def test_named_sources_make_a_mixture_and_a_repeated_name_adds_a_path():
    assert parse_sources(["a.txt", "b.txt"]) is None
    assert parse_sources(["web=w1:3", "books=b", "web=w2"]) == [
        SourceSpec("web", ("w1", "w2"), 3.0),
        SourceSpec("books", ("b",), 1.0),
    ]


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        (
            ["web=data/web:abc"],
            r"--source web=data/web:abc: the weight 'abc' is not a number; write NAME=PATH",
        ),
        (["web=data/web:0"], r"--source web=data/web:0: the weight '0' must be a positive number"),
        (["web=data/web:-2"], r"the weight '-2' must be a positive number"),
        (["web=data/web:inf"], r"the weight 'inf' must be a positive number"),
        (["web=:2"], r"--source web=:2: the source 'web' has no path"),
        (["web=a:1", "web=b:2"], r"--source web=b:2: the source 'web' was given the weight 1 before"),
        (["web=a:1", "b.txt"], r"--source b.txt: a mixture names every source; .* --source main=b.txt:1"),
    ],
)
def test_bad_sources_fail_at_the_edge_naming_the_source_and_the_fix(sources, message):
    with pytest.raises(ConfigError, match=message):
        PipelineParams(sources=sources).validate_all()


def test_recorded_sources_keep_names_and_weights_and_lose_credentials():
    params = PipelineParams(sources=["web=https://user:secret@example.org/w.txt:3", "books=b.txt"])
    assert recorded(params)["sources"] == ["web=https://***@example.org/w.txt:3", "books=b.txt"]


MIX = ["web=data/web:3", "pl=data/pl:1"]


def test_source_settings_change_ingest_and_clean_for_that_source_alone():
    params = apply_sets(
        PipelineParams(sources=MIX),
        [
            'source_settings={"pl": {"ingest.encoding": "iso8859-2", "clean.languages": ["pl"]},'
            ' "web": {"ingest.split": "blank_line", "clean.min_chars": 50}}',
            "ingest.split=percent_line",
            "clean.min_chars=5",
        ],
    )
    params.check_source_settings()
    assert params.ingest_for("pl").encoding == "iso8859-2" and params.ingest_for("pl").split == "percent_line"
    assert params.ingest_for("web").encoding is None and params.ingest_for("web").split == "blank_line"
    assert params.clean_for("pl").languages == ["pl"] and params.clean_for("pl").min_chars == 5
    assert params.clean_for("web").languages == [] and params.clean_for("web").min_chars == 50
    assert params.ingest.split == "percent_line" and params.clean.languages == []  # the run's own
    assert json.loads(flatten(params, *params.lm_configs())["source_settings"])["pl"]["clean.languages"] == [
        "pl"
    ]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"books": {"ingest.split": "blank_line"}},
            r"source_settings names books, which is not a source of this run \(sources: pl, web\)",
        ),
        (
            {"pl": {"tokenize.vocab_size": 100}},
            r"source_settings\.pl: 'tokenize\.vocab_size' is not a setting a source",
        ),
        (
            {"pl": {"ingest.nope": 1}},
            r"source_settings\.pl: 'ingest\.nope' is not a setting a source can have",
        ),
        ({"pl": {"ingest.encodings": {}}}, r"'ingest\.encodings' is not a setting a source can have"),
        ({"pl": {"split": "file"}}, r"'split' is not a setting a source can have; use ingest\.<field>"),
        (
            {"pl": {"ingest.encoding": "klingon"}},
            r"source_settings\.pl\.ingest\.encoding.*not an encoding Python knows",
        ),
        (
            {"pl": {"clean.languages": ["Polish!"]}},
            r"source_settings\.pl\.clean\.languages.*not language codes",
        ),
    ],
)
def test_bad_source_settings_fail_before_any_work_naming_the_source_and_the_key(settings, message):
    with pytest.raises(ConfigError, match=message):
        PipelineParams(sources=MIX, source_settings=settings).validate_all()


def test_source_settings_and_encodings_name_only_sources_of_a_mixture():
    with pytest.raises(ConfigError, match=r"source_settings names pl, .*\(sources: none named\)"):
        PipelineParams(sources=["a.txt"], source_settings={"pl": {}}).check_source_settings()
    with pytest.raises(ConfigError, match=r"ingest.encodings names ru, which is not a source"):
        PipelineParams(sources=MIX, ingest={"encodings": {"ru": "cp1251"}}).check_source_settings()
