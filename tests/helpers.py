"""Test helpers: real token folders made by the real data stages from a piece of text."""

from __future__ import annotations

from pathlib import Path

from tasks.clean import CleanConfig, run_clean
from tasks.ingest import IngestConfig, run_ingest
from tasks.tokenize import TokenizeConfig, run_tokenize

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"


def shakespeare_text(n_bytes: int | None = None) -> str:
    text = SHAKESPEARE.read_text(encoding="utf-8")
    return text if n_bytes is None else text[:n_bytes]


def make_token_dir(text: str, out: Path, vocab_size: int = 512, val_fraction: float = 0.1) -> Path:
    """ingest (one document per blank-line paragraph) -> clean -> tokenize `text` into `out`."""
    work = out.parent / f"{out.name}-stages"
    work.mkdir(parents=True, exist_ok=True)
    (work / "corpus.txt").write_text(text, encoding="utf-8")
    run_ingest([str(work / "corpus.txt")], work / "ingest", IngestConfig(split="blank_line"))
    run_clean(work / "ingest", work / "clean", CleanConfig())
    run_tokenize(work / "clean", out, TokenizeConfig(vocab_size=vocab_size, val_fraction=val_fraction))
    return out
