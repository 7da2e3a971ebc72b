"""Export: a Forja checkpoint as a transformers model folder (config.json, fp32 safetensors under
transformers' names, the tokenizer files, and forja.json with provenance, written last)."""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

import torch

from forja.hf.architectures import hf_architecture
from forja.hf.files import EXPORT_MANIFEST, FORMAT, VERSION, WEIGHTS, file_records, require, write_json
from forja.hf.tokenizer import build_hf_tokenizer, save_hf_tokenizer, sp_model_type
from forja.hf.verify import verify_export
from lm.config import ModelConfig, to_dict
from lm.errors import CheckpointError, ForjaError
from lm.fileio import atomic_dir, read_json

log = logging.getLogger("forja.hf")


def hf_config(cfg: ModelConfig, bos_id: int, eos_id: int) -> dict[str, Any]:
    """The config.json of the transformers model equal to ours.

    RoPE is written both ways: `rope_theta` (transformers 4.x, vLLM, llama.cpp converters) and
    `rope_parameters` (transformers 5.x); likewise the dtype as `torch_dtype` and `dtype`.
    """
    architecture, model_type, act = hf_architecture(cfg)
    config: dict[str, Any] = {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": act,
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "use_cache": True,
        "torch_dtype": "float32",
        "dtype": "float32",
    }
    if model_type in ("llama", "arcee"):
        config |= {"mlp_bias": False}
    if model_type == "llama":
        config |= {"pretraining_tp": 1}
    if model_type == "qwen3":  # every layer full causal attention, as ours
        config |= {
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": cfg.n_layer,
            "layer_types": ["full_attention"] * cfg.n_layer,
        }
    return config


def to_hf_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our parameters under transformers' names: `model.` + ours, `lm_head` as is; a tied head is omitted."""
    out = {}
    for name, p in model.named_parameters():  # a tied weight is listed once, as embed_tokens.weight
        out[name if name == "lm_head.weight" else f"model.{name}"] = p.detach().to("cpu", torch.float32)
    return {k: v.contiguous().clone() for k, v in out.items()}


def export_hf(model_ref: str, out: Path, *, verify: bool = True) -> dict[str, Any]:
    """Write a Hugging Face model folder for a Forja model; return its manifest (forja.json).

    `model_ref` is anything `forja.models.load_model_ref` resolves (a run folder, a checkpoint folder,
    later models:/ and runs:/ URIs). The folder holds config.json, generation_config.json,
    model.safetensors (fp32), tokenizer.json, tokenizer_config.json, special_tokens_map.json,
    tokenizer.model and forja.json (provenance and digests, written last); it appears under `out` only
    once complete and, with `verify`, checked through the installed transformers. Exporting the same
    checkpoint to the same `out` again returns the existing manifest.
    """
    from safetensors.torch import save_file

    from forja.models import load_model_ref
    from lm.tokenizer import Tokenizer

    require("tokenizers")
    out = Path(out)
    loaded = load_model_ref(model_ref)
    cfg = loaded.model_cfg
    architecture, _, _ = hf_architecture(cfg)
    source_sha = read_json(loaded.checkpoint / "manifest.json")["files"]["model.safetensors"]["sha256"]
    if out.exists():
        previous = read_json(out / EXPORT_MANIFEST) if (out / EXPORT_MANIFEST).is_file() else {}
        if previous.get("source", {}).get("model_sha256") == source_sha:
            log.info("%s already holds this export of %s", out, loaded.checkpoint)
            return {**previous, "out": str(out)}
        raise ForjaError(f"{out} already exists; choose another --out or delete it first")
    tok = Tokenizer(loaded.tokenizer_path)  # checks the model has an EOS piece
    if tok.vocab_size > cfg.vocab_size:
        raise CheckpointError(
            f"{loaded.tokenizer_path} has {tok.vocab_size} pieces but the model only {cfg.vocab_size} embeddings"
        )
    hf_tok = build_hf_tokenizer(tok.path)  # refuses a tokenizer it cannot rebuild exactly, before any write

    log.info("exporting %s (%s) to %s as %s", loaded.checkpoint, cfg.shape, out, architecture)
    with atomic_dir(out) as tmp:
        save_file(to_hf_state_dict(loaded.model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        os.chmod(tmp / WEIGHTS, 0o644)  # safetensors writes it 0600; the other files are 0644
        write_json(tmp / "config.json", hf_config(cfg, bos_id=tok.eos_id, eos_id=tok.eos_id))
        write_json(
            tmp / "generation_config.json",
            {"bos_token_id": tok.eos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.eos_id},
        )
        save_hf_tokenizer(tok.path, tmp, cfg.max_seq_len, hf_tok)
        verification = verify_export(tmp, loaded.model, tok.path) if verify else None
        if verification:
            log.info(
                "checked with transformers %s: ids equal on %d texts, logits within %.2g",
                verification["transformers"],
                verification["texts_compared"],
                verification["logits_max_abs_diff"],
            )
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "created_at": dt.datetime.now(dt.UTC).isoformat(),
            "architecture": architecture,
            "source": {
                "ref": str(model_ref),
                "checkpoint": str(loaded.checkpoint),
                "step": loaded.state.get("step"),
                "model_sha256": source_sha,
                "tokenizer_sha256": tok.sha256,
            },
            "config": to_dict(cfg, loaded.train_cfg),
            "tokenizer": {"model_type": sp_model_type(tok.path), "bos_is_eos": True, "eos_id": tok.eos_id},
            "verification": verification,
            "files": file_records(tmp),
        }
        write_json(tmp / EXPORT_MANIFEST, manifest)
    return {**manifest, "out": str(out)}
