"""Fixtures for the reliability suite: the lm test configs and token folder, real servers.

Reuses tests/lm/conftest.py (`small_configs`) and tests/flows/conftest.py (`Servers`, `FAST`,
`write_corpus`), loaded by path: both are named `conftest`, so `from conftest import ...` would
find this file instead.
"""

import importlib.util
from pathlib import Path

import pytest
import torch
from helpers import make_token_dir, shakespeare_text

TESTS = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lm_conftest = _load("lm_conftest", TESTS / "lm" / "conftest.py")
flows_conftest = _load("flows_conftest", TESTS / "flows" / "conftest.py")
small_configs = lm_conftest.small_configs
Servers, FAST, write_corpus = flows_conftest.Servers, flows_conftest.FAST, flows_conftest.write_corpus


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
