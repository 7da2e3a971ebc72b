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

The package, by concern:

    architectures.py  which transformers class computes which Forja model; the refused combinations
    export.py         export_hf: config.json, the weights under transformers' names, forja.json
    tokenizer.py      the SentencePiece model rebuilt for `tokenizers`, its config files, probe texts
    verify.py         the export's self-check through the installed transformers
    importer.py       import_hf: a transformers folder read back into a Forja run folder
    files.py          the folder's file names and the helpers that write and record them
"""

from forja.hf.export import export_hf
from forja.hf.importer import import_hf
from forja.hf.tokenizer import build_hf_tokenizer, save_hf_tokenizer

__all__ = ["build_hf_tokenizer", "export_hf", "import_hf", "save_hf_tokenizer"]
