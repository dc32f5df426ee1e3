"""Each metric against its reference: hand-checked fixtures, and pycocoevalcap itself for CIDEr-D and BLEU."""
import json
import math
import random
from pathlib import Path

import pytest

from vlmkit.eval.metrics import METRICS, evaluate
from vlmkit.eval.metrics.anls import anls, levenshtein
from vlmkit.eval.metrics.bleu import bleu
from vlmkit.eval.metrics.boxes import box_iou, iou, parse_box
from vlmkit.eval.metrics.cider import cider_d, tokenize_caption
from vlmkit.eval.metrics.fields import compare, field_f1, parse_json, prf
from vlmkit.eval.metrics.pope import pope_metrics, yes_no
from vlmkit.eval.metrics.relaxed import exact_match, relaxed_accuracy, relaxed_correctness
from vlmkit.eval.metrics.vqa import normalize_answer, process_punctuation, vqa_accuracy

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
VQA_CASES = json.loads((FIXTURES / "vqa_cases.json").read_text())


# ---- VQAv2 ----
@pytest.mark.parametrize("case", VQA_CASES, ids=[c["note"] for c in VQA_CASES])
def test_vqa_accuracy_hand_checked(case):
    assert vqa_accuracy(case["prediction"], case["answers"]) == pytest.approx(case["expected"], abs=1e-12)


def test_vqa_normalisation_steps():
    assert normalize_answer("Two dogs") == "2 dogs"
    assert normalize_answer("An apple, a pear!") == "apple pear"  # ", " deletes ','; '!' not beside a space becomes ' '
    assert process_punctuation("a/b") == "a b"
    assert process_punctuation("a / b") == "a  b"  # deleted, leaving both spaces
    assert normalize_answer("isnt it") == "isn't it"


def test_vqa_metric_averages_samples():
    res = evaluate("vqa", ["red", "cat"], [["red"] * 10, ["dog"] * 10])
    assert res.per_sample == [1.0, 0.0] and res.score == 0.5


# ---- ANLS ----
@pytest.mark.parametrize("pred,answers,expected", [
    ("Denver Broncos", ["Denver Broncos", "Denver R. Broncos"], 1.0),
    ("  denver   broncos ", ["Denver Broncos"], 1.0),  # lowercase, strip, whitespace collapsed
    ("12/15/89", ["12/15/88"], 1 - 1 / 8),
    ("Dear dr. Lobo", ["Dear Dr. Lobo", "Dr. Lobo"], 1.0),  # best answer wins
    ("abcd", ["abzz"], 0.5),  # normalised distance 0.5 exactly is kept (s < 0.5 is zeroed)
    ("abcde", ["abzzz"], 0.0),  # 1 - 3/5 = 0.4 < 0.5
    ("ab", ["a  b"], 0.75),  # distance on normalised "a b", length on raw "a  b" (4)
    ("", [""], 1.0),
    ("x", ["abc"], 0.0),
])
def test_anls(pred, answers, expected):
    assert anls(pred, answers) == pytest.approx(expected, abs=1e-12)


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("flaw", "lawn") == 2


# ---- relaxed accuracy and exact match ----
@pytest.mark.parametrize("target,pred,ok", [
    ("100", "104", True), ("100", "105", True), ("100", "106", False), ("100", "95", True), ("100", "94.9", False),
    ("50%", "0.51", True),  # "%" divides by 100
    ("0", "0.0", False),  # a zero target falls back to string equality
    ("0", "0", True),
    ("Yes", "yes", True), ("100", "about 100", False), ("-20", "-21", True),
])
def test_relaxed_correctness(target, pred, ok):
    assert relaxed_correctness(target, pred) is ok


def test_relaxed_takes_best_answer_and_exact_normalises():
    assert relaxed_accuracy("10", ["20", "10.4"]) == 1.0
    assert exact_match("Red.", ["red"]) == 1.0
    assert exact_match("dark  Red", ["dark red"]) == 1.0
    assert exact_match("red car", ["red"]) == 0.0


