"""Downstream evaluation: multiple-choice tasks built from held-out text, scored as
lm-evaluation-harness scores multiple choice.

The tasks are made deterministically (a seed) from texts the model never trained on (the fixed
evaluation set: validation documents), so every model of a dataset answers the same questions:

    continuation  a passage (up to CONTEXT_CHARS characters, cut at a word start), and K endings of
                  about CONTINUATION_CHARS characters: its true continuation and K-1 spans of
                  about the same length from other documents (from elsewhere in the only document).
    cloze         the text before the last word of a sentence, and K words: the true one and K-1
                  other words of about its length (within 2 characters) from the same document (from
                  the whole set when the document has too few).
    word_order    a passage as in `continuation`, and its true continuation among K-1 shuffles of
                  its own words (the same characters: what counts is the order, not the words).

An item is scored like lm-evaluation-harness's `output_type: multiple_choice` (lm_eval/api/task.py
and api/model.py, version 0.4.13), with `target_delimiter: ""`:

    ll[i]     = log p(choice[i] | context): the pair is encoded the harness's way (trailing
                whitespace of the context moves to the continuation; the continuation's tokens are
                those of encode(context + continuation) after the context's tokens), and the input
                is the last max_seq_len + 1 tokens (left-truncated), no BOS/EOS added
    acc       = [argmax_i ll[i] == gold]
    acc_norm  = [argmax_i ll[i] / len(choice[i]) == gold]    (length in characters)

Ties go to the first choice (numpy's argmax). Accuracies come with a 95% Wilson score interval and
the chance level 1/K. A model at initialisation is not always at chance: it prefers choices of
fewer tokens (in `word_order` the true order often tokenizes shorter), so compare against it too. `write_lm_eval_task` writes the same items as a task the harness reads from
local files, so both scorers can be compared on the same model.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

# The version of the task builder and scorer: figures made by another one are not comparable
# (the champion gate re-scores a champion whose figure carries another). Bump it on any change.
METHOD = "mc1"
K = 4  # choices per item
CONTEXT_CHARS = 256  # passage length of a continuation item (at most; the document's start ends it)
CONTINUATION_CHARS = 24  # continuation length (extended to the end of the word it cuts)
MIN_CONTEXT_CHARS = 48
TASKS = ("continuation", "cloze", "word_order")
WORD = re.compile(r"(?<![A-Za-z'])[A-Za-z]{3,}(?![A-Za-z'])")  # a whole word of letters
NON_SPACE = re.compile(r"\S")
SPACE = re.compile(r"\s")
SENTENCE_END = re.compile(r"(?<=\s)([A-Za-z]{3,})(?=[.!?](\s|$))")


class DoesNotFit(ValueError):
    """A choice has more tokens than the model's context holds."""


@dataclass(frozen=True)
class Item:
    context: str
    choices: tuple[str, ...]
    gold: int

    def to_dict(self) -> dict:
        return {**asdict(self), "choices": list(self.choices)}


def _rng(task: str, seed: int) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(f"{task}:{seed}".encode()).digest()[:8], "big"))


def _word_end(text: str, i: int) -> int:
    """The first whitespace at or after i (the end of the word i is in), or len(text)."""
    m = SPACE.search(text, i)
    return m.start() if m else len(text)


def _with_gold(rng: random.Random, context: str, gold: str, others: list[str]) -> Item:
    at = rng.randrange(K)
    return Item(context, (*others[:at], gold, *others[at:]), at)


def _span(text: str, start: int) -> str:
    """About CONTINUATION_CHARS characters from a word start, to the end of the word it cuts."""
    return text[start : _word_end(text, start + CONTINUATION_CHARS)]


def _windows(texts: list[str], starts: list[list[int]]) -> list[tuple[int, int, int]]:
    """(document, passage start, cut): passages one after another in each document, each cut at
    the last word start that keeps it within CONTEXT_CHARS and leaves room for a continuation."""
    windows = []
    for d, text in enumerate(texts):
        s = 0
        while True:
            lo = bisect.bisect_left(starts[d], s + MIN_CONTEXT_CHARS)
            hi = bisect.bisect_right(starts[d], min(s + CONTEXT_CHARS, len(text) - CONTINUATION_CHARS))
            if hi <= lo:
                break
            cut = starts[d][hi - 1]
            windows.append((d, s, cut))
            nxt = bisect.bisect_left(starts[d], cut + len(_span(text, cut)))
            if nxt == len(starts[d]):
                break
            s = starts[d][nxt]
    return windows


