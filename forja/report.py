"""The report card of a run: one page that says what data went in, what model came out, what it
cost and how good it is (after nanochat's report card), as markdown and as self-contained HTML.

Everything here is pure: plain dicts in, text out. `forja/report_run.py` gathers the dicts from an
MLflow run (its parameters, metrics, tags and the manifests the data stages logged) and sends the
card where it goes; nothing here talks to MLflow or Prefect, reads a file or looks at the machine.

The figures, and where each comes from:
- data funnel: items read by ingest -> documents it stored -> documents left by cleaning -> tokens,
  with what each step dropped (ingest: duplicates, quarantine by reason; clean: per rule), read from
  the ingest, clean and tokenize manifests; once per source when the run logged several;
- tokenizer: vocabulary size, and bytes of text per token over the whole token folder;
- model: parameters, and training FLOPs per token = 6 N + 12 L d T (N: matmul parameters, L
  layers, d width, T context; the attention term as in PaLM appendix B and nanoGPT's estimate_mfu);
- training: wall time = the sum over logged intervals of tokens / (tokens per second), so a run
  resumed twice counts its three pieces; MFU = FLOPs per token x tokens per second / peak, against
  `report.peak_flops` when given, else the dense matmul throughput that training measured on its
  device (on a CPU this is what the CPU does, not a datasheet figure); cost = hours x
  `report.price_per_hour`;
- evaluation: bits per byte on the fixed evaluation set, every `val_bpb/<source>` and
  `eval_bpb/<source>` figure the run has, downstream accuracies with their 95% intervals and chance.
"""

from __future__ import annotations

import base64
import html
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

PACKAGES = ("torch", "prefect", "mlflow", "duckdb", "sentencepiece", "pyarrow", "numpy")


class ReportConfig(BaseModel):
    """What the report card prices and measures against (`--set report.<field>=...`)."""

    model_config = ConfigDict(extra="forbid")

    price_per_hour: float | None = Field(
        None,
        ge=0,
        description="Price of the training machine per hour, for the card's cost estimate (empty: no cost).",
    )
    currency: str = Field("USD", min_length=1, max_length=8, description="Currency of price_per_hour.")
    peak_flops: float | None = Field(
        None,
        gt=0,
        description="Peak FLOP/s that MFU is stated against, e.g. 989e12 for an H100's dense bf16 "
        "(empty: the dense matmul throughput training measured on its device).",
    )


# ---------------------------------------------------------------------------------- the figures


def _n(d: dict[str, Any] | None, *path: str, default: Any = 0) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def funnel(ingest: dict[str, Any], clean: dict[str, Any], tokens: dict[str, Any]) -> dict[str, Any]:
    """items -> documents -> cleaned -> tokens of one dataset (or one source), with the drops of each
    step, from the three stages' manifests."""
    run = _n(ingest, "counts", "run", default={}) or _n(ingest, "run", default={})
    total = _n(ingest, "counts", "total", default={})
    c = clean.get("counts") or {}
    splits = tokens.get("splits") or {}
    ingest_drops = {k: int(run[k]) for k in ("duplicates", "already_known", "quarantined") if run.get(k)}
    ingest_drops |= {f"quarantined: {r}": int(n) for r, n in (run.get("quarantine_by_reason") or {}).items()}
    return {
        "items": int(run.get("items", 0)),
        "documents": int(total.get("documents", run.get("accepted", 0))),
        "text_bytes": int(total.get("text_bytes", run.get("text_bytes", 0))),
        "ingest_drops": ingest_drops,
        "clean_in": int(c.get("rows_in", 0)),
        "cleaned": int(c.get("rows_out", 0)),
        "clean_drops": {rule: int(n) for rule, n in (c.get("dropped") or {}).items()},
        "clean_changed": {rule: int(n) for rule, n in (c.get("changed") or {}).items() if n},
        "tokens": int(_n(tokens, "counts", "tokens", default=0)),
        "token_bytes": int(_n(tokens, "counts", "bytes", default=0)),
        "splits": {s: int(v.get("tokens", 0)) for s, v in splits.items()},
    }


