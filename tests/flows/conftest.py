"""Fixtures for flow tests: a real Prefect server and MLflow server over a temporary Forja home."""

import pytest
from support import Servers


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    s = Servers(tmp_path_factory.mktemp("forja-home"))
    yield s
    s.close()
