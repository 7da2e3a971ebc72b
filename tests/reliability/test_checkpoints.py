"""Training and checkpoints under faults: SIGKILL mid-save, corrupted, hostile and non-finite state,
a full disk. Real processes, real files, a real Prefect server and MLflow store.

Kills use the seam of lm/checkpoint.py (FORJA_FAULT_KILL_SAVE): the training process SIGKILLs itself
at a chosen point of a save. The processes are forked from a "zygote" that imported torch once, so
twenty kills cost seconds, not twenty interpreter starts.
"""

import ast
import contextlib
import dataclasses
import io
import json
import logging
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import torch
import yaml
from helpers import ROOT, shakespeare_text
from safetensors.torch import load_file
from support import FAST, small_configs, write_corpus

from lm import checkpoint as ckpt
from lm.config import to_dict
from lm.data import TokenData
from lm.errors import CheckpointError, DataError, ForjaError
from lm.fileio import TMP_PREFIX, sha256_file
from lm.train import Trainer, train

CKPT_FILES = [ckpt.MODEL_FILE, ckpt.OPTIM_FILE, ckpt.RNG_FILE, ckpt.STATE_FILE, ckpt.TOKENIZER_FILE]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / ckpt.MODEL_FILE))


def steps(run_dir: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in ckpt.list_checkpoints(run_dir)]


def assert_every_final_name_complete(run_dir: Path) -> None:
    """Under checkpoints/ only `step-*` folders that verify and hold exactly their manifest's files,
    and `.tmp-*` leftovers; the run's config.json is whole."""
    root = run_dir / ckpt.CKPT_DIR
    for entry in root.iterdir():
        if entry.name.startswith(TMP_PREFIX):
            continue
        assert ckpt.STEP_RE.match(entry.name) and entry.is_dir(), f"unexpected {entry}"
        manifest = ckpt.verify_checkpoint(entry)  # raises on a partial or damaged file
        assert {p.name for p in entry.iterdir()} == {*manifest["files"], ckpt.MANIFEST_FILE}, entry
    json.loads((run_dir / "config.json").read_text())


# ------------------------------------------------------------------ a zygote that forks trainers

ZYGOTE = textwrap.dedent(
    """
    import json, os, resource, sys, traceback
    import torch, torch._dynamo  # the optimizer imports dynamo: seconds that each child would repeat
    from lm.config import from_dict
    from lm.train import Trainer

    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the training process
            code = 0
            try:
                os.environ.update(job["env"])
                if job.get("fsize"):
                    resource.setrlimit(resource.RLIMIT_FSIZE, (job["fsize"], job["fsize"]))
                t = Trainer(*from_dict(job["config"]), job["data"], job["run_dir"], resume=True)
                with open(job["log"], "a") as f:
                    f.write(json.dumps({"resumed_from": t.resumed_from and t.resumed_from.name}) + "\\n")
                t.fit()
            except BaseException as e:
                with open(job["log"], "a") as f:
                    f.write(json.dumps({"error": type(e).__name__, "message": str(e)}) + "\\n")
                traceback.print_exc()
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"exit": os.waitstatus_to_exitcode(status)}), flush=True)
    """
)


