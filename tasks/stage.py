"""One `Stage`: how every step of the pipeline is declared, keyed, written and published.

A stage is declared once, as a subclass of `Stage`, and runs the same way from the CLI (`run_stage`)
and from a Prefect flow (`flows/stages.py`, which maps `run_shard` over a task runner). What a
declaration says:

    name, config       the stage's name and its pydantic config model
    identity(config)   the part of the config that changes the output (engine settings left out)
    code_files(config) the files the stage runs: its modules, its rule files, the formats it writes
    upstream_digest()  the identity of its input: the upstream manifest's digest (or, for ingest, a
                       fingerprint of the sources)
    plan / run_shard / write   the work, in three steps: a list of JSON-able shards, one call per
                       shard (map this), and the step that writes the output folder from the results

From these the runner derives ONE cache key, sha256 of (name, upstream digest, identity, extra
inputs such as a reused tokenizer's sha256, sha256 of every code file), and owns what every stage
shares: the leftover sweep, the staging folder beside the output, the manifest written last
(with the key in it), the atomic publish, and "up to date" when OUT's manifest carries the same key
and its outputs are intact. Editing any module or rule file a stage runs changes its key, so the
stage runs again on every path. The output folder's path is never part of the key.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import importlib
import logging
import multiprocessing
import shutil
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from lm.errors import DataError
from lm.fileio import (
    fsync_dir,
    publish_dir,
    read_json,
    remove_dead_leftovers,
    sha256_json,
    staging_path,
)
from tasks.common import (
    MANIFEST,
    Progress,
    StageError,
    config_dict,
    interrupts_kept,
    read_manifest,
    verify_outputs,
    write_manifest,
)

log = logging.getLogger("forja.stage")

# map_shards(stage, shards, work_dir, config) -> one result per shard, in shard order
ShardMapper = Callable[["Stage", list[dict[str, Any]], str, dict[str, Any]], list[dict[str, Any]]]


# --------------------------------------------------------------------------- code digests


def module_files(*names: str) -> list[Path]:
    """The source files of modules (`tasks.common`), packages (`tasks.clean`: every .py below it)
    or data folders of a package without __init__.py (`tasks.sql`: every file in it)."""
    files: list[Path] = []
    for name in names:
        mod = importlib.import_module(name)
        if getattr(mod, "__file__", None) is None:  # a namespace folder (tasks/sql)
            folder = Path(next(iter(mod.__path__)))
            files += sorted(p for p in folder.iterdir() if p.is_file())
        elif Path(mod.__file__).name == "__init__.py":
            files += sorted(Path(mod.__file__).parent.rglob("*.py"))
        else:
            files.append(Path(mod.__file__))
    return files


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def files_digest(files: Iterable[Path]) -> str:
    """sha256 over the names and contents of `files` (read again whenever one changes on disk)."""
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(p.name.encode() + b"\0" + _file_digest(str(p), st.st_mtime_ns, st.st_size).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- the declaration


@dataclass
class StageRun:
    """One run of a stage into one output folder: its key, and where it works."""

    stage: Stage
    inputs: Any  # what the stage reads: an upstream folder, or ingest's list of sources
    out: Path
    config: BaseModel
    upstream: str | None
    key: str
    staging_dir: Path | None = None  # set by begin(); passed on to the tasks of a flow

    @property
    def staging(self) -> Path:
        """Where the output is built (the output folder itself for an incremental stage)."""
        if self.stage.incremental:
            return self.out
        if self.staging_dir is None:
            raise RuntimeError(f"{self.stage.name}: begin() makes the staging folder first")
        return self.staging_dir

    def reuse(self) -> dict[str, Any] | None:
        """OUT's manifest when OUT already holds this key's output (the leftovers of killed runs
        beside it swept), else None: what both the CLI and a flow call before doing any work."""
        manifest = self.stage.cached(self)
        if manifest is not None:
            remove_dead_leftovers(self.out.parent, self.out.name)
        return manifest

    def begin(self) -> Path:
        """Sweep what killed runs left, check OUT may be written, make the staging folder."""
        remove_dead_leftovers(self.out.parent, self.out.name)
        self.stage.check_out(self.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if not self.stage.incremental:
            self.staging_dir = staging_path(self.out)
            self.staging_dir.mkdir()
        return self.staging

    def finish(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        """Write the output from the shard results, the manifest last, then publish it."""
        manifest = {**self.stage.write(self, results), "key": self.key}
        if self.stage.incremental:
            return manifest
        shutil.rmtree(self.staging / "work", ignore_errors=True)
        write_manifest(self.staging, manifest)
        fsync_dir(self.staging)
        try:
            publish_dir(self.staging, self.out)
        except OSError:
            # a concurrent run of the same key published first: its output is ours, byte for byte
            if (theirs := self.stage.cached(self)) is None:
                raise
            self.abort()
            return theirs
        return manifest

    def abort(self) -> None:
        if not self.stage.incremental and self.staging_dir is not None:
            shutil.rmtree(self.staging_dir, ignore_errors=True)

    def spec(self) -> dict[str, Any]:
        """This run as JSON, for the tasks of a flow (which may run in other processes)."""
        return {
            "stage": self.stage.name,
            "inputs": [str(i) for i in self.inputs] if isinstance(self.inputs, list) else str(self.inputs),
            "out": str(self.out),
            "config": config_dict(self.config),
            "upstream": self.upstream,
            "key": self.key,
            "staging": str(self.staging_dir) if self.staging_dir else None,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> StageRun:
        stage = get_stage(spec["stage"])
        inputs = spec["inputs"] if isinstance(spec["inputs"], list) else Path(spec["inputs"])
        staging = Path(spec["staging"]) if spec.get("staging") else None
        cfg = stage.validate(spec["config"])
        return cls(stage, inputs, Path(spec["out"]), cfg, spec["upstream"], spec["key"], staging)


class Stage:
    """A pipeline stage, declared once. Subclasses set the class attributes and the work methods."""

    name: ClassVar[str]
    config_model: ClassVar[type[BaseModel]]
    code: ClassVar[tuple[str, ...]] = ()  # modules / packages / data folders the stage runs
    runner_code: ClassVar[tuple[str, ...]] = ("tasks.stage", "tasks.common")  # what writes its folder
    upstream_stage: ClassVar[str | None] = None  # the stage whose folder this one reads
    incremental: ClassVar[bool] = False  # True: the output folder grows in place (ingest)
    # "up to date" re-hashes every output (False: checks that each exists with its size; for stages
    # whose output is too large to re-read on every run)
    verify_cached: ClassVar[bool] = True

    # ------------------------------------------------------------ identity

    def validate(self, config: BaseModel | dict[str, Any] | None) -> BaseModel:
        if config is None:
            return self.config_model()
        if isinstance(config, self.config_model):
            return config
        return self.config_model.model_validate(config_dict(config))

    def identity(self, config: BaseModel) -> Any:
        """The part of the config that changes the output (what the manifest's digest covers)."""
        return config_dict(config)

    def extra_inputs(self, config: BaseModel) -> dict[str, Any]:
        """Inputs besides the upstream folder and the config (a reused tokenizer's sha256, ...)."""
        return {}

    def code_files(self, config: BaseModel) -> list[Path]:
        return module_files(*self.code, *self.runner_code)

    def upstream_digest(self, inputs: Any, config: BaseModel, out: Path) -> str | None:
        return read_manifest(inputs, self.upstream_stage)["digest"]

    def key(self, upstream: str | None, config: BaseModel, inputs: dict[str, Any] | None = None) -> str:
        """sha256 of the upstream digest, the identity, the other inputs (`extra_inputs` unless
        given) and every code file: the stage's cache key."""
        return sha256_json(
            {
                "stage": self.name,
                "upstream": upstream,
                "identity": self.identity(config),
                "inputs": self.extra_inputs(config) if inputs is None else inputs,
                "code": files_digest(self.code_files(config)),
            }
        )

    def prepare(
        self,
        inputs: Any,
        out: str | Path | Callable[[str], Path],
        config: BaseModel | dict[str, Any] | None,
    ) -> StageRun:
        """Validate, digest the input, derive the key: everything before the work. `out` may be a
        function of the key (a flow names a stage's folder after its key)."""
        cfg = self.validate(config)
        if self.upstream_stage is not None:
            inputs = Path(inputs)
        if callable(out):  # named after the key, which never depends on where the output goes
            upstream = self.upstream_digest(inputs, cfg, None)
            key = self.key(upstream, cfg)
            return StageRun(self, inputs, Path(out(key)), cfg, upstream, key)
        upstream = self.upstream_digest(inputs, cfg, Path(out))
        return StageRun(self, inputs, Path(out), cfg, upstream, self.key(upstream, cfg))

    # ------------------------------------------------------------ output folder

    def cached(self, run: StageRun) -> dict[str, Any] | None:
        """OUT's manifest if it was made with the same key and its outputs are intact, else None."""
        path = run.out / MANIFEST
        if not path.is_file():
            return None
        try:
            m = read_json(path)
            if m.get("stage") != self.name or m.get("key") != run.key:
                return None
            for outputs in (m.get("outputs", []), m.get("artifacts", [])):
                if self.verify_cached:
                    verify_outputs(run.out, {"outputs": outputs})
                else:
                    _check_sizes(run.out, outputs)
        except (DataError, OSError, ValueError) as e:
            log.warning("%s: %s; running %s again", run.out, e, self.name)
            return None
        return m

    def check_out(self, out: Path) -> None:
        """OUT may be missing, empty, or an earlier output of this stage; nothing else is replaced."""
        if not out.exists():
            return
        if not out.is_dir():
            raise StageError(f"--out {out} is a file; choose a folder for the {self.name} output")
        if not any(out.iterdir()):
            return
        try:
            m = read_json(out / MANIFEST)
        except (OSError, ValueError):
            m = {}
        if m.get("stage") != self.name:
            raise StageError(
                f"--out {out} exists and is not a {self.name} output folder; refusing to replace it: "
                "choose a new or empty folder"
            )

    # ------------------------------------------------------------ the work (subclasses)

    def plan(self, run: StageRun) -> list[dict[str, Any]]:
        """The shards of work: small JSON-able dicts (they travel to Dask workers)."""
        raise NotImplementedError

    def run_shard(self, shard: dict[str, Any], work: str, config: dict[str, Any]) -> dict[str, Any]:
        """One shard's work, writing under `work`; returns a small JSON-able result."""
        raise NotImplementedError

    def write(self, run: StageRun, results: list[dict[str, Any]]) -> dict[str, Any]:
        """Write the output into `run.staging` from the shard results; return the manifest (the
        runner adds the key, writes it last and publishes the folder)."""
        raise NotImplementedError

    def shard_name(self, shard: dict[str, Any]) -> str:
        return str(shard.get("name", shard.get("index", "")))

    def summary(self, manifest: dict[str, Any]) -> str:
        return f"{self.name}: done"


def _check_sizes(folder: Path, outputs: list[dict[str, Any]]) -> None:
    for o in outputs:
        p = folder / o["path"]
        if not p.is_file() or ("bytes" in o and p.stat().st_size != o["bytes"]):
            raise DataError(f"{p} is missing or has changed since {folder / MANIFEST} was written")


STAGES: dict[str, Stage] = {}


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make the stage known by name (flows look stages up by name on workers)."""
    STAGES[cls.name] = cls()
    return cls


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        importlib.import_module(f"tasks.{name}")  # declaring modules register on import
    return STAGES[name]


# --------------------------------------------------------------------------- running one


def map_here(stage: Stage, shards: list[dict[str, Any]], work: str, config: dict[str, Any]):
    """Run every shard in this process, in order (a progress line every few seconds)."""
    progress = Progress(stage.name, total=len(shards), unit="shards", logger=log)
    results = []
    for shard in shards:
        results.append(stage.run_shard(shard, work, config))
        progress.update()
    progress.close()
    return results


def _run_shard(stage_name: str, shard: dict[str, Any], work: str, config: dict[str, Any]) -> dict[str, Any]:
    return get_stage(stage_name).run_shard(shard, work, config)


def map_in_processes(workers: int) -> ShardMapper:
    """A mapper that runs the shards in `workers` fresh processes (spawn: forking a process that
    holds DuckDB or SentencePiece threads is unsafe); results come back in shard order.

    Ctrl-C, or a shard that fails, stops the map at once: the shards not started are cancelled and
    the worker processes ended (what they staged goes with the run's staging folder). The workers
    ignore SIGINT, which a terminal sends to every process of the command: the parent alone
    decides, so no worker prints a traceback of its own, and none goes on to its next shard."""

    def map_shards(stage: Stage, shards: list[dict[str, Any]], work: str, config: dict[str, Any]):
        if min(workers, len(shards)) <= 1:
            return map_here(stage, shards, work, config)
        ctx = multiprocessing.get_context("spawn")
        pool = concurrent.futures.ProcessPoolExecutor(
            min(workers, len(shards)), mp_context=ctx, initializer=_ignore_sigint
        )
        try:
            futures = [pool.submit(_run_shard, stage.name, s, work, config) for s in shards]
            progress = Progress(stage.name, total=len(shards), unit="shards", logger=log)
            for done in concurrent.futures.as_completed(futures):
                done.result()  # a failed shard raises now, not after the others
                progress.update()
            progress.close()
            return [f.result() for f in futures]  # in shard order, whatever finished first
        except BaseException:
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()  # CPython's executor keeps its workers there; no public way
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    return map_shards


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def planned_processes(cores: int, shards: int, input_bytes: int, min_bytes: int) -> int:
    """How many processes a plan's shards run in: one per core, at most one per shard and per
    `min_bytes` of input (a fresh interpreter costs ~1.2 s of imports: a small input stays in this
    process). Ingest's and clean's plans record it in their shards for `map_planned`."""
    return max(1, min(cores, shards, input_bytes // min_bytes))


def map_planned(stage: Stage, shards: list[dict[str, Any]], work: str, config: dict[str, Any]):
    """Run the shards in as many processes as their plan says (each shard's `processes`: ingest's
    and clean's plans size it from the stage's cores and the input; 1, or none: in this process)."""
    processes = int(shards[0].get("processes") or 1) if shards else 1
    return map_in_processes(processes)(stage, shards, work, config)


def run_stage(
    stage: Stage | str,
    inputs: Any,
    out: str | Path,
    config: BaseModel | dict[str, Any] | None = None,
    *,
    fresh: bool = False,
    map_shards: ShardMapper = map_here,
) -> dict[str, Any]:
    """Run a stage into OUT (what `forja <stage>` does); returns the manifest.

    OUT already holding this key's output is returned as it is. Otherwise the output is built in
    a staging folder beside OUT and renamed onto it at the end, the manifest written last."""
    stage = get_stage(stage) if isinstance(stage, str) else stage
    run = stage.prepare(inputs, out, config)
    if not fresh and (cached := run.reuse()) is not None:
        log.info("%s is up to date (%s key %s); nothing to do", run.out, stage.name, run.key[:12])
        return {**cached, "changed": False} if stage.incremental else cached
    t0 = time.perf_counter()
    staging = run.begin()
    try:
        with interrupts_kept():  # Ctrl-C in a DuckDB query: still a KeyboardInterrupt
            shards = stage.plan(run)
            results = map_shards(stage, shards, str(staging / "work"), config_dict(run.config))
            manifest = run.finish(results)
    except BaseException:
        run.abort()
        raise
    log.info("%s in %.1fs", stage.summary(manifest), time.perf_counter() - t0)
    return manifest


__all__ = [
    "STAGES",
    "Stage",
    "StageRun",
    "files_digest",
    "get_stage",
    "map_here",
    "map_in_processes",
    "map_planned",
    "module_files",
    "planned_processes",
    "register",
    "run_stage",
]