# ---- boxes ----
def test_boxes():
    assert parse_box("it is <box> 10, 20 ,300,400 </box>.") == (10, 20, 300, 400)
    assert parse_box("10,20,30,40") is None
    assert iou((0, 0, 100, 100), (0, 0, 100, 100)) == 1.0
    assert iou((0, 0, 100, 100), (50, 0, 150, 100)) == pytest.approx(1 / 3)
    assert iou((0, 0, 100, 100), (0, 0, 100, 50)) == 0.5
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((100, 0, 0, 100), (0, 0, 100, 100)) == 0.0  # x2 < x1: degenerate
    res = evaluate("iou", ["<box>0,0,100,100</box>", "<box>50,0,150,100</box>", "no box"],
                   [["<box>0,0,100,50</box>"], ["<box>0,0,100,100</box>"], ["<box>0,0,1,1</box>"]])
    assert res.per_sample == [1.0, 0.0, 0.0]  # hits at IoU >= 0.5 (0.5 counts)
    assert res.score == pytest.approx(1 / 3)
    assert res.extras["mean_iou"] == pytest.approx((0.5 + 1 / 3 + 0) / 3)
    assert box_iou("<box>0,0,100,100</box>", ["<box>500,500,600,600</box>", "<box>0,0,100,100</box>"]) == 1.0
    assert res.extras["boxed"] == pytest.approx(2 / 3)
    assert not {"centre_r_x", "centre_r_y", "width_r", "height_r"} & set(res.extras)  # 2 boxes are too few for an r


def test_box_placement_tells_rows_from_columns():
    """A model that finds the row but guesses the column: r = 1 down, about 0 across; IoU alone hides which."""
    truth_centres = [(170, 100), (500, 500), (900, 800), (800, 700), (800, 300), (450, 150)]
    refs = [[f"<box>{x - 50},{y - 50},{x + 50},{y + 50}</box>"] for x, y in truth_centres]
    guessed = [170, 800, 170, 800, 170, 800]
    preds = [f"<box>{g - 50},{y - 50},{g + 50},{y + 50}</box>" for g, (_, y) in zip(guessed, truth_centres)]
    extras = evaluate("iou", preds + ["I can't tell."], refs + [["<box>0,0,10,10</box>"]]).extras
    assert extras["boxed"] == pytest.approx(6 / 7)
    assert extras["centre_r_y"] == pytest.approx(1.0)
    assert extras["centre_r_x"] == pytest.approx(-0.0787, abs=1e-3)  # numpy.corrcoef on the same numbers
    assert "width_r" not in extras  # every width is 100 on both sides: undefined, left out rather than NaN


# ---- POPE ----
@pytest.mark.parametrize("text,label", [
    ("Yes, there is a dog.", "yes"), ("No, there is not.", "no"), ("There is no dog", "no"),
    ("I do not see one", "no"), ("Not at all", "yes"),  # "Not" is not in the reference's word list
    ("no.", "no"), ("yes. no", "yes"),  # only the first sentence counts
    ("nope", "yes"),
])
def test_pope_parse(text, label):
    assert yes_no(text) == label


def test_pope_metrics():
    stats = pope_metrics(["yes", "Yes, it is.", "no", "No.", "yes"], ["yes", "no", "no", "yes", "Yes"])
    assert (stats["tp"], stats["fp"], stats["tn"], stats["fn"]) == (2, 1, 1, 1)
    assert stats["accuracy"] == pytest.approx(0.6)
    assert stats["precision"] == pytest.approx(2 / 3) and stats["recall"] == pytest.approx(2 / 3)
    assert stats["f1"] == pytest.approx(2 / 3) and stats["yes_ratio"] == pytest.approx(0.6)
    res = evaluate("yesno", ["no", "no"], [["no"], ["yes"]])
    assert res.score == 0.5 and res.extras["precision"] == 0.0 and res.extras["yes_ratio"] == 0.0


# ---- JSON fields ----
GOLD = {"merchant": "Cafe", "date": "2024-01-02",
        "items": [{"name": "tea", "qty": 1, "unit_price": 2.5, "price": 2.5}, {"name": "cake", "qty": 2, "unit_price": 3, "price": 6}],
        "subtotal": 8.5, "tax": 0.85, "total": 9.35, "currency": "USD"}


def test_fields_counts_and_item_matching():
    pred = {"merchant": "cafe", "date": "2024-01-02",
            "items": [{"name": "Cake", "qty": "2", "unit_price": 3.0, "price": 6.5}, {"name": "tea", "qty": 1, "unit_price": "2.50", "price": "$2.50"}],
            "subtotal": 8.5, "total": "9.35", "currency": "USD", "note": "thanks"}
    c = compare(GOLD, pred)
    assert c.totals() == (12, 2, 2)  # fp: the wrong cake price and "note"; fn: the cake price and the missing tax
    assert c.fields["tax"] == [0, 0, 1]
    assert c.fields["items[].price"] == [1, 1, 1]
    assert c.items["items[]"] == [1, 1, 1]  # tea right, cake wrong
    text = "Here you go:\n```json\n" + json.dumps(pred) + "\n```"
    res = evaluate("json_f1", [text], [[json.dumps(GOLD)]])
    assert res.score == pytest.approx(12 / 14)
    assert res.extras["f1/total"] == 1.0 and res.extras["f1/tax"] == 0.0
    assert res.extras["item_f1/items[]"] == pytest.approx(0.5)


