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

import datetime as dt
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, NoReturn

import torch

from lm.config import ModelConfig, TrainConfig, from_dict, to_dict
from lm.errors import CheckpointError, ConfigError, ForjaError
from lm.fileio import atomic_dir, atomic_write_json, read_json, sha256_file

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


def _refuse_tokenizer(path, what: str) -> NoReturn:
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


def tokenizer_files(sp_path: str | os.PathLike, max_seq_len: int) -> dict[str, Any]:
    """tokenizer_config.json and special_tokens_map.json for the SentencePiece model at `sp_path`.

    `PreTrainedTokenizerFast` loads tokenizer.json as it is, in transformers 4.x and 5.x alike (a
    model-specific class such as LlamaTokenizer would rebuild its own pipeline around the vocabulary).
    """
    proto = read_sp_proto(sp_path)
    spec = proto.trainer_spec
    if spec.eos_id < 0:
        raise ForjaError(f"{sp_path} has no EOS piece; Forja separates documents with EOS")
    eos = proto.pieces[spec.eos_id].piece
    special = {"bos_token": eos, "eos_token": eos}  # BOS is EOS: see the module docstring
    if spec.unk_id >= 0:
        special["unk_token"] = proto.pieces[spec.unk_id].piece
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": False,
        "add_eos_token": False,
        "split_special_tokens": True,  # a literal "</s>" in a text is text, as in SentencePiece
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_seq_len,
        "padding_side": "right",
    }
    return {"tokenizer_config.json": config, "special_tokens_map.json": special}


def save_hf_tokenizer(
    sp_path: str | os.PathLike, folder: str | os.PathLike, max_seq_len: int, hf_tok=None
) -> list[str]:
    """Write the tokenizer files of an exported folder (tokenizer.json, tokenizer_config.json,
    special_tokens_map.json, and the SentencePiece tokenizer.model itself); return their names.

    The rebuilt tokenizer is checked against SentencePiece on the probe texts first.
    """
    folder = Path(folder)
    hf_tok = hf_tok or build_hf_tokenizer(sp_path)
    hf_tok.encode_special_tokens = True  # what split_special_tokens sets when transformers loads it
    check_tokenizer(sp_path, lambda t: hf_tok.encode(t, add_special_tokens=False).ids)
    hf_tok.save(str(folder / "tokenizer.json"))
    files = tokenizer_files(sp_path, max_seq_len)
    for name, content in files.items():
        _write_json(folder / name, content)
    shutil.copyfile(sp_path, folder / SP_MODEL)
    return ["tokenizer.json", *files, SP_MODEL]


def check_tokenizer(sp_path: str | os.PathLike, encode, texts: list[str] | None = None) -> int:
    """Compare `encode(text)` with SentencePiece's ids on probe texts; raise naming the first mismatch.

    Returns the number of texts compared. The probes cover spaces, newlines, unicode, byte fallback,
    literal special pieces and every user-defined symbol of the model.
    """
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_path))
    probes = list(texts if texts is not None else PROBE_TEXTS)
    probes += [f"a{u}b {u}{u} {u}" for u in user_defined_symbols(sp_path)]
    for text in probes:
        ours, theirs = sp.encode(text), list(encode(text))
        if ours != theirs:
            at = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None)
            at = min(len(ours), len(theirs)) if at is None else at
            raise ForjaError(
                f"the exported tokenizer does not reproduce {sp_path} on {text[:60]!r}: SentencePiece "
                f"gives {ours[at : at + 8]}, the Hugging Face tokenizer {theirs[at : at + 8]} from token "
                f"{at} on; this tokenizer cannot be exported exactly"
            )
    return len(probes)


def user_defined_symbols(sp_path: str | os.PathLike) -> list[str]:
    return [p.piece for p in read_sp_proto(sp_path).pieces if p.type == USER_DEFINED]


# --------------------------------------------------------------------------- export


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as e:
        raise ForjaError(
            f"exporting to Hugging Face needs the `{module}` package: install the extra with "
            "`pip install 'forja[hf]'`"
        ) from e


def _file_records(folder: Path) -> dict[str, dict[str, Any]]:
    return {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != EXPORT_MANIFEST
    }


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _probe_ids(sp_path: Path, eos_id: int, length: int) -> list[int]:
    """A real token sequence for comparing logits: EOS (the document start) then the probe texts."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_path))
    ids = [eos_id]
    while len(ids) < length:
        ids += sp.encode("\n".join(PROBE_TEXTS))
    return ids[:length]


@torch.no_grad()
def verify_export(folder: str | os.PathLike, model: torch.nn.Module, sp_path: str | os.PathLike) -> dict:
    """Load `folder` with the installed transformers and compare it with `model` (fp32, CPU).

    Token ids of AutoTokenizer (special tokens on, as tools call it) must equal SentencePiece's on the
    probe texts, and the logits of AutoModelForCausalLM must match ours within LOGITS_ATOL. Returns the
    figures; raises a ForjaError on any difference.
    """
    _require("transformers")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    hf_tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    n_texts = check_tokenizer(sp_path, lambda t: hf_tok(t, verbose=False)["input_ids"])
    hf = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).float().eval()
    cfg = model.cfg
    ids = torch.tensor([_probe_ids(Path(sp_path), hf.config.eos_token_id, cfg.max_seq_len)])
    device = next(model.parameters()).device
    ours = model.eval()(ids.to(device))[0].float().cpu()
    theirs = hf(ids).logits.float()
    diff = (ours - theirs).abs().max().item()
    if not diff <= LOGITS_ATOL:
        raise ForjaError(
            f"transformers' {hf.config.architectures[0]} computes different logits from the Forja model "
            f"(max difference {diff:.3g} > {LOGITS_ATOL}); the export was not written. Report this with "
            "your transformers version"
        )
    import transformers

    return {
        "transformers": transformers.__version__,
        "texts_compared": n_texts,
        "logits_max_abs_diff": diff,
        "tokens_compared": ids.shape[1],
    }


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

    _require("tokenizers")
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
        _write_json(tmp / "config.json", hf_config(cfg, bos_id=tok.eos_id, eos_id=tok.eos_id))
        _write_json(
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
            "tokenizer": {"model_type": _sp_model_type(tok.path), "bos_is_eos": True, "eos_id": tok.eos_id},
            "verification": verification,
            "files": _file_records(tmp),
        }
        _write_json(tmp / EXPORT_MANIFEST, manifest)
    return {**manifest, "out": str(out)}


def _sp_model_type(sp_path) -> str:
    """ "bpe" or "unigram"; a unigram model gets a warning about very long texts (see docs/interop.md)."""
    if read_sp_proto(sp_path).trainer_spec.model_type == SP_BPE:
        return "bpe"
    log.warning(
        "%s is a unigram model: its Hugging Face tokenizer matches SentencePiece on texts of ordinary "
        "length, but on very long texts (tens of thousands of characters in one call) SentencePiece's "
        "float32 lattice can break near-ties differently; see docs/interop.md",
        sp_path,
    )
    return "unigram"


# --------------------------------------------------------------------------- import

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
