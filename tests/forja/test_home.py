"""Where things live: every command finds the Forja home the same way."""

import logging
import os

from forja.home import Home, configure


def test_home_is_forja_home_else_the_nearest_dot_forja_else_a_new_one(tmp_path, monkeypatch, caplog):
    # configure() sets variables: on a copy of the environment, dropped after the test
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FORJA_", "PREFECT_", "MLFLOW_"))}
    monkeypatch.setattr(os, "environ", env)
    project = tmp_path / "project"
    (project / "src" / "deep").mkdir(parents=True)
    monkeypatch.chdir(project)
    caplog.set_level(logging.INFO, logger="forja.home")
    assert configure().root == project / ".forja"  # none yet: a new ./.forja, said in one line
    assert "created the Forja home" in caplog.text and (project / ".forja").is_dir()
    caplog.clear()
    monkeypatch.chdir(project / "src" / "deep")  # a command from a subfolder finds the project's
    assert Home.from_env().root == project / ".forja"
    assert not (project / "src" / "deep" / ".forja").exists()
    configure()
    assert "created" not in caplog.text
    monkeypatch.setenv("FORJA_HOME", str(tmp_path / "elsewhere"))
    assert Home.from_env().root == tmp_path / "elsewhere"