def test_fields_edge_cases():
    assert field_f1("not json at all", [json.dumps(GOLD)]).totals() == (0, 0, 14)
    assert compare({"a": None}, {"a": None}).totals() == (0, 0, 0)
    assert compare({"a": None}, {"a": 3}).totals() == (0, 1, 0)
    assert compare({"a": [1, 2, 2]}, {"a": [2, 1]}).totals() == (2, 0, 1)  # lists of scalars: a multiset
    assert compare({"a": {"b": 1}}, {"a": 5}).totals() == (0, 1, 1)
    assert prf(0, 0, 0) == (1.0, 1.0, 1.0)
    assert field_f1("{bad", ['{"a": 1}']).totals() == (0, 0, 1)  # unparsable: predicts nothing
    assert parse_json('x {"a": 1} y') == {"a": 1}


# ---- CIDEr-D and BLEU against pycocoevalcap ----
CAPTION_CASES = [
    ("a man riding a horse on a beach", ["a man rides a horse on the beach", "a person on a horse by the sea", "man riding horse"]),
    ("a cat", ["a cat sitting on a mat", "a small cat on a mat"]),
    ("", ["a red bus", "a bus on the street"]),  # empty candidate
    ("dog", ["dog", "a dog"]),  # one word: no bigrams, so the length penalty sees 0
    ("the the the the the", ["the cat", "a cat on the mat"]),  # clipping
    ("a red bus on the street", ["a red bus on the street", "a bus"]),  # identical to a reference
    ("two people playing frisbee in a park", ["two people play frisbee in the park", "people in a park", "a frisbee game"]),
]


def _coco(cands, refs):
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    gts = {i: list(r) for i, r in enumerate(refs)}
    res = {i: [c] for i, c in enumerate(cands)}
    cider, cider_per = Cider().compute_score(gts, res)
    bleus, bleu_per = Bleu(4).compute_score(gts, res, verbose=0)
    return cider, list(cider_per), bleus, bleu_per


def _random_corpus(seed: int):
    rng = random.Random(seed)
    vocab = "a the cat dog sat on mat red blue big small man woman riding horse street".split()
    sent = lambda lo: " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, 12)))
    n = rng.randint(2, 9)
    return [sent(0) for _ in range(n)], [[sent(1) for _ in range(rng.randint(1, 5))] for _ in range(n)]


@pytest.mark.parametrize("corpus", ["fixtures"] + [f"random-{s}" for s in range(8)])
def test_cider_and_bleu_equal_pycocoevalcap(corpus):
    cands, refs = ([c for c, _ in CAPTION_CASES], [r for _, r in CAPTION_CASES]) if corpus == "fixtures" else _random_corpus(int(corpus.split("-")[1]))
    ref_cider, ref_cider_per, ref_bleu, ref_bleu_per = _coco(cands, refs)
    score, per = cider_d(cands, refs)
    assert abs(score - ref_cider) <= 1e-9
    assert max(abs(a - b) for a, b in zip(per, ref_cider_per)) <= 1e-9
    corpus_bleu, per_bleu = bleu(cands, refs)
    assert max(abs(a - b) for a, b in zip(corpus_bleu, ref_bleu)) <= 1e-9
    for k in range(4):
        assert max(abs(p[k] - r) for p, r in zip(per_bleu, ref_bleu_per[k])) <= 1e-9


def test_cider_metric_tokenises_then_scores():
    raw = ["A man, riding a horse!", "A cat."]
    refs = [["A man rides a horse.", "Man riding horse"], ["A cat sitting on a mat.", "A small cat."]]
    res = METRICS["cider"](raw, refs)
    ref_cider, ref_per, ref_bleu, _ = _coco([tokenize_caption(c) for c in raw], [[tokenize_caption(r) for r in rs] for rs in refs])
    assert res.score == pytest.approx(ref_cider, abs=1e-9)
    assert res.per_sample == pytest.approx(ref_per, abs=1e-9)
    assert res.extras["bleu_4"] == pytest.approx(ref_bleu[3], abs=1e-9)
    assert tokenize_caption("A man's well-known, red (old) car.") == "a man's well-known red old car"
    assert cider_d(["a cat"], [["a cat"]])[0] == 0.0  # idf over one image is log(1) - log(1): CIDEr is corpus-level
    assert not math.isnan(cider_d(["", ""], [["a"], ["b"]])[0])
