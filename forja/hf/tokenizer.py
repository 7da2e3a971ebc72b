"""The tokenizer of an exported folder: the SentencePiece model rebuilt as a `tokenizers` tokenizer
that gives the same ids, its tokenizer_config.json, and the probe texts that check it."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, NoReturn

from forja.hf.files import SP_MODEL, write_json
from lm.errors import ForjaError

log = logging.getLogger("forja.hf")

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
        # whether a space is put before the text: llama.cpp's converter reads this (a GGUF without it
        # gets llama.cpp's default, a space, and tokenizes every text as " " + text)
        "add_prefix_space": bool(proto.normalizer_spec.add_dummy_prefix),
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
        write_json(folder / name, content)
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
    """The strings the model always keeps as one piece, in id order."""
    return [p.piece for p in read_sp_proto(sp_path).pieces if p.type == USER_DEFINED]


def sp_model_type(sp_path) -> str:
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
