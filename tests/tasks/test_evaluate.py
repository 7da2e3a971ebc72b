"""The evaluation stage: the frozen evaluation set and the figures a model is judged by."""

import json
import math

import numpy as np
import pytest
import sentencepiece as spm
import torch
from helpers import make_token_dir, shakespeare_text
from support import small_configs, torch_threads

from lm.checkpoint import load_for_inference
from lm.train import train
from tasks.common import StageError
from tasks.evaluate import (
    EvalConfig,
    evaluate_checkpoint,
    freeze_eval_set,
    load_eval_texts,
    sample_texts,
    segments,
)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return make_token_dir(shakespeare_text(80_000), tmp_path_factory.mktemp("t") / "tokens", vocab_size=512)


def test_segments_split_at_eos():
    parts = segments(np.array([5, 6, 2, 7, 2, 2, 8, 9, 2]), eos_id=2)
    assert [p.tolist() for p in parts] == [[5, 6], [7], [8, 9]]


def test_frozen_set_is_the_validation_text_and_never_changes(tokens, tmp_path):
    m = freeze_eval_set(tokens, tmp_path / "eval", EvalConfig(max_bytes=5_000))
    texts, digest = load_eval_texts(tmp_path / "eval")
    assert digest == m["digest"] and 0 < sum(len(t.encode()) for t in texts) <= 5_000 + len(
        texts[-1].encode()
    )
    corpus = shakespeare_text(80_000)
    assert all(t in corpus for t in texts)  # decoded validation pieces are verbatim text of the corpus
    before = (tmp_path / "eval" / "eval.jsonl").read_bytes()
    again = freeze_eval_set(tokens, tmp_path / "eval", EvalConfig(max_bytes=50_000))  # a later run
    assert again["digest"] == digest and (tmp_path / "eval" / "eval.jsonl").read_bytes() == before


def test_an_explicit_eval_text_is_used_as_given(tokens, tmp_path):
    f = tmp_path / "held-out.txt"
    f.write_text("O Romeo, Romeo! wherefore art thou Romeo?\n")
    freeze_eval_set(tokens, tmp_path / "eval", EvalConfig(eval_text=f))
    assert load_eval_texts(tmp_path / "eval")[0] == [f.read_text()]
    with pytest.raises(StageError, match="not a file"):
        freeze_eval_set(tokens, tmp_path / "other", EvalConfig(eval_text=tmp_path / "missing.txt"))


@torch.no_grad()
def nats_by_hand(model, ids: list[int], seq_len: int) -> float:
    """-ln p of every target ids[1:], one forward pass per target, from the context the method
    gives it: targets are scored seq_len at a time, and a target in the block ending at target e
    sees the seq_len tokens before e (fewer at the start), up to itself."""
    n, total = len(ids) - 1, 0.0
    for j in range(1, n + 1):
        end = min((j - 1) // seq_len * seq_len + seq_len, n)  # the last target of j's block
        context = ids[max(0, end - seq_len) : j]
        logits, _ = model(torch.tensor([context]))
        total -= torch.log_softmax(logits[0, -1].double(), -1)[ids[j]].item()
    return total


def test_evaluate_checkpoint_sums_nats_over_documents(tokens, tmp_path):
    model, cfg = small_configs(max_steps=10)
    train(model, cfg, tokens, tmp_path / "run")
    freeze_eval_set(tokens, tmp_path / "eval", EvalConfig(max_bytes=1_000))
    ev = evaluate_checkpoint(tmp_path / "run", tmp_path / "eval")
    texts = [json.loads(line)["text"] for line in (tmp_path / "eval" / "eval.jsonl").read_text().splitlines()]
    assert texts == load_eval_texts(tmp_path / "eval")[0]
    loaded = load_for_inference(tmp_path / "run")
    loaded.model.eval()
    sp = spm.SentencePieceProcessor(model_file=str(loaded.tokenizer_path))
    docs = [[sp.eos_id(), *sp.encode(t)] for t in texts]  # each document from a start-of-document EOS
    assert ev["eval_tokens"] == sum(len(d) - 1 for d in docs)
    assert ev["eval_bytes"] == sum(len(t.encode("utf-8")) for t in texts)
    with torch_threads(1):  # hundreds of tiny forward passes: one thread, no OpenMP hand-offs
        total = sum(nats_by_hand(loaded.model, d, 32) for d in docs)
    assert ev["eval_loss"] == pytest.approx(total / ev["eval_tokens"], rel=1e-5)
    assert ev["eval_bpb"] == pytest.approx(total / math.log(2) / ev["eval_bytes"], rel=1e-5)
    assert ev["eval_perplexity"] == pytest.approx(math.exp(total / ev["eval_tokens"]), rel=1e-5)
    samples = sample_texts(tmp_path / "run", EvalConfig(prompts=["KING"], max_new_tokens=5))
    assert samples[0]["text"].startswith("KING")
    json.dumps(ev)  # a task result: JSON-able
