"""Fixtures for the lm tests: a real token folder, two torch threads per test."""

from pathlib import Path

import pytest
import torch
from helpers import make_token_dir, shakespeare_text


@pytest.fixture(scope="session")
def token_dir(tmp_path_factory) -> Path:
    """Real SentencePiece tokens of the first 120 kB of tinyshakespeare (vocab 512)."""
    return make_token_dir(shakespeare_text(120_000), tmp_path_factory.mktemp("tokens"), vocab_size=512)


@pytest.fixture(autouse=True)
def _two_threads():
    """Two torch threads for each lm test, and the previous count back after it."""
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)
