"""The parameters of the flows: one pydantic model per concern, validated before any work starts.

The Prefect UI renders each as a form (defaults and descriptions). `ModelParams` and `TrainParams`
mirror lm's `ModelConfig` / `TrainConfig` with every field optional: a field left empty keeps the
preset's value. `resolve()` turns everything into the concrete configs a run uses, and
`apply_sets()` maps `--set key=value` (bare or `stage.key`) onto the right model, and
`takes_pipeline_parameters` gives the `pipeline` and `retrain` flows their parameters from
PipelineParams's fields, declared once.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator
from pydantic.fields import FieldInfo

from flows.sources import (
    SourceSpec,
    check_source_settings,
    parse_sources,
    redact_source,
    source_config,
    source_paths,
)
from forja.report import ReportConfig
from forja.settings import build, model_settings
from lm.config import ModelConfig, TrainConfig, apply_overrides, get_preset
from lm.errors import ConfigError
from lm.overrides import TOP, Setting, parse_sets
from tasks.clean import CleanConfig
from tasks.evaluate import METRIC_DIRECTIONS, EvalConfig
from tasks.ingest import IngestConfig
from tasks.tokenize import TokenizeConfig

F = TypeVar("F", bound=Callable[..., Any])


def _optional_model(name: str, cls: type, doc: str) -> type[BaseModel]:
    hints = typing.get_type_hints(cls)
    fields = {
        f.name: (
            hints[f.name] | None,
            Field(None, description=f"{cls.__name__}.{f.name} (empty: the preset's)"),
        )
        for f in dataclasses.fields(cls)
    }
    return create_model(name, __config__=ConfigDict(extra="forbid"), __doc__=doc, **fields)


ModelParams = _optional_model(
    "ModelParams", ModelConfig, "Model shape overrides (empty fields keep the preset)."
)
TrainParams = _optional_model(
    "TrainParams", TrainConfig, "Training overrides (empty fields keep the preset)."
)


class RunParams(BaseModel):
    """Where the run's files go, how the data stages run, what happens to the model."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Dataset name: its data lives in FORJA_HOME/data/<dataset>.",
    )
    out: Path | None = Field(
        None, description="Run folder (empty: FORJA_HOME/runs/<dataset>-<preset>-<key>)."
    )
    resume: bool = Field(False, description="Continue the run in `out` from its last complete checkpoint.")
    runner: Literal["threads", "dask"] = Field("threads", description="Task runner of the data stages.")
    dask_address: str | None = Field(None, description="Scheduler address of an existing Dask cluster.")
    workers: int = Field(2, ge=1, le=256, description="Threads, or local Dask workers, for the data stages.")
    nproc: int = Field(
        1, ge=1, le=64, description="Training processes (GPUs) per node: >1 launches torchrun."
    )
    nnodes: int = Field(1, ge=1, le=1024, description="Training nodes: >1 launches torchrun on each node.")
    node_rank: int = Field(0, ge=0, description="This node's rank (0: the one hosting the rendezvous).")
    rdzv_endpoint: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._\[\]:-]+:[0-9]+$",
        description="host:port of node 0's c10d rendezvous (needed when nnodes > 1).",
    )
    register_model: bool = Field(
        True, description="Log the model to MLflow, register it, promote if it is better."
    )
    export_hf: bool = Field(True, description="Also export and log a Hugging Face transformers folder.")
    init_from: str | None = Field(
        None, description="Start training from this model's weights (run folder or models:/ URI)."
    )
    fresh: bool = Field(
        False, description="Ignore cached results: re-run every stage (same inputs give the same outputs)."
    )


class RegisterParams(BaseModel):
    """How the champion is chosen among the registered models of a dataset."""

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(
        "eval_bpb",
        description="The evaluation figure the champion gate compares: "
        + ", ".join(f"{m} ({d} is better)" for m, d in METRIC_DIRECTIONS.items()),
    )

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in METRIC_DIRECTIONS:
            raise ValueError(
                f"{v!r} is not a figure of the evaluate stage; use one of {', '.join(METRIC_DIRECTIONS)}"
            )
        return v


