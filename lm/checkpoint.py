"""Checkpoints: complete or absent, verified on load, never unpickled with code.

A checkpoint is a folder `RUN_DIR/checkpoints/step-0000200/` holding

    model.safetensors   the weights (safetensors: plain tensors, no code)
    optimizer.pt        AdamW state, read back with torch.load(weights_only=True)
    rng.safetensors     torch (and CUDA) random generator states
    trainer.json        step, sampler position, configs, tokenizer digest, last metrics
    tokenizer.model     the SentencePiece model, so the checkpoint alone can generate
    manifest.json       sha256 and size of every file above; written last

A sharded run (parallel=fsdp under torchrun, see lm/parallel.py) holds no optimizer.pt; instead each
rank writes its own shard of the weights and of the optimizer state,

    model.rank00000-of-00002.safetensors, optimizer.rank00000-of-00002.pt, ...

into a staging folder (`.tmp-step-0000200.shards`) that rank 0 moves into the checkpoint before the
manifest, so they are listed and verified like every other file. Its `model.safetensors` is still
the whole model (gathered on rank 0): export and inference never read the shards.

It is written into a temporary folder and renamed, so a folder named `step-*` is always complete;
a retired one is renamed out of the `step-*` names before it is deleted. A corrupted one (a flipped
byte, a truncated file, a damaged manifest) fails its manifest check with an error naming the file,
and resuming falls back to the newest checkpoint that passes. A save that fails (a full disk) raises
a CheckpointError and leaves the previous checkpoints as they were.

Fault injection, for the reliability suite only (tests/reliability/test_checkpoints.py):
`FORJA_FAULT_KILL_SAVE=POINT[:HIT[:BYTES]]` makes the process SIGKILL itself the HIT-th time
(default 1) a save reaches POINT, which is one of
    model.safetensors ... manifest.json   that file is written in the temporary folder; with BYTES,
                                          it is first cut to BYTES bytes (what a kill mid-write leaves)
    shards                                a rank's shard files are written in the staging folder
    renamed                               the folder has its final name; retention has not run
    retention                             a retired checkpoint is half deleted
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from lm.config import ModelConfig, TrainConfig, from_dict, to_dict
from lm.errors import CheckpointError, NonFiniteLossError
from lm.fileio import (
    TMP_PREFIX,
    atomic_dir,
    atomic_path,
    atomic_write_json,
    read_json,
    remove_stale_tmp,
    sha256_file,
)

log = logging.getLogger("forja.checkpoint")

CKPT_DIR = "checkpoints"
STEP_RE = re.compile(r"^step-(\d+)$")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
FAULT_ENV = "FORJA_FAULT_KILL_SAVE"
MODEL_FILE, OPTIM_FILE, RNG_FILE, STATE_FILE, TOKENIZER_FILE, MANIFEST_FILE = (
    "model.safetensors",
    "optimizer.pt",
    "rng.safetensors",
    "trainer.json",
    "tokenizer.model",
    "manifest.json",
)


def step_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"step-{step:07d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint folders of a run, oldest first (by step)."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):  # DDP, torch.compile
        model = getattr(model, "module", None) or model._orig_mod
    return model


def check_finite(model: torch.nn.Module) -> None:
    for name, p in _unwrap(model).named_parameters():
        if not torch.isfinite(p).all():
            raise NonFiniteLossError(f"parameter {name} holds NaN or Inf; refusing to write a checkpoint")


_fault_hits: dict[str, int] = {}


def _fault(point: str, written: Path | None = None) -> None:
    """The FORJA_FAULT_KILL_SAVE seam (see the module docstring); does nothing when it is unset."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or spec.split(":")[0] != point:
        return
    parts = spec.split(":")
    _fault_hits[point] = _fault_hits.get(point, 0) + 1
    if _fault_hits[point] != (int(parts[1]) if len(parts) > 1 else 1):
        return
    if written is not None and len(parts) > 2:
        os.truncate(written, min(int(parts[2]), written.stat().st_size))
    os.kill(os.getpid(), signal.SIGKILL)


