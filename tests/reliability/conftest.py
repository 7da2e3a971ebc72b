"""Fixtures for the reliability suite: one torch thread, real servers (the token folder is tests/conftest.py's).

The shared tools (`small_configs`, `Servers`, `FAST`, `write_corpus`) live in tests/support.py.
"""

import pytest
from support import Servers, torch_threads


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a shared machine, spinning OpenMP threads make tiny models crawl."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """A real Prefect server and MLflow server over a temporary Forja home (tests/flows/conftest.py)."""
    s = Servers(tmp_path_factory.mktemp("forja-home"))
    yield s
    s.close()
