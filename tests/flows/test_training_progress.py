"""Training progress reaches Prefect from a thread of its own: a step never waits for the API, an
outage costs updates (one warning, one line when they resume), and the last value is sent at the end.

The Prefect calls are replaced by functions that record what they were sent and fail while an
"outage" flag is set (an unreachable server raises httpx.ConnectError in the same place).
"""

import itertools
import logging
import threading
import time

import httpx

from flows import pipeline


def test_an_outage_costs_updates_not_steps_and_the_last_value_is_sent(monkeypatch, caplog):
    sent: list[float] = []
    outage = threading.Event()

    def create(progress, key, description):
        if outage.is_set():
            raise httpx.ConnectError("All connection attempts failed")
        sent.append(progress)
        return "artifact-1"

    def update(artifact_id, progress):
        create(progress, None, None)

    monkeypatch.setattr(pipeline, "create_progress_artifact", create)
    monkeypatch.setattr(pipeline, "update_progress_artifact", update)
    monkeypatch.setattr(pipeline.time, "sleep", lambda s: outage.wait(0.05))
    caplog.set_level(logging.INFO, logger="forja.pipeline")

    outage.set()
    progress = pipeline._Progress(total_steps=100)
    t0 = time.perf_counter()
    for step in range(1, 51):
        progress({}, step)  # the API is down: no step waits for it
    assert time.perf_counter() - t0 < 0.5
    outage.clear()
    for step in range(51, 101):
        progress({}, step)
    progress.close()
    assert sent[-1] == 100.0 and all(a < b for a, b in itertools.pairwise(sent))
    warnings = [r for r in caplog.records if "progress updates paused" in r.getMessage()]
    assert len(warnings) == 1 and "resumed" in caplog.text


def test_a_fast_run_sends_an_update_per_second_at_most_not_one_per_2_percent(monkeypatch):
    """50 updates (one per 2 %) in a run of one second were 50 API calls competing with training
    for the same cores; at most one a second now, and always the last value."""
    sent: list[float] = []

    def create(progress, key, description):
        sent.append(progress)
        return "artifact-1"

    monkeypatch.setattr(pipeline, "create_progress_artifact", create)
    monkeypatch.setattr(
        pipeline, "update_progress_artifact", lambda artifact_id, progress: sent.append(progress)
    )
    progress = pipeline._Progress(total_steps=100)
    t0 = time.monotonic()
    for step in range(1, 101):
        progress({}, step)
        time.sleep(0.005)
    progress.close()
    assert sent[-1] == 100.0
    assert len(sent) <= 2 + int(time.monotonic() - t0), sent  # the first (0 %), one a second, the last