STAGES: dict[str, type[BaseModel]] = {
    "ingest": IngestConfig,
    "clean": CleanConfig,
    "tokenize": TokenizeConfig,
    "model": ModelParams,
    "train": TrainParams,
    "evaluate": EvalConfig,
    "register": RegisterParams,
    "report": ReportConfig,
    "run": RunParams,
}


# `register` (the stage's parameters) is also the name of a method of pydantic's metaclass (ABCMeta's):
# a field of that name is safe (instances never see the metaclass's methods), in PipelineParams and
# in the models Prefect builds from the flows' signatures, so pydantic's warning about it is off.
warnings.filterwarnings("ignore", 'Field name "register" in ', UserWarning)


class PipelineParams(BaseModel):
    """Everything one pipeline run is made of (what MLflow records and `forja reproduce` replays)."""

    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(
        default_factory=lambda: ["python-docs"],
        min_length=1,
        description="Files, folders, globs, http(s) URLs, or python-docs (the bundled Python docs); "
        "NAME=PATH[:WEIGHT] names a source of a weighted mixture (kept apart, drawn by weight).",
    )
    preset: str = Field("tiny", description="Named preset of model and training: tiny, small, gpt2-124m.")
    source_settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='Per source of a mixture: NAME -> {"ingest.<field>" or "clean.<field>": value}, the '
        'run\'s ingest and clean settings changed for that source, e.g. {"pl": {"ingest.encoding": '
        '"iso8859-2", "clean.languages": ["pl"]}} (flows/sources.py).',
    )
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="Ingest: reading the sources.")
    clean: CleanConfig = Field(default_factory=CleanConfig, description="Clean: rules and thresholds.")
    tokenize: TokenizeConfig = Field(
        default_factory=TokenizeConfig, description="Tokenize: the SentencePiece model and the shards."
    )
    model: ModelParams = Field(  # type: ignore[valid-type]
        default_factory=ModelParams, description="Model shape (empty fields keep the preset's)."
    )
    train: TrainParams = Field(  # type: ignore[valid-type]
        default_factory=TrainParams, description="Training (empty fields keep the preset's)."
    )
    evaluate: EvalConfig = Field(
        default_factory=EvalConfig, description="Evaluate: the evaluation set and the samples."
    )
    register: RegisterParams = Field(
        default_factory=RegisterParams, description="Register: the figure the champion is chosen by."
    )
    report: ReportConfig = Field(
        default_factory=ReportConfig, description="Report card: price per hour, peak FLOP/s for MFU."
    )
    run: RunParams = Field(
        default_factory=RunParams, description="Run: folders, runners, registration of the model."
    )

    @model_validator(mode="after")
    def _decontaminate_against_eval_text(self) -> PipelineParams:
        """The run's evaluation text (evaluate.eval_text) is one of the texts clean decontaminates
        against; the dataset's frozen evaluation set is added per ingest output (flows/eval_set.py)."""
        eval_text = self.evaluate.eval_text
        path = Path(eval_text).resolve() if eval_text is not None else None
        if path is not None and path.is_file() and path not in self.clean.eval_texts:
            self.clean = self.clean.model_copy(update={"eval_texts": [*self.clean.eval_texts, path]})
        return self

    def lm_configs(self) -> tuple[ModelConfig, TrainConfig]:
        """The preset with the model/train overrides applied (vocab size still from the tokenizer)."""
        preset = get_preset(self.preset)
        overrides = {f"model.{k}": v for k, v in self.model.model_dump(exclude_none=True).items()}
        overrides |= {f"train.{k}": v for k, v in self.train.model_dump(exclude_none=True).items()}
        return apply_overrides(preset.model, preset.train, overrides)

    def mixture(self) -> list[SourceSpec] | None:
        """The named sources of a weighted mixture, or None when the sources are bare (one dataset)."""
        return parse_sources(self.sources)

    def validate_all(self) -> tuple[ModelConfig, TrainConfig]:
        """Every check that can run before any work: preset, value ranges, sources, vocab vs. model."""
        model_cfg, train_cfg = self.lm_configs()
        if self.run.nnodes > 1 and not self.run.rdzv_endpoint:
            raise ConfigError("'run.nnodes' > 1 needs 'run.rdzv_endpoint': host:port of node 0")
        if self.run.node_rank >= self.run.nnodes:
            raise ConfigError(f"'run.node_rank' must be below run.nnodes={self.run.nnodes}")
        from tasks.ingest import plan_ingest  # sources must exist (a URL is checked when read)

        paths = source_paths(self.sources)  # a bad NAME=PATH:WEIGHT fails here, naming it
        if self.mixture() is not None:  # (retrain may take the champion's mixture: checked then)
            self.check_source_settings()
        local = [s for s in paths if not s.startswith(("http://", "https://"))]
        shards = plan_ingest(local, self.ingest) if local else []
        if self.tokenize.tokenizer is None and len(local) == len(paths):
            self._check_vocab_fits([it for shard in shards for it in shard["items"]])
        if (
            model_cfg.vocab_size
            and self.tokenize.tokenizer is None
            and model_cfg.vocab_size < self.tokenize.vocab_size
        ):
            raise ConfigError(
                f"invalid value {model_cfg.vocab_size} for 'model.vocab_size': smaller than "
                f"tokenize.vocab_size={self.tokenize.vocab_size} (use 0 to take the tokenizer's)"
            )
        if self.run.out is not None and Path(self.run.out).exists() and not Path(self.run.out).is_dir():
            raise ConfigError(f"--out {self.run.out} is a file; give a folder for the run (new or earlier)")
        if self.run.resume and self.run.out is None:
            raise ConfigError("'run.resume' needs 'run.out': the run folder to resume")
        return model_cfg, train_cfg

    def check_source_settings(self) -> None:
        """Every source `ingest.encodings` and `source_settings` name is a source of the run's
        mixture, and every per-source setting is one a source can have, with a valid value."""
        named = {"ingest.encodings": set(self.ingest.encodings), "source_settings": set(self.source_settings)}
        names = {s.name for s in self.mixture() or []} if any(named.values()) else set()
        for setting, given in named.items():
            if unknown := sorted(given - names):
                raise ConfigError(
                    f"{setting} names {', '.join(unknown)}, which is not a source of this run "
                    f"(sources: {', '.join(sorted(names)) or 'none named'}); name a source with "
                    f"--source NAME=PATH, or set ingest.* / clean.* for all of them"
                )
        check_source_settings(self.source_settings, STAGES)
        for name in self.source_settings:
            self.ingest_for(name), self.clean_for(name)  # the values, validated

    def ingest_for(self, name: str) -> IngestConfig:
        """The ingest settings source `name` of the mixture is read with."""
        return source_config(self.ingest.for_source(name), "ingest", name, self.source_settings)

    def clean_for(self, name: str) -> CleanConfig:
        """The clean settings of source `name` of the mixture."""
        return source_config(self.clean, "clean", name, self.source_settings)

    def _check_vocab_fits(self, items: list[dict[str, Any]]) -> None:
        """A tokenizer vocabulary the sources cannot fill fails here, not minutes later in SentencePiece.

        An upper bound from the planned sizes alone (a file's text is at most its size when it is
        neither compressed nor Parquet): BPE makes at most one piece per character plus one per
        merge, and each merge shortens the text by a token; unigram pieces are substrings of at most
        16 characters. The bound never rejects a vocabulary that could work; SentencePiece's own,
        tighter limit is still reported by the tokenize stage (a StageError saying what to lower).
        """
        if any(it.get("compression") or it.get("format") == "parquet" for it in items):
            return  # the text may be larger than the files: no bound from sizes
        text_bytes = min(sum(int(it.get("size") or 0) for it in items), self.tokenize.sample_bytes)
        cfg = self.tokenize
        fixed = 4 + len(cfg.user_defined_symbols) + (256 if cfg.byte_fallback else 0)  # unk s /s newline
        most = fixed + (2 if cfg.model_type == "bpe" else 16) * text_bytes
        if cfg.vocab_size > most:
            raise ConfigError(
                f"the sources ({', '.join(self.sources)}) are {text_bytes:,} bytes in all: too little text "
                f"for tokenize.vocab_size={cfg.vocab_size} (a {cfg.model_type} tokenizer can make at most "
                f"{most:,} pieces from them, fewer if some files are not text); add text, or lower "
                "tokenize.vocab_size for a small trial run"
            )