class Zygote:
    """A process that imports torch and lm once, then forks one training process per job."""

    def __init__(self, folder: Path):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        env.pop(ckpt.FAULT_ENV, None)
        self.folder, self.jobs = folder, 0
        self.stderr = open(folder / "stderr.txt", "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
            cwd=ROOT,
        )

    def train(self, config: dict, data: Path, run_dir: Path, env: dict | None = None, fsize: int = 0):
        """Run (or resume) a training process; return its exit code (-9: SIGKILL) and what it logged."""
        self.jobs += 1
        log = self.folder / f"job-{self.jobs}.jsonl"
        job = {"config": config, "data": str(data), "run_dir": str(run_dir), "env": env or {}}
        self.proc.stdin.write(json.dumps({**job, "log": str(log), "fsize": fsize}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the zygote died: {(self.folder / 'stderr.txt').read_text()[-3000:]}"
        records = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        return json.loads(line)["exit"], records

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.stderr.close()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


# ------------------------------------------------------------------ kill during a checkpoint save

KEEP_LAST, EVERY, MAX_STEPS = 2, 2, 60
FILE_POINTS = [*CKPT_FILES, ckpt.MANIFEST_FILE]  # in the order a save writes them
POINTS = [*FILE_POINTS, "renamed", "retention"]


def simulate(kept: list[int], start: int, point: str, hit: int) -> list[int]:
    """The checkpoints a run resuming at `start` leaves when killed at the `hit`-th `point`."""
    kept, step, hits = list(kept), start, 0
    while True:
        step += EVERY
        if point in FILE_POINTS:  # a file of the save: this save leaves nothing under a final name
            hits += 1
            if hits == hit:
                return kept
            kept.append(step)
        else:
            kept.append(step)
            if point == "renamed":
                hits += 1
                if hits == hit:
                    return kept
        for old in kept[:-KEEP_LAST]:
            kept.remove(old)
            if point == "retention":
                hits += 1
                if hits == hit:
                    return kept


@pytest.mark.slow
def test_sigkill_at_20_random_points_of_saves_loses_nothing(zygote, token_dir, tmp_path):
    model, cfg = small_configs(
        max_steps=MAX_STEPS, checkpoint_every=EVERY, keep_last=KEEP_LAST, eval_every=0, log_every=1000
    )
    config = to_dict(model, cfg)
    straight = tmp_path / "straight"
    assert zygote.train(config, token_dir, straight)[0] == 0
    sizes = {
        k: v["bytes"] for k, v in ckpt.verify_checkpoint(ckpt.latest_checkpoint(straight))["files"].items()
    }
    sizes[ckpt.MANIFEST_FILE] = (ckpt.latest_checkpoint(straight) / ckpt.MANIFEST_FILE).stat().st_size

    rng = random.Random(20240605)
    # every file of a save cut whole and mid-file, the rename and the retention; then 6 drawn at random
    base = [(p, mid) for p in FILE_POINTS for mid in (False, True)] + [
        ("renamed", False),
        ("retention", False),
    ]
    extra = [(p, p in FILE_POINTS and rng.random() < 0.5) for p in rng.choices(POINTS, k=6)]
    plan = rng.sample(base, len(base)) + extra
    run, kept = tmp_path / "killed", []
    for i, (point, mid_file) in enumerate(plan):
        hit = rng.choice([1, 2])
        spec = f"{point}:{hit}" + (f":{rng.randrange(sizes[point])}" if mid_file else "")
        expected = simulate(kept, kept[-1] if kept else 0, point, hit)
        code, records = zygote.train(config, token_dir, run, {ckpt.FAULT_ENV: spec})
        assert code == -signal.SIGKILL, f"kill {i} ({spec}) did not happen: {records}"
        assert records[0]["resumed_from"] == (f"step-{kept[-1]:07d}" if kept else None), f"kill {i} ({spec})"
        assert_every_final_name_complete(run)
        assert steps(run) == expected, f"kill {i} ({spec})"
        if point in FILE_POINTS:  # the partial save sits in a temporary folder, cut where asked
            cut = int(spec.split(":")[2]) if mid_file else sizes[point] * 2
            tmps = [p for p in (run / ckpt.CKPT_DIR).iterdir() if p.name.startswith(TMP_PREFIX + "step-")]
            assert any((p / point).is_file() and (p / point).stat().st_size <= cut for p in tmps), spec
        kept = expected
    assert kept[-1] < MAX_STEPS

    code, records = zygote.train(config, token_dir, run)
    assert code == 0, records
    assert records[0]["resumed_from"] == f"step-{kept[-1]:07d}"
    assert steps(run) == [MAX_STEPS - EVERY, MAX_STEPS]
    assert not [p for p in (run / ckpt.CKPT_DIR).iterdir() if p.name.startswith(TMP_PREFIX)]
    w1, w2 = weights(ckpt.latest_checkpoint(straight)), weights(ckpt.latest_checkpoint(run))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # the same model as a run never killed


def test_fault_seam_is_inert_without_its_variable(token_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(ckpt.FAULT_ENV, raising=False)
    model, cfg = small_configs(max_steps=4, checkpoint_every=2, eval_every=0)
    train(model, cfg, token_dir, tmp_path / "run")
    monkeypatch.setenv(ckpt.FAULT_ENV, "no-such-point:1")
    train(model, dataclasses.replace(cfg, max_steps=6), token_dir, tmp_path / "run", resume=True)
    assert steps(tmp_path / "run") == [2, 4, 6]


# ------------------------------------------------------------------ corruption of each file


@pytest.fixture(scope="module")
def two_checkpoints(token_dir, tmp_path_factory):
    """A run with complete checkpoints at steps 5 and 10."""
    model, cfg = small_configs(max_steps=10, checkpoint_every=5, eval_every=0)
    run = tmp_path_factory.mktemp("template") / "run"
    train(model, cfg, token_dir, run)
    return run


def damaged_copy(template: Path, dst: Path, victim: str, damage: str, rng: random.Random) -> Path:
    shutil.copytree(template, dst)
    f = ckpt.list_checkpoints(dst)[-1] / victim
    data = bytearray(f.read_bytes())
    if damage == "flip":
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    else:
        data = data[: rng.randrange(len(data))]
    f.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("victim", [*CKPT_FILES, ckpt.MANIFEST_FILE])
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_file_of_the_newest_checkpoint_is_refused_by_name(
    two_checkpoints, token_dir, tmp_path, caplog, victim, damage
):
    rng = random.Random(f"{victim}-{damage}")
    run = damaged_copy(two_checkpoints, tmp_path / "run", victim, damage, rng)
    newest = ckpt.list_checkpoints(run)[-1]
    with pytest.raises(CheckpointError, match=victim.replace(".", r"\.")):
        ckpt.verify_checkpoint(newest)
    model, cfg = small_configs(max_steps=10, checkpoint_every=5, eval_every=0)
    with caplog.at_level(logging.WARNING, logger="forja.checkpoint"):
        trainer = Trainer(model, cfg, token_dir, run, resume=True)
    assert trainer.resumed_from.name == "step-0000005"  # the previous complete checkpoint
    refusal = next(
        r.getMessage() for r in caplog.records if "refusing checkpoint step-0000010" in r.getMessage()
    )
    assert victim in refusal
    trainer.fit()  # continues, and replaces the damaged step 10 with a good one
    ckpt.verify_checkpoint(newest)
    assert steps(run) == [5, 10]


def test_every_single_bit_flip_of_the_manifest_is_refused(token_dir, tmp_path):
    """Exhaustive for the manifest, the one file no digest covers, where a flip can leave valid JSON
    (a digit of `step`, a letter of a key); other files are covered by their sha256. A 1-layer,
    8-wide model keeps the files small: a flip that leaves the JSON valid means hashing them."""
    model, cfg = small_configs(max_steps=1, checkpoint_every=1, eval_every=0)
    model = dataclasses.replace(model, n_layer=1, n_head=1, d_model=8)
    f = train(model, cfg, token_dir, tmp_path / "run").checkpoint / ckpt.MANIFEST_FILE
    good = f.read_bytes()
    accepted = []
    with open(f, "r+b", buffering=0) as out:  # flip in place: no open and truncate per case
        for pos in range(len(good)):
            for bit in (1 << k for k in range(8)):
                os.pwrite(out.fileno(), bytes([good[pos] ^ bit]), pos)
                try:
                    ckpt.verify_checkpoint(f.parent)
                    accepted.append((pos, bit, chr(good[pos])))
                except CheckpointError:
                    pass
            os.pwrite(out.fileno(), good[pos : pos + 1], pos)
    ckpt.verify_checkpoint(f.parent)
    assert accepted == []


# ------------------------------------------------------------------ hostile files


class Payload:
    """Unpickling this runs code: it creates the marker file."""

    marker: Path

    def __reduce__(self):
        return (os.system, (f"touch {Payload.marker}",))


def hostile_blob(kind: str) -> bytes:
    if kind == "pickle":
        return pickle.dumps({"state": Payload(), "param_groups": []})
    buf = io.BytesIO()
    torch.save({"state": Payload(), "weights": torch.zeros(3)}, buf)  # torch's zip format
    return buf.getvalue()


def plant(folder: Path, name: str, blob: bytes) -> None:
    """Put `blob` in a checkpoint under `name`, and fix the manifest as an attacker would."""
    (folder / name).write_bytes(blob)
    manifest = json.loads((folder / ckpt.MANIFEST_FILE).read_text())
    manifest["files"][name] = {"sha256": sha256_file(folder / name), "bytes": len(blob)}
    (folder / ckpt.MANIFEST_FILE).write_text(json.dumps(manifest))


# What each load path reads: a hostile file there must be refused by name; elsewhere it is ignored.
READ_BY = {
    "resume": {ckpt.MODEL_FILE, ckpt.OPTIM_FILE, ckpt.RNG_FILE, ckpt.STATE_FILE},
    "inference": {ckpt.MODEL_FILE, ckpt.STATE_FILE, ckpt.TOKENIZER_FILE},
}


def load_for(path_kind: str, run: Path, token_dir: Path) -> str:
    """Load `run` the way `path_kind` does; return the checkpoint it used."""
    from lm.tokenizer import Tokenizer

    if path_kind == "resume":
        model, cfg = small_configs(max_steps=11, checkpoint_every=5, eval_every=0)
        trainer = Trainer(model, cfg, token_dir, run, resume=True)
        trainer.fit()
        return trainer.resumed_from.name
    loaded = ckpt.load_for_inference(run)  # what `forja eval` and `forja sample` do with a run folder
    Tokenizer(loaded.tokenizer_path)
    return loaded.checkpoint.name


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("path_kind", ["resume", "inference"])
@pytest.mark.parametrize("kind", ["pickle", "torch-zip"])
@pytest.mark.parametrize("victim", CKPT_FILES)
def test_hostile_pickle_in_a_checkpoint_never_runs(
    two_checkpoints, token_dir, tmp_path, caplog, victim, kind, path_kind
):
    Payload.marker = tmp_path / "pwned"
    run = shutil.copytree(two_checkpoints, tmp_path / "run")
    plant(ckpt.list_checkpoints(run)[-1], victim, hostile_blob(kind))
    used, error = None, ""
    with caplog.at_level(logging.WARNING, logger="forja.checkpoint"):
        try:
            used = load_for(path_kind, run, token_dir)
        except ForjaError as e:
            error = str(e)
    assert not Payload.marker.exists()
    if victim in READ_BY[path_kind]:  # refused by name: an error, or skipped for the previous checkpoint
        warned = any(victim in r.getMessage() and "step-0000010" in r.getMessage() for r in caplog.records)
        assert victim in error or (used == "step-0000005" and warned), (used, error)
    else:  # this path does not read that file
        assert (used, error) == ("step-0000010", "")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["pickle", "torch-zip"])
def test_hostile_pickle_as_a_token_shard_is_refused(token_dir, tmp_path, kind):
    Payload.marker = tmp_path / "pwned"
    data = shutil.copytree(token_dir, tmp_path / "tokens")
    shard = data / json.loads((data / "manifest.json").read_text())["splits"]["train"]["shards"][0]["path"]
    shard.write_bytes(hostile_blob(kind))
    with pytest.raises(DataError, match=shard.name):
        TokenData.open(data)
    model, cfg = small_configs(max_steps=2)
    with pytest.raises(DataError, match=shard.name):
        train(model, cfg, data, tmp_path / "run")
    assert not Payload.marker.exists()


# Calls that unpickle (run code) when given a hostile file.
UNSAFE_CALLS = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("pickle", "Unpickler"),
    ("cloudpickle", "load"),
    ("cloudpickle", "loads"),
    ("dill", "load"),
    ("dill", "loads"),
    ("joblib", "load"),
    ("pd", "read_pickle"),
    ("pandas", "read_pickle"),
    ("pyfunc", "load_model"),  # mlflow.pyfunc.load_model may unpickle python_model.pkl
    ("pytorch", "load_model"),
}


def unsafe_loads(source: str) -> list[str]:
    """`torch.load` without weights_only=True, np.load(allow_pickle=True), and UNSAFE_CALLS."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = func.value if isinstance(func, ast.Attribute) else None
        owner_name = getattr(owner, "attr", None) or getattr(owner, "id", None)
        kw = {k.arg: k.value for k in node.keywords}
        if name == "load" and owner_name == "torch":
            wo = kw.get("weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                found.append(f"line {node.lineno}: torch.load without weights_only=True")
        elif name == "load" and owner_name in ("np", "numpy"):
            ap = kw.get("allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                found.append(f"line {node.lineno}: np.load with allow_pickle")
        elif (owner_name, name) in UNSAFE_CALLS:
            found.append(f"line {node.lineno}: {owner_name}.{name}")
    return found


def test_no_unpickling_load_anywhere_in_the_code_base():
    assert unsafe_loads("import torch\ntorch.load(f)\ntorch.load(f, weights_only=False)\n") == [
        "line 2: torch.load without weights_only=True",
        "line 3: torch.load without weights_only=True",
    ]
    assert unsafe_loads("torch.load(f, map_location='cpu', weights_only=True)") == []
    offenders, scanned = {}, 0
    for package in ("lm", "tasks", "flows", "forja"):
        for path in sorted((ROOT / package).rglob("*.py")):
            scanned += 1
            if found := unsafe_loads(path.read_text(encoding="utf-8")):
                offenders[str(path.relative_to(ROOT))] = found
            # no `from torch import load` / `from pickle import loads` aliases sneaking past
            assert "from torch import load" not in path.read_text(encoding="utf-8"), path
    assert scanned > 20 and offenders == {}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_hostile_registered_model_is_ignored_or_refused_by_eval_and_sample(
    two_checkpoints, tmp_path, monkeypatch
):
    import mlflow

    from forja import tracking

    home = tmp_path / "home"
    uri = f"sqlite:///{home / 'mlflow.db'}"
    env = {**os.environ, "FORJA_HOME": str(home), "MLFLOW_TRACKING_URI": uri}
    monkeypatch.setenv("FORJA_HOME", str(home))
    home.mkdir()
    Payload.marker = tmp_path / "pwned"
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        sources = {}
        for variant in ("pkl-beside", "pkl-as-weights"):
            run_id = tracking.start_run(variant, {})
            exported = ckpt.export_for_inference(two_checkpoints, tmp_path / variant / "checkpoint")
            _, version = tracking.log_model(run_id, exported, register_as="hostile")
            tracking.end_run(run_id)
            mv = tracking.client().get_model_version("hostile", version)
            model_id = mv.model_id or mv.source.removeprefix("models:/")
            sources[variant] = Path(
                mlflow.get_logged_model(model_id).artifact_location.removeprefix("file://")
            )
    finally:
        mlflow.set_tracking_uri(previous_uri)

    # v1: the MLmodel now loads a pickled python_model; a pickle among the artifacts; hostile shipped code
    root = sources["pkl-beside"]
    (root / "python_model.pkl").write_bytes(hostile_blob("pickle"))
    (root / "artifacts" / "evil.pkl").write_bytes(hostile_blob("torch-zip"))
    mlmodel = yaml.safe_load((root / "MLmodel").read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    pyfunc.pop("model_code_path")
    pyfunc.update(loader_module="mlflow.pyfunc.model", python_model="python_model.pkl")
    (root / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    init = root / "code" / "lm" / "__init__.py"
    init.write_text(f"__import__('os').system('touch {Payload.marker}')\n" + init.read_text())
    # v2: the weights themselves are a pickle, with a manifest fixed to match
    plant(sources["pkl-as-weights"] / "artifacts" / "checkpoint", ckpt.MODEL_FILE, hostile_blob("torch-zip"))

    text = tmp_path / "text.txt"
    text.write_text(shakespeare_text(2000))
    commands = [
        [cmd, f"models:/hostile/{version}"]
        + (
            ["--text", str(text), "--json"]
            if cmd == "eval"
            else ["--prompt", "ROMEO:", "--max-new-tokens", "4"]
        )
        for version in (1, 2)
        for cmd in ("eval", "sample")
    ]
    r = subprocess.run(
        [sys.executable, "-c", CLI_RUNNER, str(Payload.marker), json.dumps(commands), "models:/hostile/1"],
        env={**env, "OMP_NUM_THREADS": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout.splitlines()[-1])
    ignored_eval, ignored_sample, refused_eval, refused_sample = report["runs"]
    for run in report["runs"]:
        assert not run["marker"], run  # no payload ran, whatever the command did
    for run in (ignored_eval, ignored_sample):  # only safetensors and the manifest are read
        assert run["code"] == 0, run["stderr"][-2000:]
    assert json.loads(ignored_eval["stdout"])["bits_per_byte"] > 0
    for run in (refused_eval, refused_sample):
        assert run["code"] == 2, run
        assert "model.safetensors" in run["stderr"] and "Traceback" not in run["stderr"], run["stderr"]
    # the control: MLflow's own pyfunc loader does run the planted code, so the model was armed
    assert report["control_marker"], report["control_error"]


# Runs `forja CMD ...` through the real entry point (forja.cli.main) for each command, in one fresh
# process (one interpreter start instead of four), then loads the model with MLflow's pyfunc loader.
CLI_RUNNER = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from pathlib import Path
    from forja.cli import main

    marker, commands, control_uri = Path(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
    runs = []
    for argv in commands:
        sys.argv = ["forja", *argv]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
        runs.append(
            {"argv": argv, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue(), "marker": marker.exists()}
        )
    error = None
    try:
        import mlflow

        mlflow.pyfunc.load_model(control_uri)
    except BaseException as e:
        error = repr(e)
    print(json.dumps({"runs": runs, "control_marker": marker.exists(), "control_error": error}))
    """
)


