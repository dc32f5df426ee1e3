"""scripts/make_crowded_counting_data.py and ShapesConfig.few_kinds: scenes where one kind appears 3 or 4 times."""
import json
from collections import Counter

import pytest
import repo_file

from vlmkit.data.shapes import PLURALS, ShapesConfig, ShapesGenerator


def test_crowded_scenes_repeat_kinds_stay_in_train_and_are_counted(tmp_path):
    mod = repo_file.load("scripts/make_crowded_counting_data.py")
    src = mod.source(40, seed=3, size=96)
    gen = next(iter(src.generators.values()))[0]
    for i in range(len(src)):
        objs = src[i].truth["objects"]
        assert 3 <= len(objs) <= 8
        assert len({o["shape"] for o in objs}) <= 2 and len({o["colour"] for o in objs}) <= 2
    # the split is keyed like every shapes scene's, so a test layout can never be drawn here
    assert gen.name == "shapes" and src.split == "train"
    mod.main([str(tmp_path / "c"), "--n", "40", "--seed", "3", "--size", "96", "--no-progress"])
    truth = [json.loads(line) for line in (tmp_path / "c" / "truth.jsonl").read_text().splitlines()]
    convs = [json.loads(line) for line in (tmp_path / "c" / "counting.jsonl").read_text().splitlines()]
    assert len(convs) == 40
    per_kind = Counter()
    for conv, row in zip(convs, truth):
        objs = row["truth"]["objects"]
        turns = conv["conversations"]
        for q, a in zip(turns[::2], turns[1::2]):
            for shape in {o["shape"] for o in objs}:
                if q["value"].endswith(f"How many {PLURALS[shape]} are there?"):
                    assert a["value"] == str(sum(o["shape"] == shape for o in objs))
                    per_kind[a["value"]] += 1
    assert per_kind["3"] + per_kind["4"] >= per_kind["1"]  # the counts the default scenes almost never ask


def test_few_kinds_leaves_the_default_draw_alone_and_checks_its_range():
    import random

    a = ShapesGenerator(ShapesConfig()).spec(random.Random(5))
    b = ShapesGenerator(ShapesConfig(few_kinds=0)).spec(random.Random(5))
    assert a == b
    with pytest.raises(ValueError, match="few_kinds"):
        ShapesConfig(few_kinds=1)
    with pytest.raises(ValueError, match="few_kinds"):
        ShapesConfig(few_kinds=6)
