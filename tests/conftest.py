import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import SHAKESPEARE


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    if not SHAKESPEARE.is_file():
        pytest.fail(f"{SHAKESPEARE} is missing: tests read the corpora in ../shared/corpora/")
    return SHAKESPEARE