def build_continuation(texts: list[str], seed: int = 0, max_items: int = 200) -> list[Item]:
    """Passages and their true continuations; the other choices are spans of other documents."""
    starts = [[m.start() for m in re.finditer(r"\S+", t)] for t in texts]
    windows = _windows(texts, starts)
    rng = _rng("continuation", seed)
    chosen = rng.sample(windows, min(max_items, len(windows)))
    spans = [(d, w) for d, ws in enumerate(starts) for w in ws if w + CONTINUATION_CHARS <= len(texts[d])]
    items = []
    for d, s, cut in chosen:
        gold = _span(texts[d], cut)
        others: list[str] = []
        for _ in range(1000):
            od, w = rng.choice(spans)
            if od == d and (len(texts) > 1 or (w < cut + len(gold) and w + CONTINUATION_CHARS > s)):
                continue  # another document's span (the only document's: one outside the item)
            span = _span(texts[od], w)
            if span != gold and span not in others:
                others.append(span)
            if len(others) == K - 1:
                items.append(_with_gold(rng, texts[d][s:cut], gold, others))
                break
    return items


def build_cloze(texts: list[str], seed: int = 0, max_items: int = 200) -> list[Item]:
    """The text before a sentence's last word; the other choices are words of the same text."""
    vocab = [sorted({w.group() for w in WORD.finditer(t)}) for t in texts]
    every = sorted(set().union(*vocab)) if vocab else []
    candidates = []  # (document, context start, word start, word)
    for d, text in enumerate(texts):
        for m in SENTENCE_END.finditer(text):
            start = m.start(1)
            a = (
                0
                if start <= CONTEXT_CHARS
                else NON_SPACE.search(text, _word_end(text, start - CONTEXT_CHARS)).start()
            )
            if start - a >= MIN_CONTEXT_CHARS:
                candidates.append((d, a, start, m.group(1)))
    rng = _rng("cloze", seed)
    items = []
    for d, a, start, word in rng.sample(candidates, min(max_items, len(candidates))):
        pool = []  # words of about the gold word's length: of its document, else of the whole set
        for words in (vocab[d], every):
            pool = [w for w in words if w.lower() != word.lower() and abs(len(w) - len(word)) <= 2]
            if len({w.lower() for w in pool}) >= K - 1:
                break
        others: list[str] = []
        for w in rng.sample(pool, len(pool)):
            if w.lower() not in {o.lower() for o in others}:
                others.append(w)
            if len(others) == K - 1:
                items.append(_with_gold(rng, texts[d][a:start], word, others))
                break
    return items


def build_word_order(texts: list[str], seed: int = 0, max_items: int = 200) -> list[Item]:
    """Passages and their true continuations; the other choices are its words in other orders."""
    starts = [[m.start() for m in re.finditer(r"\S+", t)] for t in texts]
    rng = _rng("word_order", seed)
    items = []
    windows = _windows(texts, starts)
    for d, s, cut in rng.sample(windows, min(max_items, len(windows))):
        gold = _span(texts[d], cut)
        parts = re.split(r"(\s+)", gold)  # words at even positions, the whitespace between at odd
        words = parts[::2]
        others: list[str] = []
        for _ in range(100 if len(set(words)) >= 3 else 0):
            shuffled = rng.sample(words, len(words))
            text = "".join(w + sep for w, sep in zip(shuffled, [*parts[1::2], ""], strict=True))
            if text != gold and text not in others:
                others.append(text)
            if len(others) == K - 1:
                items.append(_with_gold(rng, texts[d][s:cut], gold, others))
                break
    return items


def build_tasks(texts: list[str], seed: int = 0, max_items: int = 200) -> dict[str, list[Item]]:
    return {
        "continuation": build_continuation(texts, seed, max_items),
        "cloze": build_cloze(texts, seed, max_items),
        "word_order": build_word_order(texts, seed, max_items),
    }


# ------------------------------------------------------------------ scoring


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's `_encode_pair` for a causal model (an empty context: EOS, its prefix token)."""
    if not context:
        return [tokenizer.eos_id], tokenizer.encode(continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx) :]


