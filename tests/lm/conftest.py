"""Fixtures for the lm tests: two torch threads per test (the token folder is tests/conftest.py's)."""

import pytest
from support import torch_threads


@pytest.fixture(autouse=True)
def _two_threads():
    """Two torch threads for each lm test, and the previous count back after it."""
    with torch_threads(2):
        yield
