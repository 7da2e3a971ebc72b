"""The training loop: self-supervised next-token prediction with teacher forcing.

Each step draws windows of seq_len + 1 tokens, feeds x = w[:-1] (the gold prefix) and scores the
logits against y = w[1:] with the mean cross-entropy -log p(w(t+1)) over every position, then
backpropagates and takes an optimiser step (lm/optim.py). Everything a run needs to continue exactly where it stopped
(weights, optimizer, sampler position, RNG) goes into each checkpoint.

`train(...)` is the whole API. It reports through callbacks, `on_metrics(metrics, step)` and
`on_checkpoint(path, step)`, and knows nothing of Prefect or MLflow. Under `torchrun` it runs
data-parallel (DDP, or FSDP2 with parallel=fsdp: lm/parallel.py): every rank reads a disjoint slice
of the same global batch.

Fault injection, for the reliability suite only: `FORJA_FAULT_NAN_STEP=N` multiplies the token
embeddings of training step N (1-based, as logged) by NaN, so a run started by any command (`forja
run`) can be made to diverge on purpose; see tests/reliability/test_checkpoints.py.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from lm import checkpoint as ckpt
from lm import parallel
from lm.config import ModelConfig, TrainConfig, to_dict
from lm.data import TokenData, TokenSplit, WindowSampler, sequential_windows, window_batch
from lm.errors import CheckpointError, ConfigError, DataError, NonFiniteLossError
from lm.fileio import atomic_write_json
from lm.mixture import MixtureSampler
from lm.models import build_model
from lm.optim import lr_at, make_optimizer, set_lr
from lm.runtime import (
    Dist,
    all_reduce_mean,
    autocast,
    barrier,
    init_distributed,
    matmul_peak_flops,
    pick_device,
    pick_dtype,
)

log = logging.getLogger("forja.train")
NAN_FAULT_ENV = "FORJA_FAULT_NAN_STEP"

MetricsCallback = Callable[[dict[str, float], int], None]
CheckpointCallback = Callable[[Path, int], None]


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    stopped_early: bool = False


def resolve_configs(
    model_cfg: ModelConfig, train_cfg: TrainConfig, data: TokenData
) -> tuple[ModelConfig, TrainConfig]:
    """Fill what the data decides (vocab size, sequence length) and check the two agree."""
    if model_cfg.vocab_size == 0:
        model_cfg = replace(model_cfg, vocab_size=data.vocab_size)
    elif model_cfg.vocab_size < data.vocab_size:
        raise ConfigError(
            f"invalid value {model_cfg.vocab_size} for 'vocab_size': the tokenizer of {data.root} has "
            f"{data.vocab_size} tokens (use 0 to take the tokenizer's size)"
        )
    if train_cfg.seq_len == 0:
        train_cfg = replace(train_cfg, seq_len=model_cfg.max_seq_len)
    if train_cfg.seq_len > model_cfg.max_seq_len:
        raise ConfigError(
            f"invalid value {train_cfg.seq_len} for 'seq_len': larger than max_seq_len={model_cfg.max_seq_len}"
        )
    return model_cfg, train_cfg


class Trainer:
    def __init__(
        self,
        model_cfg: ModelConfig,
        train_cfg: TrainConfig,
        data: TokenData | str | os.PathLike,
        run_dir: str | os.PathLike,
        *,
        resume: bool = False,
        on_metrics: MetricsCallback | None = None,
        on_checkpoint: CheckpointCallback | None = None,
        should_stop: Callable[[int], bool] | None = None,
        init_from: str | os.PathLike | None = None,
    ):
        self.data = data if isinstance(data, TokenData) else TokenData.open(data)
        self.run_dir = Path(run_dir)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"--out {self.run_dir} is a file; give a folder for the run (new or earlier)")
        if self.run_dir.parent.exists() and not self.run_dir.parent.is_dir():
            raise ConfigError(f"--out {self.run_dir}: {self.run_dir.parent} is a file, not a folder")
        self.on_metrics = on_metrics or (lambda metrics, step: None)
        self.on_checkpoint = on_checkpoint or (lambda path, step: None)
        self.should_stop = should_stop or (lambda step: False)  # e.g. a cancelled flow: checkpoint, then stop
        self.device = pick_device(train_cfg.device)
        self.dist: Dist = init_distributed(self.device)
        self.start_step = 0
        self.resumed_from: Path | None = None
        self.initialised_from: Path | None = None

        existing = ckpt.latest_checkpoint(self.run_dir) if resume else None
        if resume and existing is None:
            log.info("resume: %s holds no complete checkpoint yet; starting from step 0", self.run_dir)
        if not resume and ckpt.list_checkpoints(self.run_dir):
            raise CheckpointError(
                f"{self.run_dir} already holds checkpoints; pass --resume to continue that run "
                "or choose another --out folder"
            )
        self.model_cfg, self.cfg = resolve_configs(model_cfg, train_cfg, self.data)
        if existing is not None:  # a checkpoint fixes the model's shape and the tokenizer
            self._check_compatible(existing)
        elif init_from is not None:
            init_from = ckpt.resolve_checkpoint(init_from)
            self._check_compatible(init_from)
        self.dtype = pick_dtype(self.cfg.dtype, self.device)

        parallel.check_supported(self.model_cfg, self.cfg)

        torch.manual_seed(self.cfg.seed)  # same init on every rank and every run with this seed
        self.model = build_model(self.model_cfg).to(self.device)
        if existing is None and init_from is not None:  # trained weights, fresh optimizer and schedule
            ckpt.load_weights(init_from, self.model)
            self.initialised_from = init_from
            log.info("initialised weights from %s", init_from)
        parallel.wrap(self.model, self.cfg, self.device, self.dist)  # FSDP shards in place
        self.optimizer = make_optimizer(self.model, self.cfg, self.device)
        train_split = self.data.splits["train"]
        self.sampler: WindowSampler | MixtureSampler
        if self.data.sources:  # a mixture: each source drawn by its weight
            self.sampler = MixtureSampler(
                [(s.name, s.weight, s.data.splits["train"].shards) for s in self.data.sources],
                self.cfg.seq_len,
                self.cfg.seed,
                self.dist.rank,
                self.dist.world_size,
            )
        else:
            self.sampler = WindowSampler(
                train_split.shards, self.cfg.seq_len, self.cfg.seed, self.dist.rank, self.dist.world_size
            )
        if existing is not None:
            self._load(existing)
        self.forward_model: torch.nn.Module = self.model
        if self.cfg.compile:
            self.forward_model = torch.compile(self.forward_model)
        self.forward_model = parallel.replicate(self.forward_model, self.cfg, self.device, self.dist)
        self.flops_per_token = self.model.flops_per_token(self.cfg.seq_len)
        self._val_sets = self._pick_val_windows()
        self._step = self.start_step  # the 1-based step being computed
        if os.environ.get(NAN_FAULT_ENV):
            self._inject_nan_at(int(os.environ[NAN_FAULT_ENV]))

    # ------------------------------------------------------------------ setup helpers

    def _check_compatible(self, path: Path) -> None:
        saved, _ = ckpt.read_configs(path)
        diff = [
            f"{k}: {v} -> {getattr(self.model_cfg, k)}"
            for k, v in vars(saved).items()
            if getattr(self.model_cfg, k) != v
        ]
        if diff:
            raise ConfigError(
                f"cannot continue from {path} with a different model ({'; '.join(diff)}); "
                "start from the checkpoint's saved config (resume_configs) or use a new --out"
            )
        digest = ckpt.read_state(path).get("tokenizer_sha256", "?")
        if digest != self.data.tokenizer_sha256:
            raise CheckpointError(
                f"{path} was trained with tokenizer {digest[:12]}, but {self.data.root} uses "
                f"{self.data.tokenizer_sha256[:12]}; continue on data tokenized with the checkpoint's tokenizer"
            )

    def _load(self, path: Path) -> None:
        state = ckpt.read_state(path)
        if parallel.is_sharded(self.model):  # this rank's shards of the weights and the optimizer
            weights, optim = ckpt.read_shard(path, self.dist.rank, self.dist.world_size)
            parallel.load_local_model_state(self.model, weights, str(path))
            parallel.load_local_optimizer_state(self.optimizer, optim)
        else:
            ckpt.load_weights(path, self.model)
            ckpt.load_optimizer(path, self.optimizer)
        ckpt.load_rng(path)
        self.sampler.load_state_dict(state["sampler"])
        self.start_step = int(state["step"])
        self.resumed_from = path
        log.info("resumed from %s (step %d)", path, self.start_step)

    def _inject_nan_at(self, step: int) -> None:
        """Fault injection (FORJA_FAULT_NAN_STEP): NaN token embeddings in training step `step`."""
        embedding = next(m for m in self.model.modules() if isinstance(m, torch.nn.Embedding))
        log.warning("fault injection: %s=%d turns step %d's embeddings into NaN", NAN_FAULT_ENV, step, step)

        def poison(module, inputs, output):
            return output * float("nan") if module.training and self._step == step else output

        embedding.register_forward_hook(poison)

    def _pick_val_windows(self) -> list[tuple[str | None, TokenSplit, list[tuple[int, int]]]]:
        """The fixed validation windows: (source name, its val split, windows) per source of a
        mixture (each with up to eval_batches batches), or one entry named None for a token folder."""
        named = [(s.name, s.data) for s in self.data.sources] or [(None, self.data)]
        sets = []
        for name, data in named:
            val = data.splits.get("val")
            if val is None or val.n_tokens <= self.cfg.seq_len:
                continue
            windows = sequential_windows(val.shards, self.cfg.seq_len)
            n = self.cfg.eval_batches * self.cfg.batch_size * self.dist.world_size
            if self.cfg.eval_batches and n < len(windows):  # spread evenly over the whole split
                windows = [windows[i] for i in np.linspace(0, len(windows) - 1, n).round().astype(int)]
            sets.append((name, val, windows))
        return sets

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation loss (nats/token), perplexity and bits per byte on the fixed validation windows.

        For a mixture also `val_loss/<NAME>` and `val_bpb/<NAME>` per source; the overall figures
        are then those of all the sources' validation text together (each source's loss weighted by
        its validation tokens, divided by all their bytes).
        """
        if not self._val_sets:
            return {}
        metrics: dict[str, float] = {}
        nats = tokens = n_bytes = 0.0
        for name, val, windows in self._val_sets:
            loss = self._val_loss(val, windows)
            nats, tokens, n_bytes = nats + loss * val.n_tokens, tokens + val.n_tokens, n_bytes + val.n_bytes
            if name is not None:
                metrics |= {
                    f"val_loss/{name}": loss,
                    f"val_bpb/{name}": loss * val.n_tokens / max(1, val.n_bytes) / math.log(2),
                }
        # bits per byte: nats per token x tokens per byte of the split / ln 2
        loss = nats / tokens if len(self._val_sets) > 1 else loss  # one split: its loss as it is
        bpb = nats / max(1.0, n_bytes) / math.log(2)
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0)), "val_bpb": bpb} | metrics

    def _val_loss(self, val: TokenSplit, windows: list[tuple[int, int]]) -> float:
        self.model.eval()
        total, count = torch.zeros((), device=self.device, dtype=torch.float64), 0
        per_rank = windows[self.dist.rank :: self.dist.world_size]
        n = len(per_rank)
        if parallel.is_sharded(self.model):  # every rank runs as many forwards (each all-gathers)
            n = len(windows[:: self.dist.world_size])
        for i in range(0, n, self.cfg.batch_size):
            part = per_rank[i : i + self.cfg.batch_size]
            w = torch.from_numpy(window_batch(val.shards, part or windows[:1], self.cfg.seq_len))
            w = w.to(self.device)
            with autocast(self.device, self.dtype):
                _, loss = self.model(w[:, :-1], w[:, 1:])
            if part:  # an empty part ran only to keep the ranks in step
                total += loss.double() * w.shape[0]
                count += w.shape[0]
        self.model.train()
        stats = torch.tensor([total.item(), count], dtype=torch.float64, device=self.device)
        if self.dist.enabled:
            torch.distributed.all_reduce(stats)
        return (stats[0] / stats[1]).item()

    # ------------------------------------------------------------------ the loop

    def _micro_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.sampler.next_batch(self.cfg.batch_size)
        if batch.size and int(batch.max()) >= self.model_cfg.vocab_size:  # a forged or foreign shard
            raise DataError(
                f"a shard of {self.data.root} holds token id {int(batch.max())}, outside the model's "
                f"vocabulary of {self.model_cfg.vocab_size}: the shards do not belong to its tokenizer; re-run tokenize"
            )
        w = torch.from_numpy(batch).to(self.device, non_blocking=True)
        return w[:, :-1], w[:, 1:]  # teacher forcing: x is the gold prefix, y the next tokens

    def train_step(self, step: int) -> tuple[float, float]:
        """One optimiser step over grad_accum micro-batches; returns (loss, grad norm)."""
        self._step = step + 1
        set_lr(self.optimizer, step, self.cfg)
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.cfg.grad_accum):
            x, y = self._micro_batch()
            last = micro == self.cfg.grad_accum - 1
            with parallel.accumulating(self.forward_model, skip_sync=not last):
                with autocast(self.device, self.dtype):
                    _, loss = self.forward_model(x, y)
                (loss / self.cfg.grad_accum).backward()
            loss_sum += loss.detach()
        loss = all_reduce_mean(loss_sum / self.cfg.grad_accum, self.dist).item()
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(
                f"loss is {loss} at step {step + 1}; training stopped before the optimizer step and no "
                "checkpoint was written. Lower lr (--set lr=...) or check the data for bad tokens"
            )
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        grad_norm = parallel.clip_grad_norm(self.model, max_norm)
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"gradient norm is {grad_norm} at step {step + 1}; training stopped")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm

    def save(self, step: int, metrics: dict[str, float]) -> Path | None:
        path = None
        model, optimizer, shards = self.model, self.optimizer, None
        if parallel.is_sharded(self.model):  # every rank writes its shard; rank 0 the whole model
            model, optimizer = parallel.full_model(self.model, self.model_cfg, self.dist), None
            staged = [ckpt.prepare_shards(self.run_dir, step) if self.dist.is_main else None]
            torch.distributed.broadcast_object_list(staged, src=0)
            shards = staged[0]
            if shards is not None:
                ckpt.write_shard(
                    shards,
                    self.dist.rank,
                    self.dist.world_size,
                    parallel.local_model_state(self.model),
                    parallel.local_optimizer_state(self.optimizer),
                )
            barrier(self.dist)
        if self.dist.is_main:
            state = {
                "config": to_dict(self.model_cfg, self.cfg),
                "sampler": self.sampler.state_dict(),
                "tokenizer_sha256": self.data.tokenizer_sha256,
                "data_manifest_sha256": self.data.manifest.get("digest"),
                "metrics": metrics,
                "torch": torch.__version__,
            }
            path = ckpt.save_checkpoint(
                self.run_dir,
                step,
                model,
                optimizer,
                state,
                self.data.tokenizer_path,
                self.cfg.keep_last,
                shards,
            )
            self.on_checkpoint(path, step)
        barrier(self.dist)
        return path

    def _emit(self, metrics: dict[str, float], step: int) -> None:
        if not self.dist.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        self.on_metrics(metrics, step)

    def fit(self) -> TrainResult:
        cfg = self.cfg
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(
                self.run_dir / "config.json",
                {
                    **to_dict(self.model_cfg, cfg),
                    "data": str(self.data.root),
                    "tokenizer_sha256": self.data.tokenizer_sha256,
                    "world_size": self.dist.world_size,
                    "device": str(self.device),
                    "dtype": str(self.dtype).removeprefix("torch."),
                },
            )
        tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.seq_len * self.dist.world_size
        peak = (
            matmul_peak_flops(self.device.type, self.dtype) * self.dist.world_size
            if self.dist.is_main
            else 0.0
        )
        log.info(
            "training %s (%s parameters, %s) on %s/%s from step %d to %d, %d tokens per step",
            self.model_cfg.shape,
            f"{self.model.num_params():,}",
            self.model_cfg.arch,
            self.device,
            str(self.dtype).removeprefix("torch."),
            self.start_step,
            cfg.max_steps,
            tokens_per_step,
        )
        self.model.train()
        t_start = t_last = time.perf_counter()
        metrics: dict[str, float] = {}
        last_saved = self.resumed_from
        step = self.start_step
        stopped_early = False
        while step < cfg.max_steps:
            loss, grad_norm = self.train_step(step)
            step += 1
            metrics = {"loss": loss, "lr": lr_at(step - 1, cfg), "grad_norm": grad_norm}
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                now = time.perf_counter()
                steps_done = (step - self.start_step) % cfg.log_every or cfg.log_every
                tps = tokens_per_step * steps_done / max(now - t_last, 1e-9)
                t_last = now
                metrics |= {"tokens_per_s": tps, "mfu": self.flops_per_token * tps / peak if peak else 0.0}
                if isinstance(self.sampler, MixtureSampler):
                    metrics |= self.sampler.tokens_seen()
                if self.dist.is_main:
                    log.info(
                        "step %d/%d  loss %.4f  lr %.2e  grad norm %.3f  %.0f tokens/s  mfu %.1f%%",
                        step,
                        cfg.max_steps,
                        loss,
                        metrics["lr"],
                        grad_norm,
                        tps,
                        100 * metrics["mfu"],
                    )
            out_of_time = cfg.max_time_s > 0 and time.perf_counter() - t_start >= cfg.max_time_s
            stop = out_of_time or self.should_stop(step)
            last = step == cfg.max_steps or stop
            if (cfg.eval_every and step % cfg.eval_every == 0) or last:
                val = self.evaluate()
                metrics |= val
                if val and self.dist.is_main:
                    log.info("step %d  val loss %.4f  val bpb %.4f", step, val["val_loss"], val["val_bpb"])
            self._emit(metrics, step)
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or last:
                last_saved = self.save(step, metrics) or last_saved
            if stop and step < cfg.max_steps:
                log.info(
                    "stopping at step %d (%s)", step, "max_time_s reached" if out_of_time else "asked to"
                )
                stopped_early = True
                break
        elapsed = time.perf_counter() - t_start
        return TrainResult(
            self.run_dir,
            step,
            last_saved,
            metrics,
            (step - self.start_step) * tokens_per_step,
            elapsed,
            stopped_early,
        )


def resume_configs(
    run_dir: str | os.PathLike, model_cfg: ModelConfig, train_cfg: TrainConfig
) -> tuple[ModelConfig, TrainConfig]:
    """The configs a resumed run starts from: those saved in its newest checkpoint, if it has one."""
    latest = ckpt.latest_checkpoint(run_dir)
    return ckpt.read_configs(latest) if latest is not None else (model_cfg, train_cfg)


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data: TokenData | str | os.PathLike,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    on_metrics: MetricsCallback | None = None,
    on_checkpoint: CheckpointCallback | None = None,
    should_stop: Callable[[int], bool] | None = None,
    init_from: str | os.PathLike | None = None,
) -> TrainResult:
    """Train (or resume) a model on a token folder and return where it ended.

    `resume`: continue the run in `run_dir` from its newest complete checkpoint (or start it).
    `init_from`: a checkpoint (or run folder) whose weights a new run starts from, e.g. to continue
    training the current champion on new data; optimizer, schedule and sampler start fresh.
    """
    return Trainer(
        model_cfg,
        train_cfg,
        data,
        run_dir,
        resume=resume,
        on_metrics=on_metrics,
        on_checkpoint=on_checkpoint,
        should_stop=should_stop,
        init_from=init_from,
    ).fit()