@torch.no_grad()
def loglikelihoods(
    model: torch.nn.Module, tokenizer, pairs: list[tuple[str, str]], max_len: int, batch_size: int = 32
) -> list[float]:
    """Sum of log p(continuation tokens | context) for each (context, continuation) pair."""
    device = next(model.parameters()).device
    model.eval()
    rows = []
    for context, continuation in pairs:
        ctx, cont = encode_pair(tokenizer, context, continuation)
        if not cont or len(cont) > max_len:
            raise DoesNotFit(
                f"a choice of {len(cont)} tokens does not fit the model's context of {max_len} tokens"
            )
        rows.append(((ctx + cont)[-(max_len + 1) :], len(cont)))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    out = [0.0] * len(rows)
    for b in range(0, len(order), batch_size):
        chunk = order[b : b + batch_size]
        width = max(len(rows[i][0]) for i in chunk) - 1
        x = torch.zeros(len(chunk), width, dtype=torch.long)
        for j, i in enumerate(chunk):
            ids = rows[i][0]
            x[j, : len(ids) - 1] = torch.tensor(ids[:-1])
        logits, _ = model(x.to(device))
        logp = F.log_softmax(logits.float(), dim=-1).cpu()
        for j, i in enumerate(chunk):
            ids, n = rows[i]
            targets = torch.tensor(ids[-n:])
            positions = torch.arange(len(ids) - 1 - n, len(ids) - 1)
            out[i] = logp[j, positions, targets].sum().item()
    return out


def wilson(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # ties: the first, as np.argmax


def score_items(model, tokenizer, items: list[Item], max_len: int, batch_size: int = 32) -> dict:
    """acc and acc_norm of the items, with 95% Wilson intervals, the chance level and the count."""
    pairs = [(it.context, c) for it in items for c in it.choices]
    lls = loglikelihoods(model, tokenizer, pairs, max_len, batch_size)
    hits = {"acc": 0, "acc_norm": 0}
    at = 0
    for it in items:
        ll = lls[at : at + len(it.choices)]
        at += len(it.choices)
        hits["acc"] += _argmax(ll) == it.gold
        hits["acc_norm"] += _argmax([v / len(c) for v, c in zip(ll, it.choices, strict=True)]) == it.gold
    n = len(items)
    out: dict[str, float] = {"n": n, "chance": 1.0 / K}
    for name, k in hits.items():
        low, high = wilson(k, n)
        out |= {name: k / max(n, 1), f"{name}_ci95_low": low, f"{name}_ci95_high": high}
    return out


def evaluate_downstream(
    model, tokenizer, texts: list[str], max_len: int, seed: int = 0, max_items: int = 200
) -> dict[str, float]:
    """Every task's figures as flat metrics: `downstream/<task>/<figure>` (names fixed across runs)."""
    out = {}
    for task, items in build_tasks(texts, seed, max_items).items():
        if items:
            scores = score_items(model, tokenizer, items, max_len)
            out |= {f"downstream/{task}/{k}": float(v) for k, v in scores.items()}
    return out


# ------------------------------------------------------------------ lm-evaluation-harness


def write_lm_eval_task(
    name: str, items: list[Item], folder: str | os.PathLike, cache_dir: str | os.PathLike | None = None
) -> Path:
    """The items as an lm-evaluation-harness task over a local JSON Lines file: `<name>.yaml` (run
    it with `lm_eval --include_path FOLDER --tasks NAME`). `cache_dir`: where `datasets` keeps its
    copy of the file (default: its own cache)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(it.to_dict(), ensure_ascii=False) + "\n" for it in items), "utf-8")
    yaml = folder / f"{name}.yaml"
    yaml.write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data.resolve()))}\n"
        + (f"  cache_dir: {json.dumps(str(Path(cache_dir).resolve()))}\n" if cache_dir else "")
        + "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: context\n"
        "doc_to_choice: choices\n"
        "doc_to_target: gold\n"
        'target_delimiter: ""\n'
        "metric_list:\n"
        "  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
        "  - {metric: acc_norm, aggregation: mean, higher_is_better: true}\n",
        encoding="utf-8",
    )
    return yaml
