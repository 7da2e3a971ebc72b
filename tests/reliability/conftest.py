"""Fixtures for the reliability suite: the lm test configs and token folder, real servers.

The shared tools (`small_configs`, `Servers`, `FAST`, `write_corpus`) live in tests/support.py.
"""

from pathlib import Path

import pytest
import torch
from helpers import make_token_dir, shakespeare_text
from support import Servers


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a shared machine, spinning OpenMP threads make tiny models crawl."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def token_dir(tmp_path_factory) -> Path:
    """Real tokens of the first 120 kB of tinyshakespeare (vocab 512), as in tests/lm."""
    return make_token_dir(
        shakespeare_text(120_000), tmp_path_factory.mktemp("tokens") / "tokens", vocab_size=512
    )


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """A real Prefect server and MLflow server over a temporary Forja home (tests/flows/conftest.py)."""
    s = Servers(tmp_path_factory.mktemp("forja-home"))
    yield s
    s.close()
