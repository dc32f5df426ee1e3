"""Visual worlds: determinism, disjoint splits, and ground truth checked against the pixels."""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from vlmkit.data import AugmentConfig, DataError, make_source
from vlmkit.data.boxes import iou, parse_box
from vlmkit.data.seeding import image_hash, split_of_key
from vlmkit.data.shapes import COLOURS

ndimage = pytest.importorskip("scipy.ndimage")
GENERATORS = ("shapes", "text", "charts", "receipts", "unsure")


def _digest(src, n: int) -> str:
    h = hashlib.sha256()
    for i in range(n):
        s = src[i]
        h.update(s.image.tobytes())
        h.update(repr((s.id, s.caption, [(q.question, q.answers, q.slice, q.metric) for q in s.qa], s.truth)).encode())
    return h.hexdigest()


# ---- determinism ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", GENERATORS + ("worlds",))
def test_same_seed_gives_identical_samples_and_other_seeds_differ(name):
    n = 3 if name == "receipts" else 6
    a, b = make_source(name, "train", seed=7, n=n), make_source(name, "train", seed=7, n=n)
    assert _digest(a, n) == _digest(b, n)
    assert a[2].image.tobytes() == b[2].image.tobytes()  # random access equals sequential access
    c = make_source(name, "train", seed=8, n=n)
    assert [a[i].image.tobytes() for i in range(n)] != [c[i].image.tobytes() for i in range(n)]


