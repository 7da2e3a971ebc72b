"""Downstream multiple-choice tasks: built from held-out text, scored the harness's way, and a model
that learned something scores above one that did not.

The comparison with lm-evaluation-harness itself, on the Hugging Face export, is in tests/test_hf.py.
"""

import dataclasses
import re

import pytest
import torch
from helpers import make_token_dir, shakespeare_text
from support import small_configs

from lm import downstream as ds
from lm.checkpoint import load_for_inference
from lm.models import build_model
from lm.tokenizer import Tokenizer
from lm.train import train
from tasks.evaluate import EvalConfig, freeze_eval_set, load_eval_texts


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """A quarter of 200 kB of tinyshakespeare held out: the frozen evaluation set's documents."""
    root = tmp_path_factory.mktemp("downstream")
    tokens = make_token_dir(shakespeare_text(200_000), root / "tokens", vocab_size=512, val_fraction=0.25)
    freeze_eval_set(tokens, root / "eval", EvalConfig())
    return tokens, load_eval_texts(root / "eval")[0]


def test_tasks_are_built_deterministically_from_the_held_out_documents(held_out):
    _, texts = held_out
    tasks = ds.build_tasks(texts, seed=0, max_items=60)
    assert tasks == ds.build_tasks(texts, seed=0, max_items=60)  # the same questions for every model
    assert tasks != ds.build_tasks(texts, seed=1, max_items=60)
    assert set(tasks) == set(ds.TASKS) and all(len(items) == 60 for items in tasks.values())
    for task, items in tasks.items():
        for it in items:
            assert len(it.choices) == ds.K == len(set(it.choices)) and 0 <= it.gold < ds.K
            gold = it.choices[it.gold]
            assert any(it.context + gold in t for t in texts), (task, it)  # the true text, held out
    for it in tasks["continuation"]:  # the other endings come from other documents
        own = next(t for t in texts if it.context + it.choices[it.gold] in t)
        others = [c for i, c in enumerate(it.choices) if i != it.gold]
        assert all(c not in own for c in others) and all(any(c in t for t in texts) for c in others)
    for it in tasks["cloze"]:  # words of about the same length, the true one ending a sentence
        assert all(re.fullmatch(r"[A-Za-z]{3,}", c) for c in it.choices)
        assert max(abs(len(c) - len(it.choices[it.gold])) for c in it.choices) <= 2
    for it in tasks["word_order"]:  # the same words in other orders
        words = sorted(it.choices[it.gold].split())
        assert all(sorted(c.split()) == words for c in it.choices)
    assert len({it.gold for it in tasks["continuation"]}) == ds.K  # the answer's place varies


def test_wilson_interval():
    assert ds.wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # the textbook example
    low, high = ds.wilson(0, 20)
    assert low == 0.0 and high == pytest.approx(0.1611, abs=1e-4)


def test_scores_are_the_log_likelihoods_of_the_choices_and_the_harness_s_argmax(held_out):
    tokens, texts = held_out
    tok = Tokenizer(tokens / "tokenizer.model")
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(small_configs()[0], vocab_size=tok.vocab_size, max_seq_len=64))
    items = ds.build_cloze(texts, seed=3, max_items=6) + ds.build_continuation(texts, seed=3, max_items=6)
    pairs = [(it.context, c) for it in items for c in it.choices]
    lls = ds.loglikelihoods(model, tok, pairs, 64, batch_size=5)  # batched, padded, sorted
    model.eval()
    for (context, choice), ll in zip(pairs, lls, strict=True):  # one sequence at a time, by hand
        ctx, cont = ds.encode_pair(tok, context, choice)
        assert tok.decode(ctx + cont) == context + choice
        ids = (ctx + cont)[-65:]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0][0], -1)
        want = sum(logp[len(ids) - 1 - len(cont) + i, t].item() for i, t in enumerate(cont))
        assert ll == pytest.approx(want, abs=1e-4)
    scores = ds.score_items(model, tok, items, 64)
    acc = acc_norm = 0
    for i, it in enumerate(items):
        ll = lls[i * ds.K : (i + 1) * ds.K]
        acc += max(range(ds.K), key=lambda j: ll[j]) == it.gold
        acc_norm += max(range(ds.K), key=lambda j: ll[j] / len(it.choices[j])) == it.gold
    assert scores["acc"] == acc / len(items) and scores["acc_norm"] == acc_norm / len(items)
    assert scores["n"] == len(items) and scores["chance"] == 1 / ds.K
    assert (scores["acc_ci95_low"], scores["acc_ci95_high"]) == ds.wilson(acc, len(items))
    with pytest.raises(ds.DoesNotFit, match="does not fit the model's context of 4 tokens"):
        ds.loglikelihoods(model, tok, pairs[-1:], 4)


@pytest.mark.slow
def test_accuracy_rises_from_a_model_at_initialisation_to_a_trained_one(held_out, tmp_path):
    tokens, texts = held_out
    tok = Tokenizer(tokens / "tokenizer.model")
    model_cfg, train_cfg = small_configs(
        max_steps=250, lr=1e-2, eval_every=0, checkpoint_every=0, log_every=50
    )
    model_cfg = dataclasses.replace(model_cfg, max_seq_len=64)
    trained = load_for_inference(train(model_cfg, train_cfg, tokens, tmp_path / "run").checkpoint).model
    torch.manual_seed(train_cfg.seed)
    initial = build_model(dataclasses.replace(model_cfg, vocab_size=tok.vocab_size))
    items = ds.build_word_order(texts, seed=0, max_items=150)
    before = ds.score_items(initial, tok, items, 64)
    after = ds.score_items(trained, tok, items, 64)
    assert after["acc_norm"] > before["acc_norm"] + 0.1, (before, after)
    assert after["acc_norm_ci95_low"] > after["chance"], after