def _write_manifest(folder: Path, step: int) -> None:
    """The manifest that completes a checkpoint: size and sha256 of every file in it, written last."""
    files = {}
    for p in sorted(folder.iterdir()):
        with open(p, "rb") as f:  # on disk before the folder gets its final name
            os.fsync(f.fileno())
        files[p.name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    atomic_write_json(folder / MANIFEST_FILE, {"step": step, "files": files})


def _remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint folder, renaming it out of the `step-*` names first: a crash midway leaves
    a `.tmp-` folder that the next save removes, never a half-deleted `step-*` folder."""
    doomed = path.with_name(f"{TMP_PREFIX}{path.name}.removed")
    try:
        shutil.rmtree(doomed, ignore_errors=True)
        os.rename(path, doomed)
        for i, f in enumerate(sorted(doomed.iterdir())):
            f.unlink()
            if i == 0:
                _fault("retention")
        doomed.rmdir()
    except OSError as e:
        log.warning("could not remove old checkpoint %s: %s", path, e)


SHARD_RE = re.compile(r"^(model|optimizer)\.rank(\d{5})-of-(\d{5})\.(safetensors|pt)$")


def shard_file(kind: str, rank: int, world: int) -> str:
    """`model.rank00001-of-00002.safetensors` / `optimizer.rank00001-of-00002.pt`."""
    return f"{kind}.rank{rank:05d}-of-{world:05d}." + ("safetensors" if kind == "model" else "pt")


def shard_world(path: str | os.PathLike) -> int:
    """How many ranks wrote the shards of this checkpoint (0: it holds none)."""
    worlds = {int(m.group(3)) for p in Path(path).iterdir() if (m := SHARD_RE.match(p.name))}
    return max(worlds, default=0)


def prepare_shards(run_dir: str | os.PathLike, step: int) -> Path | None:
    """Rank 0, before the ranks write their shards: an empty staging folder for them, or None when
    the checkpoint of `step` is already complete (a retried save)."""
    final = step_dir(run_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(final.parent)
    if final.exists():
        try:
            verify_checkpoint(final)
            return None
        except CheckpointError as e:
            log.warning("replacing damaged checkpoint %s: %s", final, e)
            _remove_checkpoint(final)
    staging = final.with_name(f"{TMP_PREFIX}{final.name}.shards")
    staging.mkdir()
    return staging


def write_shard(
    staging: Path, rank: int, world: int, model_state: dict[str, torch.Tensor], optim_state: dict[str, Any]
) -> None:
    """One rank's shard of the weights (safetensors) and of the optimizer (torch.save of tensors and
    plain containers only), each written atomically and fsynced."""
    try:
        with atomic_path(staging / shard_file("model", rank, world)) as tmp:
            save_file(model_state, str(tmp))
        with atomic_path(staging / shard_file("optimizer", rank, world)) as tmp:
            torch.save(optim_state, tmp)
    except (OSError, SafetensorError, RuntimeError) as e:
        raise CheckpointError(
            f"cannot write the shard of rank {rank} in {staging}: {e}; free disk space, then resume"
        ) from e
    _fault("shards")


def read_shard(
    path: str | os.PathLike, rank: int, world: int
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This rank's (weights, optimizer state) from a sharded checkpoint of the same world size."""
    path = Path(path)
    saved = shard_world(path)
    if saved != world:
        held = f"shards of {saved} ranks" if saved else "no shards (it was saved by one process or DDP)"
        raise CheckpointError(
            f"{path} holds {held}; resume it with parallel=fsdp under torchrun --nproc_per_node={saved}"
            if saved
            else f"{path} holds {held}; resume it with parallel=ddp, or start a new run (--out) with parallel=fsdp"
        )
    try:
        model_state = load_file(str(path / shard_file("model", rank, world)))
        optim_state = torch.load(
            path / shard_file("optimizer", rank, world), map_location="cpu", weights_only=True
        )
    except Exception as e:
        raise CheckpointError(f"cannot load the shard of rank {rank} from {path}: {e}") from e
    return model_state, optim_state


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    tokenizer_path: str | os.PathLike | None,
    keep_last: int | None = None,
    shards: Path | None = None,
) -> Path:
    """Write the checkpoint of `step` atomically, then apply `keep_last` retention. Returns its folder.

    `shards`: the staging folder of `prepare_shards`, whose files the checkpoint takes in."""
    model = _unwrap(model)
    check_finite(model)
    final = step_dir(run_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    if shards is None:
        remove_stale_tmp(final.parent)
    if final.exists():
        try:  # the same step saved before (e.g. a retried flow): already complete
            verify_checkpoint(final)
            return final
        except CheckpointError as e:  # a damaged copy that resume skipped: replace it
            log.warning("replacing damaged checkpoint %s: %s", final, e)
            _remove_checkpoint(final)
    with atomic_dir(final) as tmp:
        try:
            if shards is not None:
                for f in sorted(shards.iterdir()):
                    os.rename(f, tmp / f.name)
                shards.rmdir()
            save_model(model, str(tmp / MODEL_FILE))
            _fault(MODEL_FILE, tmp / MODEL_FILE)
            if optimizer is not None:
                torch.save(optimizer.state_dict(), tmp / OPTIM_FILE)
                _fault(OPTIM_FILE, tmp / OPTIM_FILE)
            rng = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                rng["cuda"] = torch.cuda.get_rng_state()
            save_file(rng, str(tmp / RNG_FILE))
            _fault(RNG_FILE, tmp / RNG_FILE)
            (tmp / STATE_FILE).write_text(
                json.dumps({"step": step, **state}, indent=2, sort_keys=True, default=str)
            )
            _fault(STATE_FILE, tmp / STATE_FILE)
            if tokenizer_path is not None:
                shutil.copyfile(tokenizer_path, tmp / TOKENIZER_FILE)
                _fault(TOKENIZER_FILE, tmp / TOKENIZER_FILE)
            _write_manifest(tmp, step)
            _fault(MANIFEST_FILE, tmp / MANIFEST_FILE)
        except (OSError, SafetensorError, RuntimeError) as e:  # a full disk, say; torch.save hides the errno
            free = shutil.disk_usage(tmp).free
            raise CheckpointError(
                f"cannot write checkpoint {final}: {e} ({free / 1e6:.1f} MB free on that disk). Nothing "
                "was written under that name and the previous checkpoints are intact; free disk space, "
                "then resume"
            ) from e
    _fault("renamed")
    if keep_last:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            _remove_checkpoint(old)
    return final


def _check_manifest(mpath: Path, manifest: Any) -> None:
    """The manifest's shape, field by field, so a damaged one fails here instead of passing unread."""

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{mpath} is not a valid checkpoint manifest: {why}")

    if not isinstance(manifest, dict):
        raise bad(f"it holds {type(manifest).__name__}, not a mapping")
    if set(manifest) != {"step", "files"}:
        raise bad(f"expected the keys files and step, found {sorted(manifest)}")
    if type(manifest["step"]) is not int or manifest["step"] < 0:
        raise bad(f"step is {manifest['step']!r}")
    if not isinstance(manifest["files"], dict):
        raise bad("files is not a mapping")
    for name, info in manifest["files"].items():
        if name in ("", ".", "..") or "/" in name or "\\" in name or name == MANIFEST_FILE:
            raise bad(f"it lists the file name {name!r}")
        if not isinstance(info, dict) or set(info) != {"sha256", "bytes"}:
            raise bad(f"the entry of {name} is {info!r}")
        if not isinstance(info["sha256"], str) or not SHA256_RE.fullmatch(info["sha256"]):
            raise bad(f"the sha256 of {name} is {info['sha256']!r}")
        if type(info["bytes"]) is not int or info["bytes"] < 0:
            raise bad(f"the size of {name} is {info['bytes']!r}")


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Check the manifest and every file's size and sha256; return the manifest or raise."""
    path = Path(path)
    mpath = path / MANIFEST_FILE
    if not mpath.is_file():
        raise CheckpointError(f"{mpath} is missing: the checkpoint is incomplete")
    try:
        manifest = read_json(mpath)
    except (ValueError, OSError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(f"{mpath} is not a valid checkpoint manifest: {e}") from e
    _check_manifest(mpath, manifest)
    files = manifest["files"]
    for name in (MODEL_FILE, STATE_FILE):
        if name not in files:
            raise CheckpointError(f"{mpath} does not list {name}")
    for name, info in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f} is missing")
        if f.stat().st_size != info["bytes"]:
            raise CheckpointError(
                f"{f} has {f.stat().st_size} bytes, {mpath} says {info['bytes']}: one of them is "
                "truncated or corrupted"
            )
        if sha256_file(f) != info["sha256"]:
            raise CheckpointError(f"{f} does not match its sha256 in {mpath}: the file is corrupted")
    state_step = read_state(path).get("step")
    m = STEP_RE.match(path.name)
    if state_step != manifest["step"] or (m and int(m.group(1)) != manifest["step"]):
        raise CheckpointError(
            f"{mpath} says step {manifest['step']}, but {path / STATE_FILE} says {state_step} "
            f"and the folder is {path.name}: the manifest is corrupted"
        )
    return manifest


def latest_checkpoint(
    run_dir: str | os.PathLike, on_refused: Callable[[str], None] | None = None
) -> Path | None:
    """The newest checkpoint that passes verification; refused ones are reported, then skipped."""
    refused = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as e:
            refused.append(str(e))
            (on_refused or log.warning)(f"refusing checkpoint {path.name}: {e}; trying an older one")
    if refused:
        raise CheckpointError(f"no usable checkpoint in {Path(run_dir) / CKPT_DIR}: " + " | ".join(refused))
    return None


def export_for_inference(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy what inference needs (weights, state, tokenizer) into `dst` with its own manifest."""
    src = resolve_checkpoint(src)
    with atomic_dir(dst) as tmp:
        for name in (MODEL_FILE, STATE_FILE, TOKENIZER_FILE):
            if (src / name).is_file():
                shutil.copyfile(src / name, tmp / name)
        _write_manifest(tmp, read_state(src)["step"])
    return Path(dst)


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    f = Path(path) / STATE_FILE
    try:
        state = read_json(f)
    except (ValueError, OSError) as e:
        raise CheckpointError(f"cannot read {f}: {e}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{f} holds {type(state).__name__}, not the trainer state")
    return state


def read_configs(path: str | os.PathLike) -> tuple[ModelConfig, TrainConfig]:
    return from_dict(read_state(path)["config"])


def load_weights(path: str | os.PathLike, model: torch.nn.Module) -> None:
    f = Path(path) / MODEL_FILE
    try:
        missing, unexpected = load_model(_unwrap(model), str(f), strict=False)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"cannot load weights from {f}: {e}") from e
    if missing or unexpected:
        raise CheckpointError(f"{f} does not fit the model: missing {missing}, unexpected {unexpected}")


def load_optimizer(path: str | os.PathLike, optimizer: torch.optim.Optimizer) -> None:
    f = Path(path) / OPTIM_FILE
    if not f.is_file() and shard_world(path):
        raise CheckpointError(
            f"{path} holds the optimizer in shards of {shard_world(path)} ranks; resume it with "
            f"parallel=fsdp under torchrun --nproc_per_node={shard_world(path)}"
        )
    try:
        # weights_only=True: tensors and plain containers only; a pickled payload is refused, never run.
        state = torch.load(f, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state)
    except Exception as e:
        raise CheckpointError(f"cannot load optimizer state from {f}: {e}") from e


def load_rng(path: str | os.PathLike) -> None:
    f = Path(path) / RNG_FILE
    if not f.is_file():
        return
    try:
        rng = load_file(str(f))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot load RNG state from {f}: {e}") from e
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


def configs_dict(model_cfg: ModelConfig, train_cfg: TrainConfig) -> dict[str, Any]:
    return to_dict(model_cfg, train_cfg)


@dataclass
class LoadedModel:
    """A model ready for inference, with what is needed to use it."""

    model: torch.nn.Module
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    tokenizer_path: Path
    checkpoint: Path
    state: dict[str, Any]


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A run folder (its newest valid checkpoint) or a checkpoint folder itself."""
    path = Path(path)
    if (path / MANIFEST_FILE).is_file() and (path / STATE_FILE).is_file():
        verify_checkpoint(path)
        return path
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise CheckpointError(f"{path} holds no checkpoint (expected {path / CKPT_DIR}/step-*/)")
    return ckpt


def load_for_inference(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    from lm.models import build_model

    ckpt = resolve_checkpoint(path)
    state = read_state(ckpt)
    model_cfg, train_cfg = from_dict(state["config"])
    model = build_model(model_cfg)
    load_weights(ckpt, model)
    model.to(device).eval()
    tok = ckpt / TOKENIZER_FILE
    if not tok.is_file():
        raise CheckpointError(f"{tok} is missing: this checkpoint cannot tokenize text")
    return LoadedModel(model, model_cfg, train_cfg, tok, ckpt, state)
