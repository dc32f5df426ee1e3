"""scripts/make_counting_data.py: the total, and every kind and colour present, counted once each."""
import random

import repo_file


def _script():
    return repo_file.load("scripts/make_counting_data.py")


def test_every_count_of_the_scene_is_asked_once():
    mod = _script()
    obj = lambda shape, colour: {"shape": shape, "colour": colour}
    row = {"id": "s1", "image": "images/s1.png", "truth": {"objects": [
        obj("circle", "red"), obj("circle", "blue"), obj("star", "red"), obj("circle", "red")]}}
    conv = mod.conversation(row, random.Random(0))
    turns = conv["conversations"]
    asked = {t["value"].replace("<image>\n", ""): a["value"] for t, a in zip(turns[::2], turns[1::2])}
    total = [q for q in asked if q in mod.TOTAL]
    assert len(total) == 1 and asked[total[0]] == "4"
    assert {q: a for q, a in asked.items() if q not in mod.TOTAL} == {
        "How many circles are there?": "3", "How many stars are there?": "1",
        "How many red shapes are there?": "3", "How many blue shapes are there?": "1"}
    assert turns[0]["value"].startswith("<image>\n") and sum("<image>" in t["value"] for t in turns) == 1
    assert conv["image"] == "images/s1.png" and conv["id"] == "s1-counting"
