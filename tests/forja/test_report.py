"""The report card builder (forja/report.py) on hand-written inputs: every figure checked against a
computation done here by hand. The card of a real run is tested in tests/flows/test_e2e.py."""

from __future__ import annotations

import re

import pytest

from flows.params import PipelineParams, apply_sets
from forja.report import ReportConfig, card_html, card_markdown, funnel, tokenizer_figures, training_figures
from lm.errors import ConfigError

INGEST = {
    "counts": {
        "run": {
            "items": 1000,
            "accepted": 900,
            "duplicates": 60,
            "already_known": 0,
            "quarantined": 40,
            "quarantine_by_reason": {"binary": 30, "empty": 10},
        },
        "total": {"documents": 900, "text_bytes": 1_800_000},
    }
}
CLEAN = {
    "counts": {
        "rows_in": 900,
        "rows_out": 850,
        "dropped": {"length": 20, "quality": 25, "exact_dedup": 5, "near_dedup": 0},
        "changed": {"whitespace": 7, "pii": 0},
    }
}
TOKENS = {
    "config": {"vocab_size": 4096, "model_type": "bpe"},
    "counts": {"tokens": 500_000, "bytes": 1_700_000},
    "splits": {"train": {"tokens": 450_000}, "val": {"tokens": 50_000}},
}
MODEL = {"arch": "transformer", "params": 1_200_000, "matmul_params": 1_000_000}
MODEL |= {"n_layer": 4, "d_model": 256, "seq_len": 512, "attention": True}
# 6 N + 12 L d T, by hand
FLOPS = 6 * 1_000_000 + 12 * 4 * 256 * 512
assert FLOPS == 12_291_456
# two logged intervals of 10 steps, 100 tokens per step: 1000 tokens at 1000/s, then at 2000/s
ROWS = [{"step": s, "loss": 5.0} for s in range(1, 21)]
ROWS[9] |= {"tokens_per_s": 1000.0, "mfu": 0.25}
ROWS[19] |= {"tokens_per_s": 2000.0, "mfu": 0.5}
METRICS = {
    "eval_bpb": 1.2345,
    "eval_loss": 2.5,
    "val_bpb/web": 1.5,
    "val_bpb/code": 0.875,
    "eval_bpb/books": 1.125,
    "downstream/cloze/acc": 0.4,
    "downstream/cloze/acc_norm": 0.45,
    "downstream/cloze/acc_norm_ci95_low": 0.36,
    "downstream/cloze/acc_norm_ci95_high": 0.54,
    "downstream/cloze/chance": 0.25,
    "downstream/cloze/n": 100.0,
}


def card(config: ReportConfig, samples=()) -> dict:
    return {
        "run": {"run_id": "r1", "name": "tidy-owl", "dataset": "web", "git_commit": "abc123-dirty"},
        "environment": {
            "packages": {"torch": "2.13.0"},
            "hardware": {"cpu": "Test CPU", "cores": 8, "gpu": None, "native_bf16": False, "device": "cpu"},
        },
        "data": {"funnel": funnel(INGEST, CLEAN, TOKENS), "sources": {"code": funnel(INGEST, CLEAN, TOKENS)}},
        "tokenizer": tokenizer_figures(TOKENS),
        "model": MODEL,
        "training": training_figures(ROWS, 100, FLOPS, config),
        "metrics": METRICS,
        "samples": list(samples),
        "has_loss_curve": True,
    }


def row(md: str, name: str) -> list[str]:
    """The cells of the first table row of `md` whose first cell is `name`."""
    line = next(x for x in md.splitlines() if x.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split(" | ")]


def test_funnel_counts_each_step_and_what_it_dropped():
    f = funnel(INGEST, CLEAN, TOKENS)
    assert (f["items"], f["documents"], f["cleaned"], f["tokens"]) == (1000, 900, 850, 500_000)
    assert f["ingest_drops"] == {
        "duplicates": 60,
        "quarantined": 40,
        "quarantined: binary": 30,
        "quarantined: empty": 10,
    }
    assert f["items"] == f["documents"] + f["ingest_drops"]["duplicates"] + f["ingest_drops"]["quarantined"]
    assert f["documents"] - f["cleaned"] == sum(f["clean_drops"].values()) == 50
    assert f["splits"] == {"train": 450_000, "val": 50_000}
    assert tokenizer_figures(TOKENS)["bytes_per_token"] == pytest.approx(1_700_000 / 500_000)


