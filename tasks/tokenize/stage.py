"""The tokenize stage declared once (tasks/stage.py runs it, from the CLI and from the flows):

    plan       train the tokenizer into the staging folder (or copy the one given), list the parts
    run_shard  encode one part of the clean output (map this)
    write      cut the parts' tokens into train/val shards and describe them in the manifest

Its key covers the clean digest, the config, a reused tokenizer's sha256, and the code it runs:
this package, lm/data.py (the shard format it writes) and lm/tokenizer.py.
"""

from __future__ import annotations

import logging
from typing import Any

from lm.fileio import atomic_write_json, read_json, sha256_file
from tasks.stage import Stage, StageRun, register, run_stage
from tasks.tokenize.config import STAGE, UPSTREAM, TokenizeConfig
from tasks.tokenize.encode import encode_part
from tasks.tokenize.parts import list_parts
from tasks.tokenize.shards import finalize
from tasks.tokenize.tokenizer import reuse_tokenizer, train_tokenizer

log = logging.getLogger("forja.tokenize")

TOKENIZER_RECORD = "tokenizer.json"  # in the staging folder's work/: what plan made, for write


@register
class TokenizeStage(Stage):
    name = STAGE
    config_model = TokenizeConfig
    upstream_stage = UPSTREAM
    code = ("tasks.tokenize", "lm.data", "lm.tokenizer")

    def extra_inputs(self, config: TokenizeConfig) -> dict[str, Any]:
        tok = config.tokenizer
        return {"tokenizer_sha256": sha256_file(tok) if tok is not None and tok.is_file() else None}

    def plan(self, run: StageRun) -> list[dict[str, Any]]:
        cfg: TokenizeConfig = run.config
        parts = list_parts(run.inputs)
        if cfg.tokenizer is not None:
            tok = reuse_tokenizer(cfg.tokenizer, run.staging)
        else:
            tok = train_tokenizer(run.inputs, run.staging, cfg)
        atomic_write_json(run.staging / "work" / TOKENIZER_RECORD, tok)
        return [{"index": i, "part": str(p), "tokenizer": tok["path"]} for i, p in enumerate(parts)]

    def run_shard(self, shard: dict[str, Any], work: str, config: dict[str, Any]) -> dict[str, Any]:
        return encode_part(shard["part"], shard["tokenizer"], work, TokenizeConfig.model_validate(config))

    def write(self, run: StageRun, results: list[dict[str, Any]]) -> dict[str, Any]:
        tok = read_json(run.staging / "work" / TOKENIZER_RECORD)
        return finalize(run.inputs, run.staging, tok, results, run.config)

    def summary(self, manifest: dict[str, Any]) -> str:
        c, splits = manifest["counts"], manifest["splits"]
        return (
            f"tokenized {c['docs']:,} docs ({c['bytes'] / 1e6:.1f} MB) into {c['tokens']:,} tokens "
            f"(train {splits['train']['tokens']:,}, val {splits['val']['tokens']:,})"
        )


def run_tokenize(in_dir, out, config: TokenizeConfig | None = None) -> dict[str, Any]:
    """The whole stage into OUT (what `forja tokenize` does); returns the manifest. OUT already
    holding the output of the same key is returned as it is."""
    return run_stage(STAGE, in_dir, out, config)
