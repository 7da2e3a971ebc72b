from pathlib import Path

import pytest
import torch
from helpers import make_token_dir, shakespeare_text

from lm.config import ModelConfig, TrainConfig


@pytest.fixture(scope="session")
def token_dir(tmp_path_factory) -> Path:
    """Real SentencePiece tokens of the first 120 kB of tinyshakespeare (vocab 512)."""
    return make_token_dir(shakespeare_text(120_000), tmp_path_factory.mktemp("tokens"), vocab_size=512)


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


def small_configs(**train_overrides) -> tuple[ModelConfig, TrainConfig]:
    """A 2-layer, 64-wide model and a short schedule: seconds on a CPU."""
    model = ModelConfig(n_layer=2, n_head=2, d_model=64, max_seq_len=32)
    train = TrainConfig(
        batch_size=8,
        max_steps=40,
        lr=3e-3,
        warmup_steps=5,
        eval_every=20,
        eval_batches=4,
        checkpoint_every=20,
        keep_last=3,
        log_every=10,
        device="cpu",
        dtype="float32",
    )
    return model, TrainConfig(**{**train.__dict__, **train_overrides})
