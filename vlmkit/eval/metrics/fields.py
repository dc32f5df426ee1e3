"""Field-level precision, recall and F1 for JSON extraction (receipts, forms).

Ground truth and prediction are JSON. Every scalar leaf is a field, named by its
path ("total", "items[].price"). Per field:
  equal value                  true positive
  value where the truth has none   false positive
  truth value missing / null   false negative
  wrong value                  both (a false positive and a false negative)
A truth of null asks for nothing: a null or missing prediction there counts nothing.

Lists are matched element to element before comparing: greedily, the pair with the
most equal leaves first (ties to the lower truth index, then the lower prediction
index), and only pairs sharing at least one equal leaf; unmatched elements count
all their leaves as missed or spurious. A list of objects also gets item-level
counts: an item is right only if every leaf of it is right.

Values: numbers compare numerically (so "12.50", "$12.50" and 12.5 are equal; to
1e-6), booleans exactly, strings case-insensitively with whitespace collapsed.
A prediction that is not JSON (after trying the first "{...}" span, so code fences
and chatter around the object are allowed) predicts nothing.
"""
from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field

_MISSING = object()
_NUMBER = re.compile(r"^[+-]?[$€£¥]?\s*(\d[\d,]*\.?\d*|\.\d+)$")


@dataclass
class FieldCounts:
    # path -> [tp, fp, fn]
    fields: dict = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0]))
    items: dict = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0]))

    def add(self, other: "FieldCounts") -> None:
        for mine, theirs in ((self.fields, other.fields), (self.items, other.items)):
            for k, (tp, fp, fn) in theirs.items():
                c = mine[k]
                c[0] += tp
                c[1] += fp
                c[2] += fn

    def totals(self) -> tuple[int, int, int]:
        tp = sum(c[0] for c in self.fields.values())
        fp = sum(c[1] for c in self.fields.values())
        fn = sum(c[2] for c in self.fields.values())
        return tp, fp, fn


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall, F1; an empty truth with an empty prediction is perfect."""
    if tp + fp + fn == 0:
        return 1.0, 1.0, 1.0
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def parse_json(text: str):
    """The JSON value in `text`, or _MISSING."""
    for candidate in (text, _brace_span(text)):
        if candidate:
            try:
                return json.loads(candidate)
            except (json.JSONDecodeError, ValueError):
                pass
    return _MISSING


def _brace_span(text: str) -> str | None:
    start, end = text.find("{"), text.rfind("}")
    return text[start:end + 1] if 0 <= start < end else None


def _as_number(v):
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        m = _NUMBER.match(v.strip())
        if m:
            try:
                return float(m.group(1).replace(",", ""))
            except ValueError:
                return None
    return None


def values_equal(a, b) -> bool:
    na, nb = _as_number(a), _as_number(b)
    if na is not None and nb is not None:
        return math.isclose(na, nb, rel_tol=1e-9, abs_tol=1e-6)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, str) and isinstance(b, str):
        return " ".join(a.lower().split()) == " ".join(b.lower().split())
    return a == b


def _leaves(v, path: str) -> list[str]:
    """Paths of the non-null scalar leaves under v."""
    if isinstance(v, dict):
        return [p for k, x in v.items() for p in _leaves(x, _join(path, k))]
    if isinstance(v, list):
        return [p for x in v for p in _leaves(x, path + "[]")]
    return [] if v is None or v is _MISSING else [path or "."]


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def compare(gold, pred, path: str = "") -> FieldCounts:
    out = FieldCounts()
    _compare(gold, pred, path, out)
    return out


def _compare(gold, pred, path: str, out: FieldCounts) -> None:
    if isinstance(gold, dict):
        p = pred if isinstance(pred, dict) else {}
        if pred is not _MISSING and pred is not None and not isinstance(pred, dict):
            _spurious(pred, path, out)
        for k, g in gold.items():
            _compare(g, p.get(k, _MISSING), _join(path, k), out)
        for k, x in p.items():
            if k not in gold:
                _spurious(x, _join(path, k), out)
    elif isinstance(gold, list):
        _compare_lists(gold, pred if isinstance(pred, list) else [], path + "[]", out)
        if pred is not _MISSING and pred is not None and not isinstance(pred, list):
            _spurious(pred, path, out)
    elif gold is None:
        _spurious(pred, path, out)
    else:
        key = path or "."
        if pred is _MISSING or pred is None:
            out.fields[key][2] += 1
        elif isinstance(pred, (dict, list)):
            out.fields[key][2] += 1
            _spurious(pred, path, out)
        elif values_equal(gold, pred):
            out.fields[key][0] += 1
        else:
            out.fields[key][1] += 1
            out.fields[key][2] += 1


def _spurious(pred, path: str, out: FieldCounts) -> None:
    for p in _leaves(pred, path):
        out.fields[p][1] += 1


def _compare_lists(gold: list, pred: list, path: str, out: FieldCounts) -> None:
    candidates = {}
    for i, g in enumerate(gold):
        for j, p in enumerate(pred):
            c = compare(g, p, path)
            if c.totals()[0] > 0:
                candidates[(i, j)] = c
    used_g, used_p, chosen = set(), set(), []
    for (i, j), c in sorted(candidates.items(), key=lambda kv: (-kv[1].totals()[0], kv[0])):
        if i not in used_g and j not in used_p:
            used_g.add(i)
            used_p.add(j)
            chosen.append(c)
            out.add(c)
    for i, g in enumerate(gold):
        if i not in used_g:
            for p in _leaves(g, path):
                out.fields[p][2] += 1
    for j, p in enumerate(pred):
        if j not in used_p:
            _spurious(p, path, out)
    if any(isinstance(x, dict) for x in gold + pred):
        exact = sum(1 for c in chosen if c.totals()[1:] == (0, 0))
        counts = out.items[path]
        counts[0] += exact
        counts[1] += len(pred) - exact
        counts[2] += len(gold) - exact


def field_f1(prediction: str, answers: list[str]) -> FieldCounts:
    """Counts for one sample; the truth is answers[0], a JSON string."""
    return compare(json.loads(answers[0]), parse_json(prediction))
