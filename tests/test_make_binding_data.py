"""scripts/make_binding_data.py: one colour turn per object that can be named without its colour."""
import random

import repo_file


def _script():
    return repo_file.load("scripts/make_binding_data.py")


def test_every_nameable_object_gets_its_own_colour_question():
    obj = lambda shape, colour, size: {"shape": shape, "colour": colour, "size": size}
    row = {"id": "s1", "image": "images/s1.png", "truth": {"objects": [
        obj("circle", "red", "large"), obj("circle", "blue", "small"), obj("star", "green", "small"),
        obj("square", "black", "small"), obj("square", "brown", "small")]}}  # two small squares: neither is nameable
    conv = _script().conversation(row, random.Random(0))
    turns = conv["conversations"]
    asked = {t["value"].replace("<image>\n", ""): a["value"] for t, a in zip(turns[::2], turns[1::2])}
    named = {next(n for n in ("large circle", "small circle", "star") if q.rstrip("?").endswith(" " + n)): a
             for q, a in asked.items()}
    assert named == {"large circle": "red", "small circle": "blue", "star": "green"}
    assert turns[0]["value"].startswith("<image>\n") and sum("<image>" in t["value"] for t in turns) == 1
    assert conv["image"] == "images/s1.png" and conv["id"] == "s1-binding"
    one = {"id": "s2", "image": "x.png", "truth": {"objects": [obj("star", "red", "large")]}}
    assert _script().conversation(one, random.Random(0)) is None  # the generator's own question covers it