def test_determinism_does_not_depend_on_the_process_hash_seed():
    code = ("import sys; sys.path.insert(0, %r); from tests.test_data_worlds import _digest; "
            "from vlmkit.data import make_source; print(_digest(make_source('worlds', 'val', seed=3, n=5), 5))"
            % os.getcwd())
    env = dict(os.environ, PYTHONHASHSEED="12345", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == _digest(make_source("worlds", "val", seed=3, n=5), 5)


# ---- splits -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", GENERATORS + ("worlds",))
def test_splits_never_overlap(name):
    n = 12 if name == "receipts" else 30
    seen = {}
    for split in ("train", "val", "test"):
        src = make_source(name, split, seed=0, n=n, augment="none")
        samples = list(src)
        keys = [src.key_of(s) for s in samples]
        assert all(split_of_key(k) == split for k in keys)  # each content key belongs to the split it is in
        seen[split] = {"ids": {s.id for s in samples}, "seeds": {s.seed for s in samples}, "keys": set(keys),
                       "pixels": {image_hash(s.image) for s in samples}}
        assert len(seen[split]["ids"]) == n
    for field in ("ids", "seeds", "keys", "pixels"):
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            assert not seen[a][field] & seen[b][field], (field, a, b)


def test_reading_words_in_test_are_never_drawn_in_train():
    def texts(split):
        return {s.truth["text"].lower() for s in make_source("text", split, seed=0, n=150, augment="none")}

    train, test = texts("train"), texts("test")
    assert train and test and not train & test


def test_a_different_seed_cannot_move_test_content_into_train():
    test_keys = {make_source("shapes", "test", 0, 40).key_of(s) for s in make_source("shapes", "test", 0, 40)}
    for seed in (1, 2):
        src = make_source("shapes", "train", seed, 40)
        assert not test_keys & {src.key_of(s) for s in src}


def test_bad_split_is_a_clear_error():
    with pytest.raises(DataError, match="unknown split"):
        make_source("shapes", "holdout")
    with pytest.raises(DataError, match="unknown data source"):
        make_source("mnist")


# ---- shapes: the answers, checked against the pixels ------------------------------------------------------------

def _components(img):
    """Object pixels are the ones far from the light backgrounds; one 8-connected component per shape."""
    arr = np.asarray(img)
    mask = arr.min(axis=2) < 190
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    comps = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        ys, xs = sl
        m = labels[sl] == k
        mean = arr[sl][m].mean(axis=0)
        name = min(COLOURS, key=lambda c: float(np.sum((np.asarray(COLOURS[c]) - mean) ** 2)))
        comps.append({"box": (xs.start, ys.start, xs.stop, ys.stop), "colour": name,
                      "center": ((xs.start + xs.stop) / 2, (ys.start + ys.stop) / 2)})
    return comps


def _resolve(desc: str, objects):
    """The objects a description fits; a question may only use one that fits exactly one."""
    words = desc.split()
    return [o for o in objects if all(w in (o["shape"], o["colour"], o["size"]) for w in words)]


def _component_of(obj, comps):
    best = max(comps, key=lambda c: iou(c["box"], obj["box_px"]))
    return best


def test_shape_answers_match_the_drawn_pixels():
    src = make_source("shapes", "train", seed=0, n=150, augment="none")
    checked = {"counting": 0, "colour": 0, "spatial": 0, "grounding": 0}
    for s in src:
        objs, comps = s.truth["objects"], _components(s.image)
        assert len(comps) == len(objs)  # one blob per object: nothing overlaps or touches
        assert len({(o["shape"], o["colour"], o["size"]) for o in objs}) == len(objs)
        for o in objs:  # the recorded box is the drawn blob's box (to a pixel)
            c = _component_of(o, comps)
            assert c["colour"] == o["colour"]
            assert iou(c["box"], o["box_px"]) > 0.9 and all(abs(a - b) <= 1 for a, b in zip(c["box"], o["box_px"]))
        for qa in s.qa:
            checked[qa.slice] += 1
            q = qa.question
            if qa.slice == "counting":
                m = re.match(r"How many (\w+) (shapes|objects)", q)
                if q.startswith(("How many shapes", "How many objects")):
                    want = len(comps)
                elif m:
                    want = sum(c["colour"] == m.group(1) for c in comps)
                else:
                    shape = re.match(r"How many (\w+)s are", q).group(1)
                    want = sum(o["shape"] == shape for o in objs)
                assert qa.answer == str(want), (q, qa.answer, want)
            elif qa.slice == "colour":
                desc = re.search(r"(?:colour is|colour of) the (.+)\?$", q).group(1)
                (o,) = _resolve(desc, objs)
                assert not set(desc.split()) & set(COLOURS)  # the question does not give the answer away
                assert _component_of(o, comps)["colour"] == qa.answer
            elif qa.slice == "grounding":
                desc = re.search(r"(?:is|of) the (.+?)[?.]$|^Find the (.+)\.$", q)
                desc = desc.group(1) or desc.group(2)
                (o,) = _resolve(desc, objs)
                _check_box_pixels(s.image, parse_box(qa.answer), o, objs)
            elif qa.slice == "spatial":
                _check_spatial(qa, objs, comps, s.image.size[0])
    assert all(v >= 100 for v in checked.values()), checked


def _check_box_pixels(img, box, obj, objs):
    """Inside the box: the object's exact colour fills much of it. Outside: none of it anywhere."""
    arr = np.asarray(img)
    w, h = img.size
    x1, y1, x2, y2 = box[0] * w / 1000, box[1] * h / 1000, box[2] * w / 1000, box[3] * h / 1000
    match = np.all(arr == np.asarray(obj["rgb"], dtype=np.uint8), axis=2)
    ys, xs = np.nonzero(match)
    inside = (xs >= x1 - 1) & (xs < x2 + 1) & (ys >= y1 - 1) & (ys < y2 + 1)
    assert inside.sum() >= 0.3 * (x2 - x1) * (y2 - y1)
    twins = [o for o in objs if o is not obj and o["rgb"] == obj["rgb"]]
    if not twins:
        assert (~inside).sum() == 0


def _check_spatial(qa, objs, comps, size):
    q = qa.question
    m = re.match(r"Is the (.+) (left of|right of|above|below) the (.+)\?$", q)
    if m:
        (a,), (b,) = _resolve(m.group(1), objs), _resolve(m.group(3), objs)
        ca, cb = _component_of(a, comps)["center"], _component_of(b, comps)["center"]
        d = {"left of": cb[0] - ca[0], "right of": ca[0] - cb[0], "above": cb[1] - ca[1], "below": ca[1] - cb[1]}[m.group(2)]
        assert abs(d) >= 0.1 * size - 1  # asked only when clear by a margin
        assert qa.answer == ("yes" if d > 0 else "no")
        return
    m = re.match(r"Which shape is (furthest to the left|furthest to the right|at the top|at the bottom)\?$", q)
    if m:
        axis = 0 if "furthest" in m.group(1) else 1
        sign = -1 if m.group(1).endswith(("left", "top")) else 1
        o = max(objs, key=lambda o: sign * _component_of(o, comps)["center"][axis])
        assert qa.answer == o["shape"]
        return
    m = re.match(r"Is the (.+) (?:on the left or the right side|in the top or the bottom half) of the image\?$", q)
    assert m, q
    (o,) = _resolve(m.group(1), objs)
    cx, cy = _component_of(o, comps)["center"]
    want = ("left" if cx < size / 2 else "right") if "left or" in q else ("top" if cy < size / 2 else "bottom")
    assert qa.answer == want


def test_boxes_follow_rotation_and_perspective():
    geo = AugmentConfig(rotate_p=1.0, rotate_deg=8.0, perspective_p=1.0, perspective=0.03)
    src = make_source("shapes", "val", seed=0, n=40, augment=geo)
    warped = 0
    for s in src:
        warped += s.truth["warped"]
        comps = _components(s.image)
        assert len(comps) == len(s.truth["objects"])
        for o in s.truth["objects"]:
            assert iou(_component_of(o, comps)["box"], o["box_px"]) > 0.8
    assert warped >= 30  # most scenes really were warped (a warp pushing a shape off the frame is dropped)


def test_captions_and_qa_name_real_objects():
    s = make_source("shapes", "test", seed=0, n=1, augment="none")[0]
    for o in s.truth["objects"]:
        assert f"{o['size']} {o['colour']} {o['shape']}" in s.caption
    assert {q.slice for q in s.qa} <= {"counting", "colour", "spatial", "grounding"}
    assert {q.metric for q in s.qa} <= {"exact", "yesno", "iou"}


# ---- text and charts --------------------------------------------------------------------------------------------

def test_text_answers_are_the_drawn_text():
    for s in make_source("text", "train", seed=1, n=40):
        (qa,) = s.qa
        assert qa.answer == s.truth["text"] and qa.slice == "reading" and qa.metric == "exact"
        x1, y1, x2, y2 = s.truth["box_px"]
        assert 0 <= x1 < x2 <= s.image.width and 0 <= y1 < y2 <= s.image.height


def test_chart_answers_match_the_values():
    for s in make_source("charts", "train", seed=2, n=60):
        t = s.truth
        value = dict(zip(t["labels"], t["values"]))
        for qa in s.qa:
            assert qa.slice == "chart" and qa.metric == "relaxed"
            m = re.search(r"(?:value of|value does|value for) (\S+?)(?: have| in the chart)?\?$", qa.question)
            if m:
                assert qa.answer == str(value[m.group(1)])
            elif "highest" in qa.question:
                top = sorted(t["values"])
                assert qa.answer == t["labels"][t["values"].index(top[-1])] and top[-1] > top[-2]
            else:
                assert "lowest" in qa.question
                low = sorted(t["values"])
                assert qa.answer == t["labels"][t["values"].index(low[0])] and low[0] < low[1]


def test_rendered_text_and_chart_values_are_legible_to_ocr():
    """An independent reader (PP-OCR) must find the answers on the pixels."""
    ocr_mod = pytest.importorskip("rapidocr_onnxruntime")
    ocr = ocr_mod.RapidOCR()
    for s in list(make_source("text", "val", seed=0, n=2, augment="none")):
        found = " ".join(t for _, t, _ in (ocr(np.asarray(s.image))[0] or []))
        assert found.replace(" ", "").lower() == s.truth["text"].replace(" ", "").lower()
    # PP-OCR's detector skips a lone single glyph, so the chart is one whose values have two digits or more
    chart = next(s for s in make_source("charts", "val", seed=0, n=20, augment="none")
                 if s.truth["kind"] == "bar" and min(s.truth["values"]) >= 10)
    found = {t for _, t, _ in (ocr(np.asarray(chart.image))[0] or [])}
    assert {str(v) for v in chart.truth["values"]} <= found


def test_unsure_images_are_not_world_scenes_and_every_answer_abstains():
    from vlmkit.data.unsure import KINDS, UNSURE

    src = make_source("unsure", "train", seed=0, n=40)
    samples = list(src)
    assert {s.truth["kind"] for s in samples} == set(KINDS)  # every renderer is drawn
    assert all(q.answer == UNSURE and q.slice == "unsure" for s in samples for q in s.qa)
    assert all(len({q.question for q in s.qa}) == len(s.qa) == 2 for s in samples)
    # photo-like statistics: far more distinct colours than the flat fills of a shape scene
    colours = lambda im: len(set(im.convert("RGB").getdata()))
    shapes = make_source("shapes", "train", seed=0, n=5, augment="none")
    assert np.median([colours(s.image) for s in samples]) > 4 * max(colours(s.image) for s in shapes)


def test_shape_questions_name_their_kind_for_the_eval_report():
    """Counting and spatial questions carry a finer "kind" (eval reports score each apart); colour and grounding
    need none, and the kind always agrees with the question asked."""
    from vlmkit.data.shapes import COLOURS, PLURALS, TOTAL_COUNT_QUESTIONS

    def expected(q):
        if q in TOTAL_COUNT_QUESTIONS:
            return "all shapes"
        if any(q == f"How many {c} shapes are there?" for c in COLOURS):
            return "one colour"
        if any(q == f"How many {p} are there?" for p in PLURALS.values()):
            return "one shape"
        if q.endswith("side of the image?"):
            return "lone shape: left / right"
        if q.endswith("half of the image?"):
            return "lone shape: top / bottom"
        if q.startswith("Which shape is furthest to the"):
            return "extreme: left / right"
        if q.startswith("Which shape is at the"):
            return "extreme: top / bottom"
        return "relation: left / right" if " left of " in q or " right of " in q else "relation: above / below"

    seen = set()
    for sample in make_source("shapes", split="val", seed=0, n=200, size=96):
        for rec in sample.eval_records("x.png"):
            if rec["slice"] in ("colour", "grounding"):
                assert "kind" not in rec
                continue
            assert rec["kind"] == expected(rec["question"]), rec
            seen.add(rec["kind"])
    assert len(seen) == 9  # every kind occurs in 200 scenes
