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
