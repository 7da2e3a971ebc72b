"""`--source NAME=PATH[:WEIGHT]`: parsing, the errors that name the bad source, redaction."""

import pytest

from flows.params import PipelineParams, recorded
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
