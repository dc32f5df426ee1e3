"""CIDEr-D (Vedantam et al., CVPR 2015), equal to pycocoevalcap's CiderScorer.

Inputs are already tokenised strings (tokens split on whitespace); `tokenize_caption`
is our tokeniser for raw captions. pycocoevalcap tokenises with the Stanford
PTBTokenizer (Java), which we do not ship: ours lowercases and keeps words of
letters and digits (with inner hyphens or apostrophes, so "don't" stays whole where
PTB writes "do n't"), dropping all punctuation. Scores equal pycocoevalcap's on the
same token strings; on raw text they differ only where the tokenisers do.

The reference's arithmetic, kept: document frequencies come from the references
only; idf = log(#images) - log(max(1, df)); each n-gram order (1..4) is a tf-idf
vector compared by clipped cosine (min(hyp, ref) * ref over |hyp| |ref|) times the
Gaussian length penalty exp(-delta^2 / (2 sigma^2)), sigma = 6, where the reference's
"length" counts bigrams, not words. The four orders are averaged, divided by the
number of references, times 10. CIDEr is corpus-level: a single-image corpus scores 0.
"""
from __future__ import annotations

import math
import re
from collections import Counter

_WORD = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*")


def tokenize_caption(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def ngram_counts(sentence: str, n: int = 4) -> Counter:
    words = sentence.split()
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def cider_d(candidates: list[str], references: list[list[str]], n: int = 4, sigma: float = 6.0) -> tuple[float, list[float]]:
    """-> (corpus mean, one score per candidate)."""
    if len(candidates) != len(references):
        raise ValueError("one list of references per candidate")
    if not candidates:
        return 0.0, []
    refs_counts = [[ngram_counts(r, n) for r in refs] for refs in references]
    doc_freq: Counter = Counter()
    for refs in refs_counts:
        doc_freq.update({ng for counts in refs for ng in counts})
    log_images = math.log(float(len(candidates)))

    def to_vec(counts: Counter):
        vec = [dict() for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for ngram, tf in counts.items():
            k = len(ngram) - 1
            w = float(tf) * (log_images - math.log(max(1.0, doc_freq.get(ngram, 0.0))))
            vec[k][ngram] = w
            norm[k] += w ** 2
            if k == 1:  # the reference's "length" is the bigram count
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def sim(hyp, ref) -> list[float]:
        (vh, nh, lh), (vr, nr, lr) = hyp, ref
        delta = float(lh - lr)
        val = [0.0] * n
        for k in range(n):
            for ngram, w in vh[k].items():
                r = vr[k].get(ngram, 0.0)
                val[k] += min(w, r) * r
            if nh[k] != 0 and nr[k] != 0:
                val[k] /= nh[k] * nr[k]
            val[k] *= math.e ** (-(delta ** 2) / (2 * sigma ** 2))
        return val

    scores = []
    for cand, refs in zip(candidates, refs_counts):
        hyp = to_vec(ngram_counts(cand, n))
        total = [0.0] * n
        for ref in refs:
            total = [a + b for a, b in zip(total, sim(hyp, to_vec(ref)))]
        scores.append(sum(total) / n / len(refs) * 10.0)
    return sum(scores) / len(scores), scores
