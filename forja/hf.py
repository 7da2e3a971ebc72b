"""Hugging Face interoperability: a Forja model as a transformers folder, and a Llama-style folder back.

    forja export-hf RUN_DIR_OR_MODEL_URI --out DIR      export_hf(model_ref, out)
    forja import-hf DIR --out RUN_DIR                   import_hf(src, out)

The export is exact or refused, never approximate. Forja's transformer was built with Hugging Face's
module names and layouts (rotate-half RoPE, RMSNorm with a learnable scale computed in fp32, no
biases), so each supported configuration is one transformers architecture computing the same function
with the same tensors, renamed only by a `model.` prefix:

    mlp=swiglu, qk_norm=False    LlamaForCausalLM
    mlp=swiglu, qk_norm=True     Qwen3ForCausalLM (per-head RMSNorm of q and k before RoPE, as ours)
    mlp=relu2,  qk_norm=False    ArceeForCausalLM (Llama with the ungated ReLU² MLP, down(relu(up(x))²))
    mlp=relu2,  qk_norm=True     refused: no transformers architecture has both
    arch=lstm                    refused: the LSTM baseline has no transformers counterpart

Dropout is a training-time detail with no effect on the function the model computes; it is not
exported (transformers' attention_dropout sits elsewhere in the block) and reads back as 0.

The tokenizer is the SentencePiece model itself (tokenizer.model, for llama.cpp converters and for
import) and a `tokenizers` rebuild of it (tokenizer.json, what AutoTokenizer loads) that reproduces
`sp.encode(text)` id for id: the model's normalisation rules (precompiled character map, whitespace
handling, dummy prefix), BPE merges ranked by piece score as SentencePiece ranks them (or the unigram
lattice with its scores), byte fallback, and user-defined symbols kept whole. Nothing is added around
the text (no BOS), and literal "<s>" or "</s>" in a text stay text, as in SentencePiece
(`split_special_tokens`). Where a SentencePiece feature cannot be rebuilt exactly, the export refuses
and names it; every export is then checked on probe texts (ids) and a probe sequence (logits) through
the installed transformers before the folder appears.

Forja starts every document after EOS and never trains SentencePiece's <s>; so the exported
`bos_token` is EOS (as GPT-2's), and tools that begin a text with BOS (lm-evaluation-harness,
`generate()` without a prompt) give the model the context it was trained with.

Import reads config.json and safetensors directly (no transformers needed), refuses anything Forja
cannot compute exactly (naming the field), and writes a Forja run folder with one checkpoint
(step 0, no optimizer state) holding the SentencePiece tokenizer.model the folder must contain.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from lm.config import ModelConfig
from lm.errors import ConfigError, ForjaError

log = logging.getLogger("forja.hf")

FORMAT = "forja-hf-export"
VERSION = 1
EXPORT_MANIFEST = "forja.json"  # provenance of an exported folder; written last
IMPORT_MANIFEST = "hf_import.json"  # what an imported run came from
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
SP_MODEL = "tokenizer.model"
LOGITS_ATOL = 1e-4  # the export's self-check: fp32 logits of ours and transformers' must agree this well

# SentencePiece piece types (sentencepiece_model.proto)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SP_UNIGRAM, SP_BPE = 1, 2

# Texts every exported tokenizer must encode exactly as SentencePiece does; the user-defined symbols of
# the model are added to them at export time.
PROBE_TEXTS = (
    "Hello world",
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    " leading space",
    "  two leading spaces and trailing  ",
    "tabs\tand\r\nwindows newlines\n\n\nthree newlines",
    "many     spaces",
    "naïve café, Ωμέγα, Привет, 日本語のテキスト, 한국어",
    "emoji 🙂🚀 and ﬁ ligature, ½, ①, full-width ＡＢＣ",
    "literal <s> and </s> and <unk> and <0x41> and ▁ and ▁▁x",
    "digits 1234567890 3.14159 and punctuation !?.,;:'\"()[]{}<>",
    "\n",
    " ",
    "",
)

# --------------------------------------------------------------------------- architectures

ARCHITECTURES = {  # (mlp, qk_norm) -> (architectures[0], model_type, hidden_act)
    ("swiglu", False): ("LlamaForCausalLM", "llama", "silu"),
    ("swiglu", True): ("Qwen3ForCausalLM", "qwen3", "silu"),
    ("relu2", False): ("ArceeForCausalLM", "arcee", "relu2"),
}
MODEL_TYPES = {model_type: (mlp, qk) for (mlp, qk), (_, model_type, _) in ARCHITECTURES.items()}


def hf_architecture(cfg: ModelConfig) -> tuple[str, str, str]:
    """(architecture, model_type, hidden_act) of the transformers class that computes exactly our model."""
    if cfg.arch != "transformer":
        raise ConfigError(
            f"invalid value {cfg.arch!r} for 'arch': the LSTM baseline has no transformers architecture; "
            "only transformer runs can be exported to Hugging Face"
        )
    key = (cfg.mlp, cfg.qk_norm)
    if key not in ARCHITECTURES:
        raise ConfigError(
            "invalid combination mlp='relu2' with qk_norm=true for a Hugging Face export: no transformers "
            "architecture has both (ArceeForCausalLM has ReLU² without QK-norm, Qwen3ForCausalLM QK-norm "
            "with SwiGLU); train with one of them to export"
        )
    return ARCHITECTURES[key]


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


def expected_hf_names(cfg: ModelConfig) -> set[str]:
    """Every tensor name a transformers folder of this configuration holds (the tied head excluded)."""
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if not cfg.tie_embeddings:
        names.add("lm_head.weight")
    mlp = ["up_proj", "down_proj"] + (["gate_proj"] if cfg.mlp == "swiglu" else [])
    attn = ["q_proj", "k_proj", "v_proj", "o_proj"]
    for i in range(cfg.n_layer):
        pre = f"model.layers.{i}"
        names |= {f"{pre}.input_layernorm.weight", f"{pre}.post_attention_layernorm.weight"}
        names |= {f"{pre}.self_attn.{m}.weight" for m in attn}
        names |= {f"{pre}.mlp.{m}.weight" for m in mlp}
        if cfg.qk_norm:
            names |= {f"{pre}.self_attn.q_norm.weight", f"{pre}.self_attn.k_norm.weight"}
    return names


# --------------------------------------------------------------------------- the tokenizer


def read_sp_proto(path: str | os.PathLike):
    """The SentencePiece ModelProto of a .model file (sentencepiece ships the protobuf bindings)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    try:
        proto.ParseFromString(Path(path).read_bytes())
    except Exception as e:  # protobuf's DecodeError, and OSError
        raise ForjaError(f"{path} is not a SentencePiece model: {e}") from e
    if not proto.pieces:
        raise ForjaError(f"{path} is not a SentencePiece model: it holds no pieces")
    return proto


