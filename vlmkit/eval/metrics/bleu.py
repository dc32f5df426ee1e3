"""BLEU-1..4, equal to pycocoevalcap's Bleu(4) (BleuScorer with the "closest" reference length).

Inputs are tokenised strings, as for CIDEr (see cider.tokenize_caption). Kept from
the reference: clipped n-gram counts against the max count over references, the
closest reference length (ties to the shorter), smoothing constants tiny = 1e-15 on
matches and small = 1e-9 on guesses, and the brevity penalty exp(1 - 1/ratio) when
the hypothesis is shorter. The corpus score sums counts over all sentences; the
per-sentence scores apply the same formula to one sentence.
"""
from __future__ import annotations

import math

from .cider import ngram_counts

SMALL, TINY = 1e-9, 1e-15


def _cook(candidate: str, refs: list[str], n: int) -> dict:
    max_ref: dict = {}
    ref_lens = []
    for r in refs:
        ref_lens.append(len(r.split()))
        for ng, c in ngram_counts(r, n).items():
            max_ref[ng] = max(max_ref.get(ng, 0), c)
    test_len = len(candidate.split())
    correct = [0] * n
    for ng, c in ngram_counts(candidate, n).items():
        correct[len(ng) - 1] += min(max_ref.get(ng, 0), c)
    return {
        "testlen": test_len,
        "reflen": min((abs(l - test_len), l) for l in ref_lens)[1],
        "guess": [max(0, test_len - k + 1) for k in range(1, n + 1)],
        "correct": correct,
    }


def _score(correct, guess, testlen, reflen, n) -> list[float]:
    out, b = [], 1.0
    for k in range(n):
        b *= (float(correct[k]) + TINY) / (float(guess[k]) + SMALL)
        out.append(b ** (1.0 / (k + 1)))
    ratio = (testlen + TINY) / (reflen + SMALL)
    if ratio < 1:
        out = [x * math.exp(1 - 1 / ratio) for x in out]
    return out


def bleu(candidates: list[str], references: list[list[str]], n: int = 4) -> tuple[list[float], list[list[float]]]:
    """-> (corpus [BLEU-1..n], per sentence [[BLEU-1..n], ...])."""
    if len(candidates) != len(references):
        raise ValueError("one list of references per candidate")
    if not candidates:
        return [0.0] * n, []
    cooked = [_cook(c, refs, n) for c, refs in zip(candidates, references)]
    per = [_score(c["correct"], c["guess"], c["testlen"], c["reflen"], n) for c in cooked]
    total_correct = [sum(c["correct"][k] for c in cooked) for k in range(n)]
    total_guess = [sum(c["guess"][k] for c in cooked) for k in range(n)]
    corpus = _score(total_correct, total_guess, sum(c["testlen"] for c in cooked), sum(c["reflen"] for c in cooked), n)
    return corpus, per
