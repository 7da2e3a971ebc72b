"""The `forja` command. Each subcommand parses its flags and calls one function; no logic lives here."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from forja.report_cli import report_command
from forja.stack.cli import app as stack_app
from lm.errors import ForjaError

app = typer.Typer(
    name="forja",
    help="Forja: raw text in, a trained, tracked, reproducible causal language model out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
bench_app = typer.Typer(
    help="Benchmarks that print measured figures (see bench/README.md).", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")
app.add_typer(stack_app, name="stack")
app.command("report")(report_command)

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override any config field: --set max_steps=200 --set model.n_layer=2"),
]
SourceOpt = Annotated[
    list[str] | None,
    typer.Option(help="Source (repeatable, default python-docs): PATH or NAME=PATH[:WEIGHT], a weighted mix"),
]


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_no_traceback_for_user_errors)


def _no_traceback_for_user_errors(record: logging.LogRecord) -> bool:
    """A user's mistake (a ForjaError) ends in one `error:` line; Prefect's log of the same
    exception, traceback and all, is left out of the terminal (it stays in the Prefect run logs)."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, ForjaError) or "Encountered exception during execution: " in record.getMessage():
        return not isinstance(exc, ForjaError) and not _names_user_error(record.getMessage())
    return True


def _names_user_error(message: str) -> bool:
    return any(
        f"{name}(" in message for name in ("ConfigError", "StageError", "DataError", "CheckpointError")
    )


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _stage_interrupts(out: Path) -> Iterator[None]:
    """Ctrl-C in `forja ingest|clean|tokenize`: one line on what is left, exit 130, no traceback.
    A stage publishes its output last (the manifest after every part), so OUT is as it was."""
    t0 = time.monotonic()
    try:
        yield
    except KeyboardInterrupt:
        typer.secho(
            f"interrupted after {time.monotonic() - t0:.0f}s; {out} is as it was (a stage publishes its "
            "output only when it completes): run the same command to start again",
            fg=typer.colors.YELLOW,
            err=True,
        )
        raise typer.Exit(130) from None


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def main() -> None:
    """Entry point: user errors (ForjaError) print one clear line instead of a traceback."""
    try:
        app()
    except ForjaError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    finally:
        # Python's last garbage collection at exit walks every object torch, mlflow and prefect
        # made: about 2 s on 2 cores after a run has printed its result (bench/orchestration.py).
        # It skips frozen objects; the rest of an orderly exit still runs (threads joined, atexit
        # handlers, files flushed and closed).
        gc.freeze()


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Token folder written by `forja tokenize`.")],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, config, metrics.")],
    preset: Annotated[str, typer.Option(help="Named preset: tiny, small, gpt2-124m.")] = "tiny",
    set_: SetOpt = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the newest complete checkpoint in --out.")
    ] = False,
    init_from: Annotated[
        str | None, typer.Option(help="Start from this model's weights (run, checkpoint, models:/ URI).")
    ] = None,
) -> None:
    """Train a model on a token folder (runs under torchrun too)."""
    from lm.config import apply_overrides, get_preset
    from lm.train import resume_configs
    from lm.train import train as run_training

    _setup_logging()
    p = get_preset(preset)
    base = resume_configs(out, p.model, p.train) if resume else (p.model, p.train)
    init = None
    if init_from is not None:  # the model's shape is the checkpoint's; training settings are the preset's
        from forja.models import local_checkpoint
        from lm.checkpoint import read_configs, resolve_checkpoint

        init = resolve_checkpoint(local_checkpoint(init_from))
        base = (read_configs(init)[0], base[1])
    model_cfg, train_cfg = apply_overrides(*base, set_ or [])
    on_metrics = None
    if os.environ.get("FORJA_MLFLOW_RUN_ID") and int(os.environ.get("RANK", "0")) == 0:
        from forja.home import configure  # a flow launched us under torchrun: log to its MLflow run
        from forja.tracking import MetricsLogger

        configure()
        on_metrics = MetricsLogger(os.environ["FORJA_MLFLOW_RUN_ID"])
    from forja import session

    try:
        with session.interrupts():
            result = run_training(
                model_cfg,
                train_cfg,
                data,
                out,
                resume=resume,
                init_from=init,
                on_metrics=on_metrics,
                should_stop=session.reraise_lost_interrupt,
            )
    except KeyboardInterrupt:
        from lm.checkpoint import latest_checkpoint

        last = latest_checkpoint(out) if out.is_dir() else None
        typer.secho(
            "interrupted; "
            + (f"last complete checkpoint: {last}" if last else "no checkpoint was written yet"),
            fg=typer.colors.YELLOW,
            err=True,
        )
        again = ["forja", "train", "--data", str(data), "--out", str(out), "--preset", preset, "--resume"]
        again += [a for kv in set_ or [] for a in ("--set", kv)]
        typer.echo(f"to resume: {shlex.join(again)}", err=True)
        raise typer.Exit(130) from None
    if on_metrics is not None:
        on_metrics.flush()
    summary = {
        "run_dir": str(result.run_dir),
        "step": result.step,
        "checkpoint": str(result.checkpoint),
        **{k: round(v, 6) for k, v in result.metrics.items()},
    }
    typer.echo(json.dumps(summary, indent=2))


