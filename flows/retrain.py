"""The `retrain` flow: new data in, a better model out (or nothing, said clearly).

Ingest the sources incrementally (a weighted mixture's sources and weights are stored with the
champion's run, and taken again when the sources are left at their default); if no new document arrived, stop early and say so. Otherwise
re-clean, re-tokenize with the champion's tokenizer (or a new one when asked), train from scratch
(or continue from the champion's weights when asked), evaluate on the dataset's fixed evaluation
set, and move the `champion` alias only if the new model has fewer bits per byte there.
Served with a nightly schedule by `forja serve` and infra/prefect.yaml.
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

from pydantic import BaseModel, Field

from flows import forja_flow
from flows.mixture import champion_sources
from flows.params import PipelineParams, takes_pipeline_parameters
from flows.pipeline import run_pipeline
from forja import tracking
from forja.home import Home
from lm.fileio import sha256_file

log = logging.getLogger("forja.retrain")


def champion_tokenizer(dataset: str) -> tuple[str, str] | None:
    """The champion's tokenizer, copied to a stable path in the dataset folder, and its version."""
    name = tracking.model_name_for(dataset)
    champ = tracking.champion(name)
    if champ is None:
        return None
    from forja.models import local_checkpoint

    src = local_checkpoint(f"models:/{name}/{champ.version}") / "tokenizer.model"
    digest = sha256_file(src)
    dst = Home.from_env().dataset(dataset) / "tokenizers" / f"{digest[:16]}.model"
    if not dst.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return str(dst), champ.version


def retrain_params(
    params: PipelineParams, continue_from_champion: bool, new_tokenizer: bool
) -> PipelineParams:
    champ = None if new_tokenizer and not continue_from_champion else champion_tokenizer(params.run.dataset)
    if champ is None:
        log.info(
            "no champion to build on%s: training as a new pipeline run",
            "" if not new_tokenizer else " (a new tokenizer was asked for)",
        )
        return params
    tokenizer, version = champ
    updates: dict[str, Any] = {}
    if not new_tokenizer or continue_from_champion:  # continuing needs the champion's token ids
        updates["tokenize"] = params.tokenize.model_copy(update={"tokenizer": tokenizer})
    if continue_from_champion:
        updates["run"] = params.run.model_copy(
            update={"init_from": f"models:/{tracking.model_name_for(params.run.dataset)}/{version}"}
        )
    return params.model_copy(update=updates)


class RetrainOptions(BaseModel):
    """What the retrain flow takes besides the pipeline's parameters."""

    continue_from_champion: bool = Field(
        False, description="Start from the champion's weights (and so with its tokenizer)."
    )
    new_tokenizer: bool = Field(False, description="Train a new tokenizer instead of reusing the champion's.")
    keep_mixture: bool = Field(
        True,
        description="With the sources left at their default, retrain on the champion's sources and "
        "weights when it was trained on a weighted mixture (NAME=PATH:WEIGHT).",
    )


def keep_mixture(params: PipelineParams) -> PipelineParams:
    """`params` with the champion's mixture as sources, when the sources were left at the default
    and the champion was trained on a weighted mixture (its sources are stored with its run)."""
    if params.sources != PipelineParams.model_fields["sources"].get_default(call_default_factory=True):
        return params
    sources = champion_sources(params.run.dataset)
    if not sources:
        return params
    log.info("retraining on the champion's mixture: %s", " ".join(sources))
    return params.model_copy(update={"sources": sources})


@forja_flow("retrain")
@takes_pipeline_parameters(RetrainOptions)
def retrain(**params: Any) -> dict[str, Any]:
    """Retrain on what arrived since the last run; promote the result only if it beats the champion."""
    options = RetrainOptions(**{k: params.pop(k) for k in RetrainOptions.model_fields if k in params})
    given = PipelineParams(**params)
    pipeline_params = retrain_params(
        keep_mixture(given) if options.keep_mixture else given,
        options.continue_from_champion,
        options.new_tokenizer,
    )
    return run_pipeline(
        pipeline_params,
        kind="retrain",
        stop_if_unchanged=True,
        extra_tags={
            "retrain.continue_from_champion": str(options.continue_from_champion),
            "retrain.new_tokenizer": str(options.new_tokenizer),
        },
    )
