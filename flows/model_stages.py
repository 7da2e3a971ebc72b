"""The stages after the data, declared once like the data stages (tasks/stage.py): train,
evaluate, register.

Their work runs as tasks of the pipeline flow (training may launch torchrun, registration talks to
MLflow), so a declaration here gives each what every stage shares: ONE key over its upstream
digest, the part of its config that changes the result, its other inputs and the code it runs.
Editing any module listed in `code` re-runs the stage on the next flow run.
"""

from __future__ import annotations

from typing import Any, ClassVar

from tasks.stage import STAGES, Stage, register

# the modules whose code makes the weights (the model, its training loop, the data it reads)
TRAIN_CODE = ("lm.model", "lm.lstm", "lm.models", "lm.train", "lm.data", "lm.config", "lm.checkpoint")
TRAIN_CODE += ("lm.runtime",)


class _ModelStage(Stage):
    """A stage whose config is a plain dict (resolved lm configs, a pydantic model's dump)."""

    runner_code: ClassVar[tuple[str, ...]] = ()

    def validate(self, config: Any) -> Any:
        return config

    def identity(self, config: Any) -> Any:
        return config


@register
class TrainStage(_ModelStage):
    """upstream: the token folder's digest; config: the resolved model and train configs; inputs:
    the initial weights' sha256 and a run folder the user named (a cached training elsewhere does
    not put a model there; the default folder is named after the key, so it needs no mention)."""

    name = "train"
    code = TRAIN_CODE


@register
class EvaluateStage(_ModelStage):
    """upstream: the checkpoint's sha256; inputs: the fixed evaluation set's digest."""

    name = "evaluate"
    code = ("lm.evaluate", "lm.downstream", "lm.generate", "lm.tokenizer", "tasks.evaluate")


@register
class RegisterStage(_ModelStage):
    """upstream: the checkpoint's sha256; inputs: the evaluation set's digest, the tracking store
    and the registered model's name."""

    name = "register"
    code = ("forja.tracking", "forja.pyfunc_model", "forja.hf", "flows.registry")


def stage_key(name: str, upstream: str | None, config: Any, **inputs: Any) -> str:
    """The key of stage `name` (train, evaluate, register) for these inputs."""
    return STAGES[name].key(upstream, config, inputs)