def _refuse_tokenizer(path, what: str) -> None:
    raise ForjaError(
        f"cannot export the tokenizer {path} exactly: {what}. Forja exports only tokenizers whose "
        "Hugging Face version encodes every text to the same ids (the tokenize stage's defaults do)"
    )


def build_hf_tokenizer(sp_path: str | os.PathLike):
    """A `tokenizers.Tokenizer` that encodes every text to `sp.encode(text)`'s ids, or a ForjaError.

    SentencePiece normalises the whole text (character map, then whitespace: strip and collapse spaces,
    add the dummy prefix, escape spaces as "▁"), cuts out user-defined symbols (longest match first,
    never merged with their neighbours), then segments the rest: BPE merges the adjacent pair whose
    concatenation is the highest-scoring normal piece, leftmost first; unigram takes the best-scoring
    path. Each step is rebuilt below with its `tokenizers` equivalent.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    proto = read_sp_proto(sp_path)
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    pieces = list(proto.pieces)
    if spec.model_type not in (SP_UNIGRAM, SP_BPE):
        _refuse_tokenizer(sp_path, f"model_type {spec.model_type} (word or char) has no `tokenizers` model")
    if spec.treat_whitespace_as_suffix:
        _refuse_tokenizer(sp_path, "treat_whitespace_as_suffix=true (the space goes after words)")
    if any(p.type == UNUSED for p in pieces):
        _refuse_tokenizer(sp_path, "it has UNUSED pieces, which SentencePiece re-segments after merging")
    user_defined = [p.piece for p in pieces if p.type == USER_DEFINED]
    if user_defined and (norm.add_dummy_prefix or norm.remove_extra_whitespaces):
        # `tokenizers` cuts added tokens out of the raw text and normalises the parts one by one, while
        # SentencePiece normalises the whole text once: equal only when normalising is local.
        _refuse_tokenizer(
            sp_path,
            "user-defined symbols together with add_dummy_prefix or remove_extra_whitespaces "
            f"(symbols {user_defined[:5]}); train it with add_dummy_prefix=false and "
            "remove_extra_whitespaces=false, as `forja tokenize` does",
        )
    if any("▁" in u or " " in u for u in user_defined):
        _refuse_tokenizer(sp_path, "a user-defined symbol holds a space, which SentencePiece escapes first")

    vocab = {p.piece: i for i, p in enumerate(pieces)}
    if spec.model_type == SP_BPE:
        normal = {p.piece: (p.score, i) for i, p in enumerate(pieces) if p.type == NORMAL}
        ranked = []
        for piece, (score, i) in normal.items():  # every split of a piece into two pieces merges into it
            for cut in range(1, len(piece)):
                left, right = piece[:cut], piece[cut:]
                if left in normal and right in normal:
                    ranked.append((-score, i, cut, left, right))
        merges = [(left, right) for *_, left, right in sorted(ranked)]
        tok = Tokenizer(
            models.BPE(
                vocab=vocab,
                merges=merges,
                unk_token=pieces[spec.unk_id].piece,
                fuse_unk=True,
                byte_fallback=spec.byte_fallback,
                dropout=None,
            )
        )
    else:
        # SentencePiece's lattice holds only normal pieces; `tokenizers`' holds every piece, so a literal
        # "</s>" or "<0x41>" in a text could match one. They get a score that any path of normal pieces
        # beats, and each run of characters that no normal piece contains (so SentencePiece cannot
        # cross it either) becomes a pre-token of its own, where only <unk> (or bytes) can cover it.
        scores = [(p.piece, p.score if p.type == NORMAL else -1e9) for p in pieces]
        tok = Tokenizer(models.Unigram(scores, unk_id=spec.unk_id, byte_fallback=spec.byte_fallback))
        known = sorted({c for p in pieces if p.type == NORMAL for c in p.piece})
        unknown_run = "[^" + "".join(f"\\x{{{ord(c):x}}}" for c in known) + "]+"
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(unknown_run), behavior="isolated")

    steps = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend(" "))  # only to a non-empty text, as SentencePiece
    space = " "
    if norm.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
        space = "▁"
    if norm.remove_extra_whitespaces:  # SentencePiece strips trailing spaces after escaping them
        steps.append(normalizers.Replace(Regex(f"{space}+\\z"), ""))
    if steps:
        tok.normalizer = normalizers.Sequence(steps)

    # <unk> and control pieces are special (skipped by decode(skip_special_tokens=True)) but are never
    # matched in text: the exported tokenizer_config sets split_special_tokens, as SentencePiece.
    special = [p.piece for p in pieces if p.type in (UNKNOWN, CONTROL)]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    if user_defined:
        tok.add_tokens([AddedToken(u, special=False, normalized=False) for u in user_defined])

    steps = []
    if norm.escape_whitespaces:
        steps.append(decoders.Replace("▁", " "))
    if spec.byte_fallback:
        steps.append(decoders.ByteFallback())
    steps.append(decoders.Fuse())
    if norm.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(steps)
    return tok
