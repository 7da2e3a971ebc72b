"""Behaviour pinned across refactors: the digests of ingest, clean and tokenize and the sha256 of the
final weights of a short CPU run on a fixed corpus (the first 200,000 characters of tinyshakespeare).

The expected values were produced by the code before the stage refactor (issue #9) and are written
here by hand; a change to any of them must be explained in the commit that makes it. (Stop 21
changed clean's and so tokens' digest, not the weights: clean's config gained the language and
decontamination settings, its parts the `lang` and `lang_score` columns, its report the language
counts and the duplicates account; the text, the tokens and the trained weights are the same.)

The stage digests cover the source paths that ingest records, so the corpus is written at one fixed
path (under a lock, in case two runs of the suite share the machine).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import shakespeare_text
from support import small_configs

from lm.fileio import file_lock, sha256_file
from lm.train import train
from tasks.clean import CleanConfig, run_clean
from tasks.ingest import IngestConfig, run_ingest
from tasks.tokenize import TokenizeConfig, run_tokenize

PINNED = {
    "ingest": "1456de44bf7c101d07c69c6cee5dad03bf8215e3663a36a9c24c63f1be1c10e4",
    "clean": "03f4938c1d22c34f38568edd703a5232a7a3020f025f1bf2ba1f4599534ab3ab",
    "tokens": "13b1b178c2dcdc0e8730afbc09d2d853b26e773b5cce1343c1fbd65b794ad0a3",
    "weights": "897a6658d7861934150505e9b109785af9347fae68903768a51e6f9262b37f68",
}
ROOT = Path(tempfile.gettempdir()) / "forja-pinned-digests"


@pytest.mark.slow
def test_stage_digests_and_weights_are_pinned():
    with file_lock(Path(tempfile.gettempdir()) / "forja-pinned-digests.lock"):
        shutil.rmtree(ROOT, ignore_errors=True)
        ROOT.mkdir()
        try:
            (ROOT / "corpus.txt").write_text(shakespeare_text(200_000), encoding="utf-8")
            ingest = run_ingest([str(ROOT / "corpus.txt")], ROOT / "ingest", IngestConfig(split="blank_line"))
            clean = run_clean(ROOT / "ingest", ROOT / "clean", CleanConfig())
            tokens = run_tokenize(ROOT / "clean", ROOT / "tokens", TokenizeConfig(vocab_size=512))
            model, cfg = small_configs(
                max_steps=20, eval_every=10, eval_batches=2, checkpoint_every=10, keep_last=2, seed=0
            )
            result = train(model, cfg, ROOT / "tokens", ROOT / "run")
            got = {
                "ingest": ingest["digest"],
                "clean": clean["digest"],
                "tokens": tokens["digest"],
                "weights": sha256_file(Path(result.checkpoint) / "model.safetensors"),
            }
        finally:
            shutil.rmtree(ROOT, ignore_errors=True)
    assert got == PINNED
