"""Prefect deployment steps of Forja's own (named in infra/prefect.yaml's `pull:` section).

A worker runs a deployment's pull steps before it loads the entrypoint (`flows/pipeline.py:pipeline`),
a path relative to the working directory. A fixed directory works only where the code sits at that
path (the Docker image's /opt/forja); this step finds the code wherever it is installed.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_DIR_ENV = "FORJA_PROJECT_DIR"


def project_dir() -> Path:
    """Where the flows' code is: $FORJA_PROJECT_DIR if set, else the folder that holds the
    installed `flows` package (a checkout installed with `pip install -e`, or site-packages)."""
    if os.environ.get(PROJECT_DIR_ENV):
        folder = Path(os.environ[PROJECT_DIR_ENV]).expanduser()
    else:
        import flows  # the package itself: importing it has no side effects

        folder = Path(flows.__file__).resolve().parents[1]
    if not (folder / "flows" / "pipeline.py").is_file():
        raise FileNotFoundError(
            f"{folder} holds no flows/pipeline.py: set {PROJECT_DIR_ENV} to the folder of a Forja "
            "checkout (or install forja on the worker)"
        )
    return folder


def enter_project_dir() -> dict[str, str]:
    """Pull step: change into `project_dir()`; returns {"directory": ...} as Prefect's own step does."""
    folder = project_dir()
    os.chdir(folder)
    return {"directory": str(folder)}