def tokenizer_figures(tokens: dict[str, Any]) -> dict[str, Any]:
    """Vocabulary size and bytes of text per token of the token folder."""
    n_tokens = int(_n(tokens, "counts", "tokens", default=0))
    n_bytes = int(_n(tokens, "counts", "bytes", default=0))
    return {
        "vocab_size": _n(tokens, "config", "vocab_size", default=None) or tokens.get("vocab_size"),
        "model_type": _n(tokens, "config", "model_type", default=None),
        "bytes_per_token": n_bytes / n_tokens if n_tokens else None,
    }


def flops_per_token(matmul_params: int, n_layer: int, d_model: int, seq_len: int, attention: bool) -> float:
    """Training FLOPs per token: 6 x matmul parameters (forward 2, backward 4) + 12 L d T for the
    attention scores and weighted sum (0 for a model without attention)."""
    return 6.0 * matmul_params + (12.0 * n_layer * d_model * seq_len if attention else 0.0)


def training_figures(
    rows: list[dict[str, Any]], tokens_per_step: int, flops: float, config: ReportConfig
) -> dict[str, Any]:
    """Steps, tokens, wall time, tokens/s, MFU and cost from the rows of metrics.jsonl.

    A row with `tokens_per_s` covers the steps since the previous such row; `mfu` in the rows is
    training's own, against its measured matmul peak, which is recovered here when no peak is given.
    """
    steps, wall, last = 0, 0.0, 0
    measured_peak = None
    for r in sorted(rows, key=lambda r: r["step"]):
        steps = max(steps, int(r["step"]))
        tps = r.get("tokens_per_s")
        if tps:
            wall += (r["step"] - last) * tokens_per_step / tps
            last = r["step"]
            if r.get("mfu"):
                measured_peak = flops * tps / r["mfu"]
    tokens = steps * tokens_per_step
    tokens_per_s = tokens / wall if wall else None
    if config.peak_flops is not None:
        peak, peak_source = config.peak_flops, "report.peak_flops"
    else:
        peak, peak_source = measured_peak, "dense matmul throughput measured by training on its device"
    mfu = flops * tokens_per_s / peak if peak and tokens_per_s else None
    cost = wall / 3600.0 * config.price_per_hour if config.price_per_hour is not None else None
    return {
        "steps": steps,
        "tokens_per_step": tokens_per_step,
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens_per_s,
        "peak_flops": peak,
        "peak_source": peak_source,
        "mfu": mfu,
        "cost": cost,
        "currency": config.currency,
        "price_per_hour": config.price_per_hour,
    }


def per_source_bpb(metrics: dict[str, float]) -> dict[str, float]:
    """Every `val_bpb/<source>` and `eval_bpb/<source>` figure of the run, by its metric name."""
    return {k: v for k, v in sorted(metrics.items()) if re.match(r"(val|eval)_bpb/.+", k)}


def downstream_rows(metrics: dict[str, float]) -> list[dict[str, Any]]:
    """One row per downstream task the run has: acc_norm, acc, their 95% intervals, chance, items."""
    tasks = sorted({k.split("/")[1] for k in metrics if k.startswith("downstream/") and k.count("/") == 2})
    rows = []
    for task in tasks:
        p = f"downstream/{task}/"
        if p + "acc_norm" not in metrics:
            continue
        rows.append(
            {
                "task": task,
                **{k: metrics.get(p + k) for k in ("acc_norm", "acc", "chance", "n")},
                "acc_norm_ci95": (
                    metrics.get(p + "acc_norm_ci95_low"),
                    metrics.get(p + "acc_norm_ci95_high"),
                ),
                "acc_ci95": (metrics.get(p + "acc_ci95_low"), metrics.get(p + "acc_ci95_high")),
            }
        )
    return rows


# ---------------------------------------------------------------------------------- markdown


def _int(v: Any) -> str:
    return f"{int(v):,}" if v is not None else "-"


def _f(v: Any, fmt: str = ".4f") -> str:
    return format(v, fmt) if isinstance(v, int | float) else "-"


