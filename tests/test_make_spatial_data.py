"""scripts/make_spatial_data.py: clear relations only, as many "no" as "yes", the right extremes and sides."""
import random
import re

import repo_file


def _script():
    return repo_file.load("scripts/make_spatial_data.py")


def _obj(shape, colour, x, y):
    return {"shape": shape, "colour": colour, "size": "small", "center": [x, y]}


def test_relations_are_true_clear_and_balanced():
    mod = _script()
    objs = [_obj("circle", "red", 30, 40), _obj("star", "blue", 150, 45), _obj("square", "green", 90, 190)]
    where = {o["shape"]: o["center"] for o in objs}
    for seed in range(20):
        qa = dict(mod.questions(objs, 224, random.Random(seed)))
        # the star and the circle are level (5 px apart < 22.4): never asked above/below of each other, nor
        # which is at the top (the lead of 5 px is under half the margin)
        assert "Which shape is at the top?" not in qa
        assert qa["Which shape is furthest to the left?"] == "circle" and qa["Which shape is at the bottom?"] == "square"
        assert qa["Which shape is furthest to the right?"] == "star"
        rel = {q: a for q, a in qa.items() if q.startswith("Is the")}
        assert len(rel) == mod.MAX_RELATIONS and sorted(rel.values()) == ["no", "no", "yes", "yes"]
        for q, a in rel.items():
            x, r, y = re.match(r"Is the (\w+) (left of|right of|above|below) the (\w+)\?", q).groups()
            assert {x, y} != {"circle", "star"} or r in ("left of", "right of")
            (ax, ay), (bx, by) = where[x], where[y]
            truth = {"left of": bx - ax, "right of": ax - bx, "above": by - ay, "below": ay - by}[r]
            assert abs(truth) >= 22.4 and (truth > 0) == (a == "yes")


def test_a_lone_shape_is_asked_its_sides():
    mod = _script()
    assert dict(mod.questions([_obj("star", "red", 40, 200)], 224, random.Random(0))) == {
        "Is the star on the left or the right side of the image?": "left",
        "Is the star in the top or the bottom half of the image?": "bottom"}
    assert mod.questions([_obj("star", "red", 112, 115)], 224, random.Random(0)) == []  # centred: nothing is clear
    row = {"id": "s1", "image": "images/s1.png", "truth": {"size": [224, 224], "objects": [_obj("star", "red", 112, 115)]}}
    assert mod.conversation(row, random.Random(0)) is None
