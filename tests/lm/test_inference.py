"""Evaluation and generation of a trained model, through the library and the `forja` command."""

import json
import math
import subprocess
import sys

import pytest
import torch
from support import small_configs

from lm.checkpoint import load_for_inference
from lm.evaluate import evaluate_text, token_nats
from lm.generate import filter_logits, generate, sample_next
from lm.tokenizer import Tokenizer
from lm.train import train


@pytest.fixture(scope="module")
def run_dir(token_dir, tmp_path_factory):
    model, cfg = small_configs(max_steps=60)
    out = tmp_path_factory.mktemp("run")
    train(model, cfg, token_dir, out)
    return out


def test_eval_counts_every_token_once_and_bits_per_byte_is_nats_over_bytes(run_dir):
    loaded = load_for_inference(run_dir)
    tok = Tokenizer(loaded.tokenizer_path)
    text = "ROMEO:\nBut soft, what light through yonder window breaks? Café ☕\n" * 5
    r = evaluate_text(loaded.model, tok, text, seq_len=32)
    assert r.tokens == len(tok.encode(text))
    assert r.bytes == len(text.encode("utf-8")) > len(text)
    assert r.bits_per_byte == pytest.approx(r.total_nats / math.log(2) / r.bytes)
    assert r.loss == pytest.approx(r.total_nats / r.tokens) and r.perplexity == pytest.approx(
        math.exp(r.loss)
    )
    # one window: the sum equals -log softmax at every gold next token, written out
    ids = [tok.eos_id, *tok.encode(text[:40])]
    assert len(ids) <= 32
    total_a, n_a = token_nats(loaded.model, [ids], seq_len=32)
    logits, _ = loaded.model(torch.tensor([ids[:-1]]))
    by_hand = -torch.log_softmax(logits[0].double(), -1)[
        torch.arange(len(ids) - 1), torch.tensor(ids[1:])
    ].sum()
    assert n_a == len(ids) - 1 and total_a == pytest.approx(by_hand.item(), rel=1e-5)


def test_every_token_is_scored_with_the_longest_context_the_model_allows(run_dir):
    """Texts longer than a context, the windows of lm-evaluation-harness's loglikelihood_rolling:
    targets are scored seq_len at a time, and a window's input is the seq_len tokens before its last
    target, so the last, partial window (targets 17-20 here) reads from token 12 on, not from 16.
    Each target's -log p is computed one token at a time from its context, by hand."""
    model = load_for_inference(run_dir).model
    seq_len = 8
    ids = [3, *range(10, 30)]  # 20 targets: windows of 8, 8 and a last, partial one of 4
    window_start = {**dict.fromkeys(range(1, 9), 0), **dict.fromkeys(range(9, 17), 8)}
    window_start |= dict.fromkeys(range(17, 21), 12)  # 20 - 8: a full context for the last window
    by_hand = 0.0
    for j in range(1, len(ids)):
        context = ids[window_start[j] : j]
        logits, _ = model(torch.tensor([context]))
        by_hand -= torch.log_softmax(logits[0, -1].double(), -1)[ids[j]].item()
    total, n = token_nats(model, [ids, ids[:5]], seq_len=seq_len)
    short = -sum(
        torch.log_softmax(model(torch.tensor([ids[:4]]))[0][0].double(), -1)[i, ids[i + 1]].item()
        for i in range(4)
    )
    assert n == 20 + 4
    assert total == pytest.approx(by_hand + short, rel=1e-5)


def test_generation_is_seeded_greedy_is_top_k_1_and_eos_stops(run_dir):
    m = load_for_inference(run_dir).model
    prompt = [5, 17, 42]
    a = generate(m, prompt, 20, temperature=1.0, seed=7)
    assert a == generate(m, prompt, 20, temperature=1.0, seed=7)
    assert a != generate(m, prompt, 20, temperature=1.0, seed=8)
    greedy = generate(m, prompt, 20, temperature=0)
    assert greedy == generate(m, prompt, 20, temperature=1.0, top_k=1, seed=3)
    first_new = next(i for i in range(1, 20) if greedy[i] not in greedy[:i])  # stop at a token's 1st use
    assert generate(m, prompt, 20, temperature=0, eos_id=greedy[first_new]) == greedy[: first_new + 1]
    long = generate(m, prompt, 80, temperature=0)  # beyond max_seq_len=32: the window slides
    assert len(long) == 80 and long[:20] == greedy


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    kept = torch.isfinite(filter_logits(logits, top_p=0.7))[0].tolist()
    assert kept == [True, True, False, False]  # 0.5 < 0.7, so the 0.3 token is needed too
    assert torch.isfinite(filter_logits(logits, top_p=0.5))[0].tolist() == [True, False, False, False]
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits[0], 1.0, top_p=0.7, generator=g)) for _ in range(200)}
    assert draws == {0, 1}


def forja(*args):
    return subprocess.run(
        [sys.executable, "-m", "forja.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_eval_and_sample(run_dir, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("KING HENRY:\nOnce more unto the breach, dear friends, once more.\n")
    out = forja("eval", str(run_dir), "--text", str(text), "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["bytes"] == len(text.read_bytes())
    assert r["bits_per_byte"] == pytest.approx(r["total_nats"] / math.log(2) / r["bytes"])
    human = forja("eval", str(run_dir), "--text", str(text))
    assert "bits/byte" in human.stdout and "perplexity" in human.stdout
    s1 = forja("sample", str(run_dir), "--prompt", "KING", "--max-new-tokens", "12", "--seed", "3")
    s2 = forja("sample", str(run_dir), "--prompt", "KING", "--max-new-tokens", "12", "--seed", "3")
    assert s1.returncode == 0 and s1.stdout == s2.stdout and s1.stdout.startswith("KING")


def test_cli_errors_name_the_problem(token_dir, tmp_path):
    bad = forja("train", "--data", str(token_dir), "--out", str(tmp_path / "r"), "--set", "max_stepz=3")
    assert (
        bad.returncode == 2 and "unknown setting 'max_stepz'" in bad.stderr and "Traceback" not in bad.stderr
    )
    bad = forja("train", "--data", str(token_dir), "--out", str(tmp_path / "r"), "--set", "lr=-1")
    assert bad.returncode == 2 and "'lr'" in bad.stderr
    missing = forja("train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"))
    assert missing.returncode == 2 and "forja tokenize" in missing.stderr
    nothing = forja("eval", str(tmp_path / "nope"), "--text", str(tmp_path / "nope.txt"))
    assert nothing.returncode == 2 and "nope.txt" in nothing.stderr


def test_lm_never_imports_orchestration_or_tracking():
    code = (
        "import sys, lm, lm.train, lm.model, lm.lstm, lm.models, lm.evaluate, lm.generate, lm.checkpoint, lm.data;"
        "bad = [m for m in ('prefect', 'mlflow', 'duckdb', 'pyarrow') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