def _si(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.2f} {prefix}{unit}"
    return f"{v:.2f} {unit}"


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}text\n{text}\n{ticks}"


def _funnel_md(f: dict[str, Any]) -> str:
    drops = lambda d: ", ".join(f"{k} {v:,}" for k, v in d.items() if v) or "none"  # noqa: E731
    splits = ", ".join(f"{s} {n:,}" for s, n in f["splits"].items())
    return _table(
        ("step", "count", "dropped / note"),
        [
            ("items read (ingest)", _int(f["items"]), drops(f["ingest_drops"])),
            ("documents stored", _int(f["documents"]), f"{f['text_bytes']:,} bytes of text"),
            ("documents after cleaning", _int(f["cleaned"]), "dropped by rule: " + drops(f["clean_drops"])),
            ("tokens", _int(f["tokens"]), splits),
        ],
    ) + ("\n\nChanged in place by cleaning: " + drops(f["clean_changed"]) if f["clean_changed"] else "")


def _dtype(setting: str | None, hw: dict[str, Any]) -> str:
    if setting == "auto" and hw.get("auto_dtype"):
        return f"{hw['auto_dtype']} (dtype=auto)"
    return setting or "-"


def card_markdown(card: dict[str, Any]) -> str:
    """The report card as markdown, from the dict `forja/report_run.py` gathers (see its keys there).

    Figures that a run did not record show as `-` or `not recorded`: an old run still gets a card.
    """
    run, env = card["run"], card.get("environment") or {}
    out = [f"# Report card: {run.get('name') or run['run_id']}", ""]
    out.append(
        f"Run `{run['run_id']}` · dataset `{run.get('dataset', '-')}` · preset `{run.get('preset', '-')}`"
        + (f" · started {run['started']}" if run.get("started") else "")
        + (f" · model {run['model']}" if run.get("model") else "")
    )
    out += ["", "## Code and machine", ""]
    commit = run.get("git_commit") or "unknown"
    dirty = commit.endswith("-dirty")
    hw = env.get("hardware") or {}
    rows = [
        (
            "code version",
            f"{commit.removesuffix('-dirty')} ({'dirty: uncommitted changes' if dirty else 'clean'})",
        ),
        ("packages", ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items()) or "not recorded"),
        ("CPU", f"{hw.get('cpu', 'not recorded')} ({_int(hw.get('cores'))} logical cores)"),
        ("GPU", hw.get("gpu") or "none"),
        ("native bf16", {True: "yes", False: "no"}.get(hw.get("native_bf16"), "not recorded")),
        ("training device / precision", f"{hw.get('device', '-')} / {_dtype(run.get('dtype'), hw)}"),
    ]
    out.append(_table(("", "value"), rows))

    data = card.get("data") or {}
    out += ["", "## Data", ""]
    if data.get("funnel"):
        out.append(_funnel_md(data["funnel"]))
    else:
        out.append("not recorded")
    for name, f in (data.get("sources") or {}).items():
        out += ["", f"### Source `{name}`", "", _funnel_md(f)]
    tok = card.get("tokenizer") or {}
    out += ["", "## Tokenizer", ""]
    out.append(
        _table(
            ("", "value"),
            [
                ("vocabulary", f"{_int(tok.get('vocab_size'))} ({tok.get('model_type') or '-'})"),
                ("bytes per token", _f(tok.get("bytes_per_token"), ".3f")),
            ],
        )
    )

    m = card.get("model") or {}
    out += ["", "## Model", ""]
    fpt = None
    if m:
        fpt = flops_per_token(m["matmul_params"], m["n_layer"], m["d_model"], m["seq_len"], m["attention"])
        attn = fpt - 6.0 * m["matmul_params"]
        out.append(
            _table(
                ("", "value"),
                [
                    (
                        "architecture",
                        f"{m['arch']}: {m['n_layer']} layers, d_model {m['d_model']}, context {m['seq_len']}",
                    ),
                    ("parameters", _int(m["params"])),
                    ("matmul parameters N", _int(m["matmul_params"])),
                    (
                        "FLOPs per token (training)",
                        f"{fpt:,.0f} = 6N {6.0 * m['matmul_params']:,.0f} + attention {attn:,.0f}",
                    ),
                ],
            )
        )
    else:
        out.append("not recorded")

    t = card.get("training")
    out += ["", "## Training", ""]
    if t:
        cost = (
            f"{t['cost']:.4f} {t['currency']} ({_duration(t['wall_s'])} at {t['price_per_hour']:g} {t['currency']}/h)"
            if t["cost"] is not None
            else "not priced (set report.price_per_hour)"
        )
        out.append(
            _table(
                ("", "value"),
                [
                    ("steps", _int(t["steps"])),
                    ("tokens", f"{t['tokens']:,} ({t['tokens_per_step']:,} per step)"),
                    ("wall time", _duration(t["wall_s"])),
                    ("tokens per second", _f(t["tokens_per_s"], ",.0f")),
                    ("MFU", f"{100 * t['mfu']:.2f}%" if t["mfu"] is not None else "-"),
                    ("peak used for MFU", f"{_si(t['peak_flops'], 'FLOP/s')} ({t['peak_source']})"),
                    ("estimated cost", cost),
                ],
            )
        )
    else:
        out.append("not recorded")

    metrics = card.get("metrics") or {}
    out += ["", "## Evaluation", ""]
    rows = [
        (name, _f(metrics.get(key), fmt))
        for name, key, fmt in (
            ("bits per byte (fixed evaluation set)", "eval_bpb", ".4f"),
            ("loss (nats per token)", "eval_loss", ".4f"),
            ("perplexity", "eval_perplexity", ".2f"),
            ("validation bits per byte (end of training)", "val_bpb", ".4f"),
        )
        if key in metrics
    ]
    rows += [(key, _f(v)) for key, v in per_source_bpb(metrics).items()]
    out.append(_table(("figure", "value"), rows) if rows else "not recorded")
    ds = downstream_rows(metrics)
    if ds:
        out += [
            "",
            "Downstream multiple choice (length-normalised log-likelihood; 95% Wilson intervals):",
            "",
        ]
        out.append(
            _table(
                ("task", "acc_norm [95% CI]", "acc [95% CI]", "chance", "items"),
                [
                    (
                        r["task"],
                        f"{_f(r['acc_norm'], '.3f')} [{_f(r['acc_norm_ci95'][0], '.3f')}, {_f(r['acc_norm_ci95'][1], '.3f')}]",
                        f"{_f(r['acc'], '.3f')} [{_f(r['acc_ci95'][0], '.3f')}, {_f(r['acc_ci95'][1], '.3f')}]",
                        _f(r["chance"], ".3f"),
                        _int(r["n"]),
                    )
                    for r in ds
                ],
            )
        )

    out += ["", "## Loss curve", ""]
    out.append("![loss curve](loss_curve.png)" if card.get("has_loss_curve") else "not recorded")
    samples = card.get("samples") or []
    out += ["", "## Samples", ""]
    for s in samples:
        out += [f"Prompt `{s['prompt']}`:" if s.get("prompt") else "Sample:", "", _fence(s["text"]), ""]
    if not samples:
        out.append("not recorded")
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------------------------- HTML

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
pre{background:#f5f5f5;padding:.6em;white-space:pre-wrap}img{max-width:100%}
"""


def card_html(markdown: str, loss_curve_png: bytes | None = None) -> str:
    """The markdown rendered as one self-contained HTML page: the loss curve inline (a data: URI),
    no script, no link to anything outside the file. Raw HTML in the markdown is escaped."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    if loss_curve_png is not None:
        uri = "data:image/png;base64," + base64.b64encode(loss_curve_png).decode()
        body = body.replace('src="loss_curve.png"', f'src="{uri}"')
    title = html.escape(markdown.splitlines()[0].lstrip("# ") if markdown else "Report card")
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_STYLE}</style></head>\n<body>\n{body}</body></html>\n"
    )
