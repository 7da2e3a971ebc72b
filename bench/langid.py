"""Language identification: lingua vs pycld2 (gcld3 when it installs), for accuracy and documents/s.

    python bench/langid.py [--docs 2000] [--chars 2000]

Accuracy: on the real sentences of bench/langid_samples.py (12 languages, 5 sentences each:
"sentences"), on one short phrase per language ("short"), and on documents of five sentences of
one language ("documents"). Speed: documents/s on `--docs` documents made of the samples (about
600 bytes each, languages mixed), and MB/s on real English pages (the docstrings of the standard library's
modules, cut to `--chars` characters, as the clean rule does), best of three passes.
Last, the decontaminate rule's UDF (tasks/clean/decontam.py) on the same documents and pages,
against an evaluation set of about 200 KB (docstrings, as a frozen set would be): MB/s.
The figures are recorded in bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from langid_samples import SAMPLES, SHORT

Detector = Callable[[list[str]], list[str]]


def pycld2_detector() -> Detector:
    import pycld2

    def detect(texts: list[str]) -> list[str]:
        out = []
        for t in texts:
            try:
                _, _, details = pycld2.detect(t)
                out.append(details[0][1])
            except pycld2.error:
                out.append("un")
        return out

    return detect


def lingua_detector(low_accuracy: bool) -> Detector:
    from lingua import LanguageDetectorBuilder

    b = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models()
    det = (b.with_low_accuracy_mode() if low_accuracy else b).build()

    def detect(texts: list[str]) -> list[str]:
        return [
            lang.iso_code_639_1.name.lower() if lang is not None else "un"
            for lang in det.detect_languages_in_parallel_of(texts)
        ]

    return detect


def gcld3_detector() -> Detector:
    import gcld3  # does not build here (no wheel for Python 3.11 + protobuf): reported as unavailable

    det = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=4000)
    return lambda texts: [det.FindLanguage(text=t).language for t in texts]


CANDIDATES: dict[str, Callable[[], Detector]] = {
    "pycld2": pycld2_detector,
    "lingua (high accuracy)": lambda: lingua_detector(False),
    "lingua (low accuracy)": lambda: lingua_detector(True),
    "gcld3": gcld3_detector,
}


def accuracy(detect: Detector, texts: list[str], want: list[str]) -> float:
    got = detect(texts)
    return sum(g == w for g, w in zip(got, want, strict=True)) / len(want)


def best_time(fn: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def english_pages(chars: int) -> list[str]:
    """The docstrings of the standard library's modules (what the python-docs source reads)."""
    import ast
    import sysconfig
    from pathlib import Path

    pages = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        if doc and len(doc) > 200:
            pages.append(doc[:chars])
    return pages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--chars", type=int, default=2000)
    args = ap.parse_args()

    sentences = [(s, lang) for lang, ss in SAMPLES.items() for s in ss]
    docs = [(" ".join(ss), lang) for lang, ss in SAMPLES.items()]
    mixed = [docs[i % len(docs)][0] for i in range(args.docs)]
    pages = english_pages(args.chars)
    page_mb = sum(len(p.encode()) for p in pages) / 1e6
    print(
        f"{len(sentences)} sentences, {len(SHORT)} short phrases, {len(SAMPLES)} languages; "
        f"{len(mixed)} documents of {sum(map(len, mixed)) // len(mixed)} chars; "
        f"{len(pages)} English pages ({page_mb:.1f} MB)"
    )
    print("| detector | sentences | short | documents | documents/s | pages MB/s |")
    print("|---|---|---|---|---|---|")
    for name, make in CANDIDATES.items():
        try:
            t0 = time.perf_counter()
            detect = make()
            detect(["warm up"])
            load = time.perf_counter() - t0
        except ImportError as e:
            print(f"| {name} | not installed ({e}) | | | | |")
            continue
        acc_s = accuracy(detect, [s for s, _ in sentences], [lang for _, lang in sentences])
        acc_short = accuracy(detect, list(SHORT.values()), list(SHORT))
        acc_d = accuracy(detect, [d for d, _ in docs], [lang for _, lang in docs])
        dps = len(mixed) / best_time(lambda d=detect: d(mixed))
        mbs = page_mb / best_time(lambda d=detect: d(pages))
        print(
            f"| {name} | {acc_s:.1%} | {acc_short:.1%} | {acc_d:.1%} | {dps:,.0f} | {mbs:.2f} | "
            f"(load {load:.1f} s)"
        )
    decontam_speed(mixed, args.chars)


def decontam_speed(mixed: list[str], chars: int) -> None:
    import pyarrow as pa

    from tasks.clean.decontam import EvalIndex

    evals, total = [], 0
    for page in english_pages(1 << 30):
        if total > 200_000:
            break
        evals.append(page)
        total += len(page.encode())
    t0 = time.perf_counter()
    index = EvalIndex.build(evals, [f"e{i}" for i in range(len(evals))], [False] * len(evals), 13)
    build = time.perf_counter() - t0
    docs = (mixed + english_pages(chars)) * 4
    mb = sum(len(d.encode()) for d in docs) / 1e6
    batches = [pa.array(docs[i : i + 2048], pa.string()) for i in range(0, len(docs), 2048)]
    hits = sum(index.overlap(b).is_valid().true_count for b in batches)
    dt = best_time(lambda: [index.overlap(b) for b in batches])
    print(
        f"decontaminate: {len(evals)} eval texts ({total / 1e3:.0f} KB, {len(index.hashes):,} 13-grams, "
        f"index built in {build:.2f} s); {len(docs):,} documents ({mb:.1f} MB, {hits} sharing a 13-gram): "
        f"{len(docs) / dt:,.0f} documents/s, {mb / dt:.1f} MB/s"
    )


if __name__ == "__main__":
    main()
