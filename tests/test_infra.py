"""infra/: what can be checked without Docker or a work pool.

Docker does not run on the development machine, so the compose file, the image recipe and the
deployment declarations are checked by what they refer to: every variable has a line in env.example,
every port binds to loopback, every mounted or copied file exists, every deployment's entrypoint
loads as a Prefect flow that accepts its parameters, every schedule parses. Where `docker compose`
is installed, its own `config` check runs too.
"""

import re
import shutil
import subprocess

import pytest
import yaml
from support import ROOT, last_json_line, run_python

INFRA = ROOT / "infra"


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def env_example() -> dict[str, str]:
    lines = (INFRA / "env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_every_compose_variable_is_in_env_example():
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (INFRA / "compose.yaml").read_text()))
    assert used, "compose.yaml reads no variables?"
    assert used <= set(env_example()), f"missing from infra/env.example: {sorted(used - set(env_example()))}"


def test_compose_services_bind_loopback_and_refer_to_what_exists(compose):
    services = compose["services"]
    assert {"postgres", "prefect-server", "mlflow", "minio", "worker", "worker-gpu"} <= set(services)
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        deps = svc.get("depends_on", [])
        assert set(deps) <= set(services), f"{name} depends on an unknown service: {deps}"
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if src.startswith("."):
                assert (INFRA / src).is_file(), f"{name} mounts {src}, which does not exist"
            else:
                assert src in compose["volumes"], f"{name} uses undeclared volume {src}"
        build = svc.get("build")
        if build:
            assert (INFRA / build["context"] / build["dockerfile"]).is_file(), name
    # the GPU worker is opt-in and asks Docker for the GPUs
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    # workers reach the servers by service name, with credentials from the env file
    env = services["worker"]["environment"]
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="docker compose is not installed here; the structural checks above still ran",
)
def test_docker_compose_config_accepts_the_file(tmp_path):
    env = tmp_path / ".env"
    env.write_text("\n".join(f"{k}={v or 'x'}" for k, v in env_example().items()))
    r = subprocess.run(
        ["docker", "compose", "-f", str(INFRA / "compose.yaml"), "--env-file", str(env), "config", "-q"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


def test_dockerfile_copies_files_that_exist():
    text = (INFRA / "Dockerfile").read_text()
    copied = [src for line in text.splitlines() if line.startswith("COPY") for src in line.split()[1:-1]]
    assert copied
    for src in copied:
        assert (ROOT / src).exists(), f"the Dockerfile copies {src}, which does not exist"
    assert (ROOT / "infra" / "postgres-init.sh").stat().st_mode & 0o111, "postgres-init.sh must be executable"


def test_prefect_yaml_deployments_load_their_flows_and_accept_their_parameters():
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint

    from flows.deployments import PIPELINE, RETRAIN

    spec = yaml.safe_load((INFRA / "prefect.yaml").read_text())
    names = [d["name"] for d in spec["deployments"]]
    assert {PIPELINE, RETRAIN} <= set(names)  # the same deployments `forja serve` offers
    for dep in spec["deployments"]:
        path, func = dep["entrypoint"].split(":")
        flow = load_flow_from_entrypoint(f"{ROOT / path}:{func}")
        flow.validate_parameters(dep.get("parameters", {}))  # raises on an unknown or bad parameter
        for sched in dep.get("schedules", []):
            CronSchedule(cron=sched["cron"], timezone=sched.get("timezone"))
        assert dep["work_pool"]["name"] in ("forja", "forja-gpu")
    gpu = next(d for d in spec["deployments"] if d["work_pool"]["name"] == "forja-gpu")
    assert gpu["parameters"]["run"]["nproc"] >= 1


def test_a_bad_deployment_parameter_is_refused():
    """The check above can fail: the same validation rejects a parameter the flow does not have."""
    from prefect.flows import load_flow_from_entrypoint

    flow = load_flow_from_entrypoint(f"{ROOT / 'flows/pipeline.py'}:pipeline")
    with pytest.raises(Exception, match=r"presett|unexpected|extra"):
        flow.validate_parameters({"presett": "tiny"})


PULL_STEPS = """
import asyncio, json, os, sys, yaml
from prefect.deployments.steps.core import run_steps
steps = yaml.safe_load(open(sys.argv[1]))["pull"]
out = asyncio.run(run_steps(steps, {}))
print(json.dumps({"cwd": os.getcwd(), "out": out}))
"""


def test_pull_steps_find_the_code_from_any_folder(tmp_path):
    """The worker's pull step changes into the folder holding the flows' code, wherever it is
    installed (a checkout here, site-packages in the image), not a fixed path."""
    import os

    # A worker always has an API URL. Given none, run_steps would start a temporary server on the
    # SQLite database of PREFECT_HOME (shared with this session: locked once in CI) just to build
    # a client that these steps never use. An address where nothing listens proves they need none.
    env = {k: v for k, v in os.environ.items() if k != "FORJA_PROJECT_DIR"}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    args = ["-c", PULL_STEPS, str(INFRA / "prefect.yaml")]
    cwd = last_json_line(run_python(args, env=env, cwd=tmp_path, timeout=120).stdout)["cwd"]
    assert (ROOT / "flows" / "pipeline.py").samefile(os.path.join(cwd, "flows", "pipeline.py"))
    env["FORJA_PROJECT_DIR"] = str(tmp_path)
    bad = run_python(args, env=env, cwd=tmp_path, timeout=120, check=False)
    assert bad.returncode != 0 and "FORJA_PROJECT_DIR" in bad.stderr and str(tmp_path) in bad.stderr


def test_mlflow_uses_a_postgres_driver_the_image_installs(compose):
    """SQLAlchemy reads a bare postgresql:// as psycopg 3, which the image does not install."""
    args = compose["services"]["mlflow"]["command"]
    uri = next(a.split("=", 1)[1] for a in args if a.startswith("--backend-store-uri="))
    driver = uri.split("://", 1)[0]
    assert driver == "postgresql+psycopg2", uri
    assert "psycopg2-binary" in (INFRA / "Dockerfile").read_text()
