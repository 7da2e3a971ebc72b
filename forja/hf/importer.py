"""Import: a Llama-style Hugging Face folder read directly (config.json, safetensors; no transformers
needed), refused where Forja cannot compute it exactly, and written as a Forja run folder with one
checkpoint (step 0, no optimizer state)."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import torch

from forja.hf.architectures import ARCHITECTURES, MODEL_TYPES, expected_hf_names
from forja.hf.files import EXPORT_MANIFEST, IMPORT_MANIFEST, SP_MODEL, VERSION, WEIGHTS, WEIGHTS_INDEX
from lm.config import ModelConfig, TrainConfig, from_dict, to_dict
from lm.errors import CheckpointError, ConfigError, ForjaError
from lm.fileio import atomic_write_json, read_json, sha256_file

log = logging.getLogger("forja.hf")

# transformers' defaults for fields a config.json may leave out, per model_type
HF_DEFAULTS = {
    "llama": {"rms_norm_eps": 1e-6, "max_position_embeddings": 2048, "head_dim": None},
    "qwen3": {"rms_norm_eps": 1e-6, "max_position_embeddings": 32768, "head_dim": 128},
    "arcee": {"rms_norm_eps": 1e-5, "max_position_embeddings": 4096, "head_dim": None},
}
SILU = ("silu", "swish")  # transformers maps both names to the same function


def model_config_from_hf(config: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """The Forja ModelConfig computing exactly what this transformers config.json computes, or a
    ForjaError naming the field that Forja cannot represent."""

    def refuse(field: str, why: str) -> None:
        raise ForjaError(f"{where}: cannot import {field}={config.get(field)!r}: {why}")

    def need(field: str) -> Any:
        if not isinstance(config.get(field), int) or isinstance(config.get(field), bool):
            refuse(field, "an integer is required")
        return config[field]

    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        names = ", ".join(f"{a} ({t})" for a, t, _ in ARCHITECTURES.values())
        refuse("model_type", f"Forja imports {names} only; architectures={config.get('architectures')}")
    mlp, qk_norm = MODEL_TYPES[model_type]
    act = ARCHITECTURES[(mlp, qk_norm)][2]
    defaults = HF_DEFAULTS[model_type]
    if config.get("hidden_act", act) not in (SILU if act == "silu" else (act,)):
        refuse("hidden_act", f"{model_type} in Forja computes {act}")
    for field in ("attention_bias", "mlp_bias"):
        if config.get(field):
            refuse(field, "Forja's layers have no biases")
    if config.get("rope_scaling"):
        refuse("rope_scaling", "Forja implements plain RoPE only (no scaling or extension)")
    rope = config.get("rope_parameters") or {}
    if not isinstance(rope, dict) or rope.get("rope_type", "default") != "default":
        refuse("rope_parameters", "Forja implements plain RoPE only (rope_type 'default')")
    if rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) != 1.0:
        refuse("partial_rotary_factor", "Forja rotates every dimension of a head")
    if model_type == "qwen3":
        if config.get("use_sliding_window"):
            refuse("use_sliding_window", "Forja's attention is full causal attention in every layer")
        if any(t != "full_attention" for t in config.get("layer_types") or []):
            refuse("layer_types", "Forja's attention is full causal attention in every layer")
    d_model, n_head, n_layer = need("hidden_size"), need("num_attention_heads"), need("num_hidden_layers")
    n_kv = config.get("num_key_value_heads") or n_head
    head_dim = config.get("head_dim") or defaults["head_dim"] or d_model // max(1, n_head)
    if head_dim * n_head != d_model:
        refuse("head_dim", f"Forja's heads split hidden_size={d_model} into num_attention_heads={n_head}")
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    ffn = need("intermediate_size")
    try:
        default_ffn = ModelConfig(d_model=d_model, n_head=n_head, mlp=mlp).hidden_dim
        return ModelConfig(
            arch="transformer",
            vocab_size=need("vocab_size"),
            n_layer=n_layer,
            n_head=n_head,
            n_kv_head=0 if n_kv == n_head else n_kv,
            d_model=d_model,
            ffn_hidden=0 if ffn == default_ffn else ffn,
            max_seq_len=config.get("max_position_embeddings") or defaults["max_position_embeddings"],
            mlp=mlp,
            qk_norm=qk_norm,
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            rope_theta=float(theta),
            norm_eps=float(config.get("rms_norm_eps") or defaults["rms_norm_eps"]),
            init_std=float(config.get("initializer_range") or 0.02),
        )
    except ConfigError as e:
        raise ForjaError(f"{where}: {e}") from e


def read_hf_weights(src: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's safetensors (one file or shards listed by an index); no pickles."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = src / WEIGHTS_INDEX
    if index.is_file():
        files = sorted(set(read_json(index)["weight_map"].values()))
    elif (src / WEIGHTS).is_file():
        files = [WEIGHTS]
    else:
        found = sorted(p.name for p in src.glob("*.bin")) + sorted(p.name for p in src.glob("*.pt*"))
        hint = (
            f"; it has {', '.join(found[:3])}: pickled weights are not read (they can run code), "
            "convert them to safetensors first"
            if found
            else ""
        )
        raise ForjaError(f"{src} has no {WEIGHTS} or {WEIGHTS_INDEX}{hint}")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        try:
            tensors |= load_file(str(src / name))
        except (SafetensorError, OSError) as e:
            raise ForjaError(f"cannot read {src / name}: {e}") from e
    return tensors


def from_hf_state_dict(tensors: dict[str, torch.Tensor], cfg: ModelConfig, where: str) -> dict:
    """Forja parameter names for transformers' tensors; a missing or unexpected tensor is an error."""
    expected = expected_hf_names(cfg)
    ignored = {n for n in tensors if n.endswith("rotary_emb.inv_freq")}  # a buffer older versions saved
    if cfg.tie_embeddings:
        ignored |= {"lm_head.weight"} & set(tensors)  # transformers ties it to the embedding as well
    missing = sorted(expected - set(tensors))
    unexpected = sorted(set(tensors) - expected - ignored)
    if missing or unexpected:
        raise ForjaError(
            f"{where}: the weights do not fit the model its config.json describes: "
            f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}, "
            f"unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}"
        )
    out = {name.removeprefix("model."): tensors[name] for name in expected}
    if cfg.tie_embeddings:
        out["lm_head.weight"] = out["embed_tokens.weight"]
    return out


