"""Session-wide rules of the test suite: an isolated environment, known skips only, hypothesis in CI.

- Isolation: the session runs with its own FORJA_HOME and PREFECT_HOME (a temporary folder) and
  without any PREFECT_* or MLFLOW_* variable inherited from the shell, so a `forja ui` left running,
  a Prefect profile or a server URL exported in the terminal cannot reach the tests. The environment
  is restored when the session ends.
- Skips: a test may skip only for a reason on ALLOWED_SKIPS (hardware or tools this machine lacks);
  any other skip fails the session and names the test. The allowed skips are listed at the end.
- Threads: one OpenMP thread per process (OMP_NUM_THREADS=1, inherited by every child process)
  unless the shell sets it; see pytest_configure.
- Hypothesis: derandomised when CI=true, so a CI failure replays from the same examples.
- Workers: `make test` runs two pytest-xdist processes (`-n 2 --dist loadfile`). Each worker runs
  pytest_configure, so each has its own FORJA_HOME; a test file stays on one worker, so a module's
  servers start once. The controller receives every worker's reports, so the skip rules above hold.

tests/ is put on sys.path so that test modules import `helpers` and `support` by name.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

sys.path.insert(0, str(Path(__file__).parent))

from helpers import SHAKESPEARE, make_token_dir, shakespeare_text

INHERITED_SETTINGS = ("PREFECT_", "MLFLOW_")
EPHEMERAL_TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"

# Skips with these reasons (regular expressions, matched at the start) are expected on some machines.
ALLOWED_SKIPS = (
    r"needs a CUDA device",
    r"on a machine with CUDA",  # tests/test_gpu_check.py's no-GPU message
    r"docker compose is not installed",
    r"PostgreSQL binaries with pg_trgm are not installed",
    r"chromium is not installed",
    r"mounting a size-limited tmpfs needs root",
    r"cannot mount a tmpfs here",
    r"could not import 'transformers'",  # the `hf` extra is optional
    r"torch.compile takes",  # minutes of C++ compilation on a CPU; opt in with FORJA_TEST_COMPILE=1
)

hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI", "").lower() in ("true", "1"):
    hypothesis_settings.load_profile("ci")


# ---------------------------------------------------------------------------------------- isolation

_saved_environ: dict[str, str] | None = None
_session_home: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Isolate the environment before collection.

    This is a hook rather than a fixture because collection already imports Prefect (through the
    flow modules), and Prefect reads its settings once, at import: a fixture would come too late.
    """
    global _saved_environ, _session_home
    _saved_environ = dict(os.environ)
    _session_home = Path(tempfile.mkdtemp(prefix="forja-tests-"))
    for name in [n for n in os.environ if n.startswith(INHERITED_SETTINGS)]:
        del os.environ[name]
    os.environ["FORJA_HOME"] = str(_session_home)
    # Prefect's own home too, so that its profiles file (~/.prefect/profiles.toml) cannot name a server.
    os.environ["PREFECT_HOME"] = str(_session_home / "prefect")
    # One torch (OpenMP) thread per process unless the shell says otherwise: the tests run servers,
    # workers and training processes side by side on few cores, and an OpenMP team whose threads
    # wait for a busy core turns a 1 s tiny-model training into 20 s (measured at load 5 on 2
    # cores: 20 steps in 1 s with one thread, 23 s with two). The lm tests ask for two threads
    # where they run alone (tests/lm/conftest.py); runs compared with each other share the setting.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # The startup timeout forja's configure() gives Prefect's temporary server, for the tests that
    # run flows in this process (Prefect's 20 s default is short on a busy 2-core machine).
    os.environ[EPHEMERAL_TIMEOUT] = "120"
    # Prefect's own temporary server (flows run in this process) starts on a copy of the migrated
    # empty database, as forja's does, instead of migrating one (20-30 s on 2 cores).
    from forja import stores

    stores.seed(_session_home / "prefect" / "prefect.db", "prefect")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _saved_environ is not None:
        os.environ.clear()
        os.environ.update(_saved_environ)
    if _session_home is not None:
        shutil.rmtree(_session_home, ignore_errors=True)


@pytest.fixture(autouse=True, scope="module")
def _environment_restored_after_each_module():
    """What a module sets in os.environ (mlflow.set_tracking_uri does too) ends with the module."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def forja_home() -> Path:
    """The session's FORJA_HOME: a temporary folder, removed when the session ends."""
    assert _session_home is not None, "pytest_configure in tests/conftest.py did not run"
    return _session_home


@pytest.fixture(scope="session")
def token_dir(tmp_path_factory) -> Path:
    """Real SentencePiece tokens of the first 120 kB of tinyshakespeare (vocab 512), made once by the
    real ingest, clean and tokenize; shared by the lm and reliability tests, which only read it."""
    return make_token_dir(
        shakespeare_text(120_000), tmp_path_factory.mktemp("tokens") / "tokens", vocab_size=512
    )


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    if not SHAKESPEARE.is_file():
        pytest.fail(f"{SHAKESPEARE} is missing: tests read the corpora in ../shared/corpora/")
    return SHAKESPEARE


# ------------------------------------------------------------------------------------------ skips

_allowed: list[str] = []
_unexpected: list[str] = []


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def _record_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    line = f"{report.nodeid}: {reason}"
    if any(re.match(pattern, reason) for pattern in ALLOWED_SKIPS):
        _allowed.append(line)
    else:
        _unexpected.append(line)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _record_skip(report)  # a whole module skipped (pytest.importorskip)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _record_skip(report)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _unexpected and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _allowed:
        terminalreporter.section("allowed skips")
        for line in _allowed:
            terminalreporter.write_line(line)
    if _unexpected:
        terminalreporter.section("unexpected skips (they fail the session)", red=True)
        for line in _unexpected:
            terminalreporter.write_line(line)
        terminalreporter.write_line(
            "Fix: make the test run here, or add its reason to ALLOWED_SKIPS in tests/conftest.py "
            "if this machine legitimately cannot run it."
        )