@app.command("eval")
def eval_(
    model: Annotated[str, typer.Argument(help="Run folder, checkpoint folder, or models:/ / runs:/ URI.")],
    text: Annotated[Path, typer.Option(help="UTF-8 text file to evaluate.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    seq_len: Annotated[int, typer.Option(help="Context per window (0: the model's).")] = 0,
) -> None:
    """Loss per token, perplexity and bits per byte of a text."""
    from forja.models import load_model_ref
    from lm.evaluate import evaluate_text
    from lm.tokenizer import Tokenizer

    if not text.is_file():
        _fail(f"--text {text} is not a file")
    try:
        body = text.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        _fail(f"--text {text} is not UTF-8 ({e}); convert it or run it through `forja ingest`")
    if not body:
        _fail(f"--text {text} is empty: give a file with some text to evaluate")
    loaded = load_model_ref(model)
    tok = Tokenizer(loaded.tokenizer_path)
    result = evaluate_text(loaded.model, tok, body, seq_len or loaded.model_cfg.max_seq_len)
    if as_json:
        typer.echo(
            json.dumps({"model": model, "checkpoint": str(loaded.checkpoint), **result.to_dict()}, indent=2)
        )
    else:
        typer.echo(
            f"{text}: {result.tokens:,} tokens, {result.bytes:,} bytes\n"
            f"  loss        {result.loss:.4f} nats/token\n"
            f"  perplexity  {result.perplexity:.2f}\n"
            f"  bits/byte   {result.bits_per_byte:.4f}"
        )


@app.command()
def sample(
    model: Annotated[str, typer.Argument(help="Run folder, checkpoint folder, or models:/ / runs:/ URI.")],
    prompt: Annotated[str, typer.Option(help="Text to continue.")] = "",
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 100,
    temperature: Annotated[float, typer.Option(min=0.0, help="0: greedy.")] = 0.8,
    top_k: Annotated[int | None, typer.Option(min=1)] = None,
    top_p: Annotated[float | None, typer.Option(min=0.0, max=1.0)] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    ignore_eos: Annotated[
        bool, typer.Option(help="Go on past the end-of-text token (by default generation stops there).")
    ] = False,
) -> None:
    """Generate a continuation of a prompt."""
    from forja.models import load_model_ref
    from lm.generate import generate
    from lm.tokenizer import Tokenizer

    loaded = load_model_ref(model)
    tok = Tokenizer(loaded.tokenizer_path)
    prompt_ids = tok.encode(prompt)
    ids = generate(
        loaded.model,
        prompt_ids,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        eos_id=None if ignore_eos else tok.eos_id,
    )
    typer.echo(tok.decode(prompt_ids + [i for i in ids if i != tok.eos_id]))
    if not ignore_eos and ids and ids[-1] == tok.eos_id and len(ids) < max_new_tokens:
        typer.echo(
            f"(stopped after {len(ids)} of {max_new_tokens} tokens: the model wrote the end-of-text "
            "token; --ignore-eos goes on past it)",
            err=True,
        )


def _pipeline_params(source, preset, out, set_, resume):
    from flows.params import PipelineParams, apply_sets
    from flows.pipeline import params_of_run_dir

    if resume:
        if out is None:
            _fail("--resume needs --out: the run folder to continue")
        params = params_of_run_dir(out)  # the recorded parameters of that run
        params = params.model_copy(update={"run": params.run.model_copy(update={"resume": True, "out": out})})
    else:
        params = PipelineParams(sources=source or ["python-docs"], preset=preset)
        if out is not None:
            params = params.model_copy(update={"run": params.run.model_copy(update={"out": out})})
    params = apply_sets(params, set_ or [])
    params.validate_all()
    return params


def _print_result(result: dict) -> None:
    if result.get("status") == "unchanged":
        typer.echo("nothing new in the sources: no retraining (the champion stays as it is)")
        return
    ev, reg, champ = result["eval"], result.get("registered") or {}, result.get("champion") or {}
    typer.echo(
        json.dumps(
            {
                "run_dir": result["run_dir"],
                "mlflow_run_id": result["mlflow_run_id"],
                "step": result["train"]["step"],
                "eval_bpb": round(ev["eval_bpb"], 4),
                "eval_loss": round(ev["eval_loss"], 4),
                "eval_perplexity": round(ev["eval_perplexity"], 2),
                **{
                    k: round(v, 4)
                    for k, v in ev.items()
                    if k.startswith("downstream/") and k.endswith("/acc_norm")
                },
                "model": reg.get("model_name"),
                "model_version": reg.get("version"),
                # from the registry, read after the decision (a cached run's own result may be old)
                "champion": bool(champ) and champ.get("version") == reg.get("version"),
                "champion_version": champ.get("version"),
                "champion_uri": champ.get("uri"),
                "why": reg.get("reason"),
            },
            indent=2,
        )
    )
    for s in result.get("samples", [])[:2]:
        typer.echo(f"--- sample: {s['text']!r}")


@contextlib.contextmanager
def _flow_startup() -> Iterator[None]:
    """Set up a flow run while its temporary Prefect server starts (session.start_early): the
    block validates the parameters and imports the flow; the MLflow store opens after it.

    CPU time is what a run's start is made of on 2 cores (bench/orchestration.py). No garbage
    collection meanwhile: the imports (prefect, mlflow, torch) make objects that live as long as
    the process, and each full collection walked everything imported so far (7 of them, 0.8 s,
    before a small run's flow started). Frozen afterwards, they are no longer walked by the run's
    own collections either (1.7 s of a small run, 9 collections, before)."""
    from forja.session import configure_and_start_api

    gc.disable()
    try:
        configure_and_start_api()  # first: before any import that can wait
        yield
        from forja import tracking

        tracking.client()  # its imports (about 0.6 s) overlap the server's start
        gc.freeze()
    finally:
        gc.enable()


def _run_flow(flow, params, **extra):
    """Run a flow in this process with a Prefect API (a temporary server of our own when none is
    set); Ctrl-C or SIGTERM stops it cleanly and says how to resume."""
    from flows import pipeline as pipeline_mod
    from forja import session
    from forja.home import Home

    t0 = time.monotonic()
    with session.prefect_api(Home.from_env()), session.interrupts():
        try:
            return flow(**{k: getattr(params, k) for k in type(params).model_fields}, **extra)
        except KeyboardInterrupt:
            pass
    # the flow run, the MLflow run and the checkpoints are final; the temporary server is stopped
    run_dirs = pipeline_mod.started_run_dirs
    if run_dirs:
        again = f"forja run --out {shlex.quote(str(run_dirs[-1]))} --resume"
        where = f"; its run folder is {run_dirs[-1]} (training resumes from its last complete checkpoint)"
    else:
        again = shlex.join(["forja", *sys.argv[1:]])
        where = " before training (the finished data stages are kept and will show as Cached)"
    typer.secho(f"interrupted after {time.monotonic() - t0:.0f}s{where}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"to resume: {again}", err=True)
    raise typer.Exit(130)


@app.command()
def run(
    source: SourceOpt = None,
    preset: Annotated[str, typer.Option(help="Named preset: tiny, small, gpt2-124m.")] = "tiny",
    out: Annotated[Path | None, typer.Option(help="Run folder (default: under FORJA_HOME/runs).")] = None,
    set_: SetOpt = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out with its recorded parameters.")
    ] = False,
) -> None:
    """Run the whole pipeline (Prefect flow, tracked in MLflow): ingest -> ... -> register."""
    _setup_logging()
    with _flow_startup():
        params = _pipeline_params(source, preset, out, set_, resume)
        from flows.pipeline import pipeline

    result = _run_flow(pipeline, params)
    _print_result(result)


@app.command()
def retrain(
    source: SourceOpt = None,
    preset: Annotated[str, typer.Option()] = "tiny",
    continue_from_champion: Annotated[bool, typer.Option(help="Start from the champion's weights.")] = False,
    new_tokenizer: Annotated[
        bool, typer.Option(help="Train a new tokenizer instead of the champion's.")
    ] = False,
    set_: SetOpt = None,
) -> None:
    """Run the retrain flow once: stop if nothing new arrived, else train and promote if better."""
    _setup_logging()
    with _flow_startup():
        params = _pipeline_params(source, preset, None, set_, False)
        from flows.retrain import retrain as retrain_flow

    result = _run_flow(
        retrain_flow, params, continue_from_champion=continue_from_champion, new_tokenizer=new_tokenizer
    )
    _print_result(result)


@app.command()
def reproduce(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of a `forja run`.")],
    out: Annotated[Path | None, typer.Option(help="Folder for the reproduced run.")] = None,
) -> None:
    """Re-run a recorded run from its logged config and data digests; compare the weights."""
    from forja.home import configure, prepare_embedded_prefect

    _setup_logging()
    configure()
    prepare_embedded_prefect()
    from flows.reproduce import reproduce as do_reproduce

    result = do_reproduce(run_id, out)
    typer.echo(json.dumps(result, indent=2))
    if not result["identical"]:
        raise typer.Exit(1)


@app.command()
def ui(
    host: Annotated[
        str, typer.Option(help="Address to bind; anything but loopback turns auth on.")
    ] = "127.0.0.1",
    prefect_port: Annotated[int, typer.Option()] = 4200,
    mlflow_port: Annotated[int, typer.Option()] = 5000,
    public_name: Annotated[
        list[str] | None, typer.Option(help="Host name users reach (MLflow allow-list).")
    ] = None,
) -> None:
    """Start the Prefect server and the MLflow UI over the Forja home; Ctrl-C stops both."""
    from forja import ui as ui_mod
    from forja.home import Home, migrate_prefect_db

    _setup_logging()
    home = Home.from_env()
    home.root.mkdir(parents=True, exist_ok=True)
    migrate_prefect_db(home.prefect_home)  # not while a run's temporary server migrates it too
    auth = None if ui_mod.is_loopback(host) else ui_mod.load_or_make_auth(home)
    specs = ui_mod.server_specs(home, host, prefect_port, mlflow_port, auth, public_name)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` stops the servers too, not only Ctrl-C
    procs = ui_mod.start(specs, home.root / "logs")
    ui_mod.write_state(home, specs)
    typer.echo(f"Prefect UI: {specs[0].url}\nMLflow UI:  {specs[1].url}")
    if auth:
        typer.echo(f"credentials: user {auth['user']}, password in {home.root / ui_mod.AUTH_FILE}")
    typer.echo("logs in " + str(home.root / "logs") + "; Ctrl-C stops both")
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(1)
        _fail("a server stopped; see the logs")
    except KeyboardInterrupt:
        pass
    finally:
        ui_mod.stop(procs)
        ui_mod.clear_state(home)


@app.command()
def serve(
    cron: Annotated[str, typer.Option(help="Schedule of the retrain deployment (cron, UTC).")] = "0 3 * * *",
    source: Annotated[list[str] | None, typer.Option(help="Sources the nightly retrain reads.")] = None,
    port: Annotated[int, typer.Option(help="Port of the Prefect server started when none runs.")] = 4200,
) -> None:
    """Serve the pipeline and retrain deployments from this process (trigger them from the Prefect UI)."""
    from forja import ui as ui_mod
    from forja.home import Home, configure, migrate_prefect_db

    _setup_logging()
    home = Home.from_env()
    procs = []
    signal.signal(signal.SIGTERM, _raise_interrupt)
    if not os.environ.get("PREFECT_API_URL") and home.ui_state() is None:
        migrate_prefect_db(home.prefect_home)
        specs = ui_mod.server_specs(home, prefect_port=port)[:1]  # deployments need a server
        procs = ui_mod.start(specs, home.root / "logs")
        os.environ["PREFECT_API_URL"] = specs[0].url + "/api"
        typer.echo(f"started a Prefect server: {specs[0].url}")
    configure()
    api = os.environ.get("PREFECT_API_URL") or (home.ui_state() or {}).get("prefect_api_url")
    exe = Path(sys.executable).with_name("prefect")  # a new shell may not have the venv on PATH
    run = f"PREFECT_API_URL={api} {shlex.quote(str(exe)) if exe.is_file() else 'prefect'} deployment run"
    triggers = "serving the deployments; trigger a run from another shell (or the UI):\n" + "\n".join(
        f"  {run} '{d}'" for d in ("pipeline/forja-pipeline", "retrain/forja-retrain-nightly")
    )
    try:
        from flows.deployments import serve_all

        serve_all(cron=cron, sources=source or ["python-docs"], announce=lambda: typer.echo(triggers))
    finally:
        ui_mod.stop(procs)


def _summary(manifest: dict, keys: tuple[str, ...]) -> str:
    out = {k: manifest[k] for k in keys if k in manifest}
    return json.dumps(out, indent=2, default=str)


@app.command()
def ingest(
    sources: Annotated[
        list[str], typer.Argument(help="Files, folders, globs, http(s) URLs, or python-docs.")
    ],
    out: Annotated[Path, typer.Option(help="Dataset folder (grows incrementally).")],
    set_: SetOpt = None,
    fresh: Annotated[
        bool,
        typer.Option(help="Read the sources even if they look unchanged (only new documents are added)."),
    ] = False,
) -> None:
    """Read corpora into a Parquet dataset; bad input goes to quarantine with the reason."""
    from forja.settings import apply_sets
    from tasks.ingest import IngestConfig, run_ingest

    _setup_logging()
    with _stage_interrupts(out):
        m = run_ingest(sources, out, apply_sets(IngestConfig(), set_ or []), fresh=fresh)
    typer.echo(_summary(m, ("changed", "run", "counts", "digest")))


@app.command()
def clean(
    src: Annotated[Path, typer.Argument(help="An ingest folder.")],
    out: Annotated[Path, typer.Option(help="Folder for the cleaned Parquet and its report.")],
    set_: SetOpt = None,
) -> None:
    """Normalise, filter, deduplicate and redact with DuckDB SQL rules (tasks/sql/)."""
    from forja.settings import apply_sets
    from tasks.clean import CleanConfig, run_clean

    _setup_logging()
    with _stage_interrupts(out):
        m = run_clean(src, out, apply_sets(CleanConfig(), set_ or []))
    typer.echo(_summary(m, ("counts", "digest")))


@app.command()
def tokenize(
    src: Annotated[Path, typer.Argument(help="A clean folder.")],
    out: Annotated[Path, typer.Option(help="Token folder: tokenizer.model, shards, manifest.")],
    set_: SetOpt = None,
) -> None:
    """Train (or reuse) a SentencePiece tokenizer and write train/val token shards."""
    from forja.settings import apply_sets
    from tasks.tokenize import TokenizeConfig, run_tokenize

    _setup_logging()
    with _stage_interrupts(out):
        m = run_tokenize(src, out, apply_sets(TokenizeConfig(), set_ or []))
    typer.echo(_summary(m, ("splits", "counts", "tokenizer_sha256", "digest")))


@app.command()
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """The registered models: one per dataset, each with its champion."""
    from forja.home import configure
    from forja.tracking import list_models

    configure()
    rows = list_models()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))  # name, dataset, champion_version, eval_bpb, uri, versions
        return
    if not rows:
        typer.echo("no registered models yet: `forja run` trains and registers one")
        return
    typer.echo(f"{'name':24} {'dataset':14} {'champion':>8} {'eval bpb':>9} {'versions':>8}  uri")
    for r in rows:
        bpb = f"{r['eval_bpb']:.4f}" if r["eval_bpb"] is not None else "-"
        champ = f"v{r['champion_version']}" if r["champion_version"] is not None else "-"
        typer.echo(
            f"{r['name']:24} {r['dataset'] or '-':14} {champ:>8} {bpb:>9} {r['versions']:>8}  {r['uri'] or '-'}"
        )


@app.command()
def compare(
    runs: Annotated[list[str], typer.Argument(help="MLflow run ids (as `forja run` prints them).")],
    all_params: Annotated[
        bool, typer.Option("--all", help="Add every other parameter that differs.")
    ] = False,
) -> None:
    """Key parameters and figures of several runs side by side (`*`: the values differ)."""
    from forja.compare import compare_text

    typer.echo(compare_text(runs, all_params))


@app.command("export-hf")
def export_hf(
    model: Annotated[str, typer.Argument(help="Run folder, checkpoint folder, or models:/ / runs:/ URI.")],
    out: Annotated[Path, typer.Option(help="Folder to write the Hugging Face model into.")],
) -> None:
    """Write a Hugging Face transformers model folder (config, safetensors, tokenizer)."""
    from forja.hf import export_hf as do_export

    _setup_logging()
    typer.echo(json.dumps(do_export(model, out), indent=2, default=str))


@app.command("import-hf")
def import_hf(
    src: Annotated[Path, typer.Argument(help="A Llama-style Hugging Face model folder.")],
    out: Annotated[Path, typer.Option(help="Run folder to create, holding one checkpoint.")],
) -> None:
    """Load a compatible Llama-style HF checkpoint as a Forja run (e.g. to continue pretraining)."""
    from forja.hf import import_hf as do_import

    _setup_logging()
    typer.echo(json.dumps(do_import(src, out), indent=2, default=str))


@bench_app.command("data", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench_data(
    ctx: typer.Context,
    mb: Annotated[float, typer.Option(help="Corpus size to build (MB of text).")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """ingest -> clean -> tokenize on a generated corpus, against a bare SentencePiece encode; more
    options (--sizes 1GB,10GB --memory 2GB --compare datatrove) go to bench/data_bench.py (its --help)."""
    script = Path(__file__).resolve().parents[1] / "bench" / "data_bench.py"
    if not script.is_file():
        _fail(f"{script} is missing: the data benchmark runs from a source checkout of Forja")
    cmd = [sys.executable, str(script), "--mb", str(mb), *(["--json"] if as_json else []), *ctx.args]
    raise typer.Exit(subprocess.run(cmd).returncode)


@bench_app.command("train")
def bench_train(
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    quick: Annotated[bool, typer.Option(help="Fewer steps (a smoke run, not a measurement).")] = False,
) -> None:
    """Matmul peak, training tokens/s and MFU, transformer vs LSTM step time."""
    from lm.bench import format_report, run_train_bench

    _setup_logging()
    report = run_train_bench(quick=quick)
    typer.echo(json.dumps(report, indent=2) if as_json else format_report(report))


if __name__ == "__main__":
    main()