def import_hf(src: Path, out: Path) -> dict[str, Any]:
    """Turn a Llama-style Hugging Face folder into a Forja run folder with one checkpoint (step 0).

    `src` needs config.json (LlamaForCausalLM, Qwen3ForCausalLM or ArceeForCausalLM computing
    something Forja computes exactly), safetensors weights and a SentencePiece tokenizer.model. The
    checkpoint has no optimizer state: continued pretraining starts a new run from its weights.
    Returns the import manifest, also written to OUT/hf_import.json.
    """
    from lm.checkpoint import list_checkpoints, save_checkpoint
    from lm.models import build_model
    from lm.tokenizer import Tokenizer

    src, out = Path(src), Path(out)
    config_path = src / "config.json"
    if not config_path.is_file():
        raise ForjaError(f"{src} is not a Hugging Face model folder: {config_path} is missing")
    if list_checkpoints(out):
        raise CheckpointError(f"{out} already holds checkpoints; choose another --out folder")
    try:
        config = read_json(config_path)
    except ValueError as e:
        raise ForjaError(f"{config_path} is not valid JSON: {e}") from e
    model_cfg = model_config_from_hf(config, str(config_path))
    sp_path = src / SP_MODEL
    if not sp_path.is_file():
        raise ForjaError(
            f"{src} has no {SP_MODEL}: Forja tokenizes with SentencePiece, so a folder needs its "
            "SentencePiece model to be imported (a tokenizer.json-only tokenizer, e.g. byte-level BPE, "
            "cannot be used by Forja)"
        )
    tok = Tokenizer(sp_path)  # a DataError if it is not SentencePiece or has no EOS
    if tok.vocab_size > model_cfg.vocab_size:
        raise ForjaError(
            f"{sp_path} has {tok.vocab_size} pieces but {config_path} vocab_size={model_cfg.vocab_size}"
        )
    hf_eos = config.get("eos_token_id")
    if hf_eos is not None and tok.eos_id not in (hf_eos if isinstance(hf_eos, list) else [hf_eos]):
        log.warning(
            "%s: eos_token_id=%s but the SentencePiece EOS is %d; Forja ends documents with %d",
            config_path,
            hf_eos,
            tok.eos_id,
            tok.eos_id,
        )
    tensors = read_hf_weights(src)
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})
    state_dict = from_hf_state_dict(tensors, model_cfg, str(src))
    model = build_model(model_cfg)
    try:
        model.load_state_dict(state_dict, strict=True)  # copies (and casts to fp32) into our parameters
    except RuntimeError as e:
        raise ForjaError(f"{src}: the weights do not fit the model its config.json describes: {e}") from e
    del tensors, state_dict

    train_cfg = TrainConfig()
    exported = src / EXPORT_MANIFEST
    if exported.is_file():  # a Forja export: keep the training settings it was made with
        try:
            _, train_cfg = from_dict(read_json(exported)["config"])
        except (ForjaError, KeyError, TypeError, ValueError) as e:
            log.warning("ignoring the training settings of %s: %s", exported, e)
    architecture = ARCHITECTURES[(model_cfg.mlp, model_cfg.qk_norm)][0]
    source = {
        "path": str(src.resolve()),
        "architecture": architecture,
        "config_sha256": sha256_file(config_path),
        "weights_dtypes": dtypes,
        "tokenizer_sha256": tok.sha256,
    }
    state = {
        "config": to_dict(model_cfg, train_cfg),
        "tokenizer_sha256": tok.sha256,
        "imported_from": source,
        "metrics": {},
        "torch": torch.__version__,
    }
    ckpt = save_checkpoint(out, 0, model, None, state, sp_path)
    manifest = {
        "format": "forja-hf-import",
        "version": VERSION,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "source": source,
        "run_dir": str(out),
        "checkpoint": str(ckpt),
        "parameters": model.num_params(),
        "config": to_dict(model_cfg, train_cfg)["model"],
    }
    atomic_write_json(out / IMPORT_MANIFEST, manifest)
    log.info("imported %s (%s, %s parameters) into %s", src, architecture, f"{model.num_params():,}", ckpt)
    return manifest
