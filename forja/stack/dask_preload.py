"""Preloaded by the stack's Dask scheduler and workers (`--preload forja.stack.dask_preload`).

A Prefect worker loads a deployment's entrypoint (`flows/pipeline.py:pipeline`) by file, as the
top-level module `pipeline` with `flows/` on sys.path; the flows and tasks defined there reach Dask
pickled by reference to that module. This puts `flows/` at the end of sys.path (after every
installed package, so it shadows none), so the scheduler and the workers can import it too.
"""

import sys

from forja.deploy_steps import project_dir

FLOWS = str(project_dir() / "flows")
if FLOWS not in sys.path:
    sys.path.append(FLOWS)
