"""ANLS, the Average Normalized Levenshtein Similarity of DocVQA (Biten et al., ICCV 2019).

Reference: the Robust Reading Competition's evaluation script for DocVQA /
InfographicVQA, as copied into Qwen-VL's infographicsvqa_eval.py and lmms-eval's
`anls` metric. Per question, for each ground-truth answer:
  distance  Levenshtein between " ".join(s.strip().lower().split()) of both strings;
  length    max(len(answer.upper()), len(prediction.upper())) of the *raw* strings
            (the reference normalises for the distance but not for the length);
  value     distance / length, or 0.0 when length is 0.
Then s = 1 - min(values), and s = 0 when s < threshold (0.5). So a normalised
distance of exactly 0.5 scores 0.5 here, where the paper's formula gives 0.
"""
from __future__ import annotations


def levenshtein(a: str, b: str) -> int:
    if len(a) > len(b):
        a, b = b, a
    prev = list(range(len(a) + 1))
    for j, cb in enumerate(b, 1):
        cur = [j]
        for i, ca in enumerate(a, 1):
            cur.append(prev[i - 1] if ca == cb else 1 + min(prev[i - 1], prev[i], cur[-1]))
        prev = cur
    return prev[-1]


def _norm(s: str) -> str:
    return " ".join(s.strip().lower().split())


def anls(prediction: str, answers: list[str], threshold: float = 0.5) -> float:
    if not answers:
        raise ValueError("ANLS needs at least one answer")
    det = _norm(prediction)
    values = []
    for answer in answers:
        length = max(len(answer.upper()), len(prediction.upper()))
        values.append(0.0 if length == 0 else levenshtein(_norm(answer), det) / length)
    score = 1 - min(values)
    return 0.0 if score < threshold else score