# ------------------------------------------------------------------ non-finite values


@pytest.mark.slow
def test_nan_in_a_forja_run_fails_the_mlflow_run_and_the_prefect_task(servers, tmp_path):
    import mlflow

    corpus = write_corpus(tmp_path / "corpus", shakespeare_text(150_000))
    sets = [a for kv in [*FAST, "run.dataset=nan-run"] for a in ("--set", kv)]
    r = subprocess.run(
        [sys.executable, "-m", "forja.cli", "run", "--source", str(corpus), *sets],
        env={**servers.env, "FORJA_FAULT_NAN_STEP": "13", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert r.returncode != 0
    assert "loss is nan at step 13" in r.stderr, r.stderr[-3000:]

    client = mlflow.MlflowClient(servers.home.default_tracking_uri)
    exp = client.get_experiment_by_name("forja")
    [run] = client.search_runs([exp.experiment_id], "tags.dataset = 'nan-run'")
    assert run.info.status == "FAILED"
    flow_run = httpx.get(f"{servers.prefect_api}/flow_runs/{run.data.tags['prefect.flow_run_id']}").json()
    assert flow_run["state"]["type"] == "FAILED"
    states = servers.task_states(flow_run["id"])
    assert states["train"] == "Failed", states

    run_dir = Path(run.data.tags["run_dir"])
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(m["step"] for m in metrics) == 12  # stopped within the poisoned step
    assert steps(run_dir) == [10]
    for path in ckpt.list_checkpoints(run_dir):
        assert all(torch.isfinite(t).all() for t in weights(path).values())


def test_nan_fault_variable_stops_training_in_process(token_dir, tmp_path, monkeypatch):
    from lm.errors import NonFiniteLossError

    monkeypatch.setenv("FORJA_FAULT_NAN_STEP", "7")
    model, cfg = small_configs(max_steps=10, checkpoint_every=5, eval_every=0)
    with pytest.raises(NonFiniteLossError, match="step 7"):
        train(model, cfg, token_dir, tmp_path / "run")
    assert steps(tmp_path / "run") == [5]


# ------------------------------------------------------------------ disk full


@contextlib.contextmanager
def tmpfs(path: Path, size: int):
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip(f"mounting a size-limited tmpfs needs root (euid {os.geteuid()})")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here (mount: {r.stderr.strip()}); the RLIMIT_FSIZE case still runs"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def assert_previous_checkpoint_survives(run: Path, token_dir: Path) -> None:
    assert steps(run) == [5]
    assert not [p for p in (run / ckpt.CKPT_DIR).iterdir() if p.name.startswith(TMP_PREFIX)]
    loaded = ckpt.load_for_inference(run)
    assert loaded.checkpoint.name == "step-0000005"
    model, cfg = small_configs(max_steps=10, checkpoint_every=5, eval_every=0)
    assert Trainer(model, cfg, token_dir, run, resume=True).resumed_from.name == "step-0000005"


def test_disk_full_during_a_save_fails_cleanly(two_checkpoints, token_dir, tmp_path):
    """A real ENOSPC: the run folder sits on a tmpfs with room for one checkpoint and a half."""
    one = sum(f.stat().st_size for f in ckpt.list_checkpoints(two_checkpoints)[-1].iterdir())
    with tmpfs(tmp_path / "disk", one * 3 // 2) as disk:
        run = disk / "run"
        model, cfg = small_configs(max_steps=10, checkpoint_every=5, eval_every=0)
        with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*step-0000010") as e:
            train(model, cfg, token_dir, run)
        assert "(0.0 MB free on that disk)" in str(e.value)
        assert_previous_checkpoint_survives(run, token_dir)


def test_file_size_limit_during_a_save_fails_cleanly(zygote, two_checkpoints, token_dir, tmp_path):
    """RLIMIT_FSIZE (EFBIG) on a real process: works without root; the limit sits between the size
    of step 5's files, already written, and what step 10 would need of its weights file."""
    model, cfg = small_configs(max_steps=10, checkpoint_every=5, eval_every=0)
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    shutil.rmtree(ckpt.list_checkpoints(run)[-1])
    code, records = zygote.train(to_dict(model, cfg), token_dir, run, fsize=64 * 1024)
    assert code == 1
    assert records[-1]["error"] == "CheckpointError", records
    assert "step-0000010" in records[-1]["message"] and "File too large" in records[-1]["message"]
    assert_previous_checkpoint_survives(run, token_dir)