def test_training_figures_by_hand():
    t = training_figures(ROWS, 100, FLOPS, ReportConfig(price_per_hour=3.6, peak_flops=1e11))
    assert t["steps"] == 20 and t["tokens"] == 2000
    assert t["wall_s"] == pytest.approx(1000 / 1000 + 1000 / 2000)  # 1.5 s
    assert t["tokens_per_s"] == pytest.approx(2000 / 1.5)
    assert t["mfu"] == pytest.approx(FLOPS * (2000 / 1.5) / 1e11)  # 0.1639
    assert t["cost"] == pytest.approx(1.5 / 3600 * 3.6)  # 0.0015
    # no peak given: the one training measured (FLOPs x its tokens/s / its MFU, at the last log)
    t = training_figures(ROWS, 100, FLOPS, ReportConfig())
    assert t["peak_flops"] == pytest.approx(FLOPS * 2000 / 0.5)
    assert t["mfu"] == pytest.approx((2000 / 1.5) / (2000 / 0.5))
    assert t["cost"] is None


def test_card_markdown_states_every_figure():
    md = card_markdown(card(ReportConfig(price_per_hour=3.6, peak_flops=1e11)))
    assert md.startswith("# Report card: tidy-owl\n")
    assert row(md, "code version")[1] == "abc123 (dirty: uncommitted changes)"
    assert row(md, "native bf16")[1] == "no" and row(md, "CPU")[1] == "Test CPU (8 logical cores)"
    assert row(md, "items read (ingest)")[1:] == [
        "1,000",
        "duplicates 60, quarantined 40, quarantined: binary 30, quarantined: empty 10",
    ]
    assert row(md, "documents after cleaning")[1:] == [
        "850",
        "dropped by rule: length 20, quality 25, exact_dedup 5",
    ]
    assert row(md, "tokens")[1:] == ["500,000", "train 450,000, val 50,000"]
    assert "### Source `code`" in md
    assert row(md, "bytes per token")[1] == "3.400"
    assert row(md, "FLOPs per token (training)")[1] == "12,291,456 = 6N 6,000,000 + attention 6,291,456"
    assert row(md, "wall time")[1] == "1.5 s"
    assert row(md, "MFU")[1] == f"{100 * FLOPS * (2000 / 1.5) / 1e11:.2f}%" == "16.39%"
    assert row(md, "peak used for MFU")[1] == "100.00 GFLOP/s (report.peak_flops)"
    assert row(md, "estimated cost")[1] == "0.0015 USD (1.5 s at 3.6 USD/h)"
    for name, value in (("val_bpb/web", "1.5000"), ("val_bpb/code", "0.8750"), ("eval_bpb/books", "1.1250")):
        assert row(md, name)[1] == value  # every per-source figure, whatever the sources are called
    assert row(md, "cloze")[1:] == ["0.450 [0.360, 0.540]", "0.400 [-, -]", "0.250", "100"]
    unpriced = card_markdown(card(ReportConfig()))
    assert row(unpriced, "estimated cost")[1] == "not priced (set report.price_per_hour)"
    assert "measured by training" in row(unpriced, "peak used for MFU")[1]


def test_html_is_self_contained_and_escapes_the_samples():
    sample = "ROMEO: <script>alert(1)</script>\n```\nnot a fence end"
    md = card_markdown(card(ReportConfig(), [{"prompt": "ROMEO:", "text": sample}]))
    assert "````text\n" + sample + "\n````" in md  # a fence longer than any run of backticks inside
    page = card_html(md, b"\x89PNG fake")
    assert page.startswith("<!doctype html>") and "<table>" in page
    assert 'src="data:image/png;base64,iVBORyBmYWtl"' in page
    assert "<script" not in page and "&lt;script&gt;" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing fetched from elsewhere


def test_report_settings_are_a_pipeline_config_validated_at_the_edge():
    params = apply_sets(PipelineParams(), ["report.price_per_hour=2.5", "peak_flops=1e12"])
    assert params.report == ReportConfig(price_per_hour=2.5, peak_flops=1e12)
    with pytest.raises(ConfigError, match=r"'report.price_per_hour'"):
        apply_sets(PipelineParams(), ["report.price_per_hour=-1"])
