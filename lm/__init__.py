"""Forja's language-model core: pure PyTorch + numpy + sentencepiece.

Nothing here imports Prefect, MLflow or DuckDB, so the same code runs under a flow, under
`torchrun`, or in a notebook. Start with `lm.config` (presets), `lm.model`, and `lm.train.train`.
"""

from lm.config import PRESETS, ModelConfig, TrainConfig, apply_overrides, get_preset
from lm.errors import CheckpointError, ConfigError, DataError, ForjaError, NonFiniteLossError

__all__ = [
    "PRESETS",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ForjaError",
    "ModelConfig",
    "NonFiniteLossError",
    "TrainConfig",
    "apply_overrides",
    "get_preset",
]
