"""The export's self-check: the folder loaded by the installed transformers must give SentencePiece's
ids on the probe texts and the Forja model's logits on a probe sequence."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from forja.hf.files import require
from forja.hf.tokenizer import PROBE_TEXTS, check_tokenizer
from lm.errors import ForjaError

LOGITS_ATOL = 1e-4  # the export's self-check: fp32 logits of ours and transformers' must agree this well


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
    require("transformers")
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
