"""`forja report RUN_ID_OR_MODEL_URI`: the report card of a run, printed (forja/report.py).

Registered on the `forja` command by forja/cli.py; the work is in forja/report_run.py, imported
when the command runs (MLflow is slow to import, and the other commands do not need it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report_command(
    ref: Annotated[str, typer.Argument(help="MLflow run id, or models:/NAME@ALIAS, models:/NAME/VERSION.")],
    html_out: Annotated[
        Path | None, typer.Option("--html", help="Also write the card as one self-contained HTML file.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="report.price_per_hour=2.5, report.peak_flops=989e12, report.currency=EUR."
        ),
    ] = None,
) -> None:
    """Print the report card of a run (markdown): data, model, training cost, evaluation, samples."""
    from forja.home import configure
    from forja.report_run import recorded_config, render, resolve
    from forja.settings import apply_sets

    configure()
    run_id, _ = resolve(ref)
    config = None
    if set_:  # over what the run recorded; keys as the pipeline takes them, or bare
        config = apply_sets(recorded_config(run_id), [s.removeprefix("report.") for s in set_])
    md, page = render(run_id, config)
    typer.echo(md, nl=False)
    if html_out is not None:
        html_out.write_text(page, encoding="utf-8")
        typer.echo(f"wrote {html_out}", err=True)
