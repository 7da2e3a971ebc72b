"""Tokenize: the clean corpus in, a token folder out (a SentencePiece model and token shards).

    IN/manifest.json, IN/part-*.parquet (doc_id, text, ...)    the clean stage's output
    OUT/manifest.json                                         stage manifest + token-folder fields
    OUT/tokenizer.model                                       the SentencePiece model
    OUT/train-00000.bin ... OUT/val-00000.bin ...             token shards (lm/data.py format)

Three steps, each callable on its own so an orchestrator can map the middle one over the parts:

1. `train_tokenizer` (whole corpus) trains SentencePiece on a bounded, seeded sample streamed from
   the parts (or `reuse_tokenizer` copies an existing model, to continue training on new data).
2. `encode_part` (one per input part) encodes that part into one raw token file per split.
3. `finalize` (whole corpus) cuts those files into shards of at most `shard_tokens` tokens and
   writes the manifest last. `run_tokenize` composes the three and publishes the folder atomically.

Design choices, and why:

- Train/val split by a hash of (doc_id, chunk index), never by position: a document keeps its split
  when new data arrives, so a model that continues training never trains on what it was validated on.
- Documents longer than `chunk_bytes` are cut into chunks at blank lines (then lines, then bytes)
  and each chunk is split on its own: a corpus of one big file still gets a validation split.
  Chunking depends only on the text, so keep `chunk_bytes` fixed to keep the split stable.
- EOS ends every contiguous piece of a document in a split: a whole document, or a run of its
  chunks cut short where a neighbouring chunk went to the other split. It marks "the text does
  not continue here", both between documents and across holes left by the split.
- The tokenizer round-trips text exactly (identity normalisation, whitespace kept, no dummy
  prefix) and has "\\n" as a piece of its own: a language model must be able to write newlines,
  and because SentencePiece segments the text between user-defined symbols independently,
  encoding chunks cut after a newline gives the same tokens as encoding the whole document.
- SentencePiece silently skips training lines longer than `max_sentence_length`; we cut such lines
  into pieces, count them and warn instead.
- Encoding uses SentencePiece's own threads (`encode(list, num_threads=...)` releases the GIL),
  one batch in flight while this thread reads, chunks and writes the batches around it.
  `num_threads` never changes the output; `train_threads` can (unigram sums in per-thread order),
  so it is a fixed number rather than "all cores", and tokenizer.model is reproducible across machines.

The package, by concern (each step is callable on its own, as above):

    config.py     TokenizeConfig, and the stage's fixed names (splits, special pieces)
    split.py      chunking long documents at paragraphs; split_of, the hash that picks a chunk's split
    parts.py      reading the clean stage's output: list_parts and the documents of a part
    tokenizer.py  step 1: train_tokenizer, reuse_tokenizer; train_mixture_tokenizer (one model for
                  the sources of a weighted mixture, sampled by weight; each is then tokenized
                  with it as a reused tokenizer)
    encode.py     step 2: encode_part
    shards.py     step 3: finalize
    stage.py      the stage declared once (tasks/stage.py runs it); run_tokenize
"""

from tasks.common import StageError
from tasks.tokenize.config import TokenizeConfig
from tasks.tokenize.encode import encode_part
from tasks.tokenize.parts import list_parts
from tasks.tokenize.shards import finalize
from tasks.tokenize.split import chunk_text, split_of
from tasks.tokenize.stage import run_tokenize
from tasks.tokenize.tokenizer import reuse_tokenizer, train_mixture_tokenizer, train_tokenizer

__all__ = [
    "StageError",
    "TokenizeConfig",
    "chunk_text",
    "encode_part",
    "finalize",
    "list_parts",
    "reuse_tokenizer",
    "run_tokenize",
    "split_of",
    "train_mixture_tokenizer",
    "train_tokenizer",
]