def _flow_parameter(name: str, field: FieldInfo) -> inspect.Parameter:
    default = field.get_default(call_default_factory=True)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=field.annotation
    )


def takes_pipeline_parameters(*extra: type[BaseModel]) -> Callable[[F], F]:
    """Give a flow function `fn(**params)` one keyword parameter per field of PipelineParams.

    The fields are declared once, in PipelineParams; this builds the flow's signature from them, so
    Prefect's form shows `sources` and `preset`, then the fields of the `extra` models (a flow's own
    options), then one typed sub-form per stage with its defaults and descriptions. The docstring
    gains an `Args:` section, where Prefect reads each parameter's description.
    """
    own = PipelineParams.model_fields
    top = {n: f for n, f in own.items() if n not in STAGES}
    groups = {n: f for n, f in own.items() if n in STAGES}
    fields = top | {n: f for model in extra for n, f in model.model_fields.items()} | groups

    def decorate(fn: F) -> F:
        returns = typing.get_type_hints(fn).get("return", inspect.Signature.empty)
        parameters = [_flow_parameter(n, f) for n, f in fields.items()]
        fn.__signature__ = inspect.Signature(parameters, return_annotation=returns)  # type: ignore[attr-defined]
        args = "\n".join(f"    {n}: {f.description}" for n, f in fields.items())
        fn.__doc__ = f"{inspect.getdoc(fn) or ''}\n\nArgs:\n{args}\n"
        return fn

    return decorate


