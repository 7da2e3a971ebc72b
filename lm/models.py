"""The architecture chooser: `build_model(cfg)` returns the network that `cfg.arch` names.

It sits above both architectures so that neither imports the other: `lm/model.py` (the transformer)
knows nothing of the LSTM, and `lm/lstm.py` borrows only the transformer's RMSNorm and loss. Both
models share one interface, `forward(idx, targets=None, cache=None, last_only=False) -> (logits,
loss)`, `make_cache`, `num_params` and `flops_per_token`, so training, evaluation, generation and the
checkpoint code take either.
"""

from __future__ import annotations

from torch import nn

from lm.config import ModelConfig
from lm.lstm import LSTMModel
from lm.model import Transformer


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model named by `cfg.arch`: the transformer of lm/model.py or the LSTM baseline of lm/lstm.py."""
    if cfg.arch == "lstm":
        return LSTMModel(cfg)
    return Transformer(cfg)
