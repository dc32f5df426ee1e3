"""scripts/probe_box_comparison.py: each probe example's label is the relation its two boxes show."""
import random
import re

import repo_file

from vlmkit.data.boxes import parse_boxes


def _obj(shape, colour, cx, cy):
    return {"shape": shape, "colour": colour, "size": "small", "center": [cx, cy],
            "box": [round((cx - 10) / 224 * 1000), round((cy - 10) / 224 * 1000),
                    round((cx + 10) / 224 * 1000), round((cy + 10) / 224 * 1000)]}


def test_examples_are_clear_balanced_and_labelled_by_the_boxes():
    mod = repo_file.load("scripts/probe_box_comparison.py")
    row = {"truth": {"size": [224, 224], "objects": [_obj("circle", "red", 40, 50), _obj("star", "blue", 180, 60),
                                                     _obj("square", "green", 110, 190)]}}
    rng, labels = random.Random(0), []
    for _ in range(200):
        prompt, yes, rel = mod.example(row, rng)
        assert prompt.endswith(":") and not prompt.endswith(("yes", "no", ": "))
        (a, b) = parse_boxes(prompt)
        axis = 0 if rel in ("left of", "right of") else 1
        ca, cb = (a[axis] + a[axis + 2]) / 2, (b[axis] + b[axis + 2]) / 2
        assert ((ca < cb) if rel in ("left of", "above") else (ca > cb)) == yes
        assert abs(ca - cb) >= 100  # the clear margin, 0.1 of the side
        assert re.search(rf"Is the .+ {rel} the .+\?", prompt)
        labels.append(yes)
    assert 80 < sum(labels) < 120
    # the circle and the star are 10 px apart vertically: never asked above / below of each other
    lone = {"truth": {"size": [224, 224], "objects": [_obj("circle", "red", 40, 50), _obj("star", "blue", 50, 60)]}}
    assert mod.example(lone, rng) is None


def test_centre_and_digit_forms_order_as_the_label_says():
    mod = repo_file.load("scripts/probe_box_comparison.py")
    # centres 23 px (0.103 of the side) apart on x: just over the clear margin, and in neighbouring tenths
    row = {"truth": {"size": [224, 224], "objects": [_obj("circle", "red", 111, 40), _obj("star", "blue", 134, 180)]}}
    rng = random.Random(1)
    for form, scale in (("centre", 1), ("digit", 100)):
        seen = set()
        for _ in range(100):
            prompt, yes, rel = mod.example(row, rng, form)
            (ax, ay), (bx, by) = [tuple(map(int, m)) for m in re.findall(r" at (\d+),(\d+)", prompt)]
            assert "<box>" not in prompt and prompt.endswith(":")
            a, b = (ax, bx) if rel in ("left of", "right of") else (ay, by)
            assert a != b  # never a tie where the answer depends on it
            assert ((a < b) if rel in ("left of", "above") else (a > b)) == yes
            assert max(ax, ay, bx, by) < 1000 // scale
            seen.add((rel, yes))
        assert len(seen) == 8  # all four relations, each true and false
    assert "at 4,1 and" in prompt or "at 5,8 and" in prompt  # 111 / 224 -> 495 -> 4; 134 / 224 -> 598 -> 5


def test_relation_step_asks_which_side_before_the_answer():
    mod = repo_file.load("scripts/probe_box_comparison.py")
    row = {"truth": {"size": [224, 224], "objects": [_obj("circle", "red", 111, 40), _obj("star", "blue", 134, 180)]}}
    rng, seen = random.Random(2), set()
    for form in ("digit", "box"):
        for _ in range(60):
            prompt, yes, rel = mod.example(row, rng, form)
            step, first, rel2 = mod.relation_step(prompt, yes, rel)
            assert rel2 == rel and step.startswith(prompt[:-1]) and step.endswith(" is")
            subject = re.search(rf"Is the (.+) {rel} the", prompt).group(1)
            assert step.endswith(f", so the {subject} is")
            # the circle is left of and above the star, whatever was asked
            assert first == (subject == "circle")
            seen.add((form, rel, yes))
    assert len(seen) == 16


def test_match_step_writes_the_true_side_then_asks_if_it_is_the_relation():
    mod = repo_file.load("scripts/probe_box_comparison.py")
    row = {"truth": {"size": [224, 224], "objects": [_obj("circle", "red", 111, 40), _obj("star", "blue", 134, 180)]}}
    rng = random.Random(3)
    for _ in range(60):
        prompt, yes, rel = mod.example(row, rng, "digit")
        step, yes2, _ = mod.match_step(prompt, yes, rel)
        said = re.search(r", so the (.+) is (left of|right of|above|below) the (.+):$", step)
        assert yes2 == yes and said
        a, side, b = said.groups()
        truth = {("circle", "left of"), ("circle", "above"), ("star", "right of"), ("star", "below")}
        assert (a, side) in truth and {a, b} == {"circle", "star"}
        assert (side == rel) == yes