def pipeline_settings() -> dict[str, dict[str, Setting]]:
    """What `--set` reaches in a pipeline run: `sources` and `preset`, then each stage's fields."""
    top = model_settings(PipelineParams)
    return {TOP: {k: top[k] for k in ("sources", "preset", "source_settings")}} | {
        s: model_settings(c) for s, c in STAGES.items()
    }


def apply_sets(params: PipelineParams, items: list[str]) -> PipelineParams:
    """`--set key=value` onto the pipeline's parameters.

    `key` is `stage.field` (e.g. `tokenize.vocab_size`, `train.lr`) or a bare field that exactly one
    stage has (e.g. `max_steps`, `near_dedup_threshold`); an ambiguous bare key (`vocab_size`: the
    tokenizer's or the model's) is an error listing the stages that have it.
    """
    changes = parse_sets(items, pipeline_settings())
    top = changes.pop(TOP)
    if isinstance(top.get("sources"), str):  # `sources=x`: one source; a JSON list names several
        top["sources"] = [top["sources"]]
    data = params.model_dump(mode="json") | top
    for stage, values in changes.items():
        data[stage] |= values
    return build(PipelineParams, data)


def recorded(params: PipelineParams) -> dict[str, Any]:
    """The parameters as Forja writes them down (run folder, MLflow): URL credentials redacted."""
    return {**params.model_dump(mode="json"), "sources": [redact_source(s) for s in params.sources]}


def flatten(params: PipelineParams, model_cfg: ModelConfig, train_cfg: TrainConfig) -> dict[str, Any]:
    """Every resolved parameter as `stage.field` (what MLflow shows and compares), credentials redacted."""
    flat: dict[str, Any] = {
        "sources": ",".join(redact_source(s) for s in params.sources),
        "preset": params.preset,
        **({"source_settings": json.dumps(params.source_settings)} if params.source_settings else {}),
    }
    for stage in ("ingest", "clean", "tokenize", "evaluate", "register", "report", "run"):
        flat |= {f"{stage}.{k}": v for k, v in getattr(params, stage).model_dump(mode="json").items()}
    flat |= {f"model.{k}": v for k, v in dataclasses.asdict(model_cfg).items()}
    flat |= {f"train.{k}": v for k, v in dataclasses.asdict(train_cfg).items()}
    return flat
