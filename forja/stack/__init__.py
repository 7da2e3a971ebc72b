"""`forja stack`: the services of infra/compose.yaml started on 127.0.0.1 without Docker.

PostgreSQL, the Prefect server on it, the `forja` process work pool with one worker, the MLflow
tracking server on Postgres with its artifacts in SeaweedFS (S3), and a Dask scheduler with two
workers, each a process of its own; see spec.py (names and state), postgres.py, services.py,
lifecycle.py (up, status, down, deploy) and cli.py.
"""
