"""Grounded relation answers (vlmkit.data.shapes.grounded_relation) and scripts/make_grounded_relations.py."""
import json
import random

import pytest
import repo_file

from vlmkit.data.boxes import format_point, parse_boxes, parse_places, parse_points
from vlmkit.data.shapes import ShapesConfig, ShapesGenerator, grounded_relation
from vlmkit.eval.metrics.pope import yes_no


def _obj(shape, colour, size, box):
    return {"shape": shape, "colour": colour, "size": size, "box": box}


OBJECTS = [_obj("circle", "red", "small", [100, 120, 180, 200]), _obj("circle", "blue", "large", [600, 500, 900, 800]),
           _obj("star", "green", "small", [400, 40, 460, 100])]


def test_both_boxes_in_the_questions_order_then_the_label():
    text = grounded_relation("<image>\nIs the blue circle left of the star?", "no", OBJECTS)
    assert text == "the blue circle <box>600,500,900,800</box> and the star <box>400,40,460,100</box>: no"
    assert parse_boxes(text) == [[600, 500, 900, 800], [400, 40, 460, 100]]
    # POPE's rule reads the label back from the whole answer, so the yes / no metric needs no change
    assert yes_no(text) == "no"
    assert yes_no(grounded_relation("Is the star above the red circle?", "yes", OBJECTS)) == "yes"


@pytest.mark.parametrize("question, answer", [
    ("Is the circle left of the star?", "yes"),  # "circle" names two objects
    ("Is the star left of the purple square?", "yes"),  # no such object
    ("Which shape is furthest to the left?", "star"),
    ("Is the star on the left or the right side of the image?", "left"),
    ("Is the star above the red circle?", "maybe"),
])
def test_anything_but_a_relation_between_two_named_objects_is_none(question, answer):
    assert grounded_relation(question, answer, OBJECTS) is None


@pytest.mark.parametrize("say_side, places", [(False, "box"), (True, "box"), (True, "point")])
def test_every_generated_relation_question_is_grounded_to_its_objects(say_side, places):
    gen = ShapesGenerator(ShapesConfig(size=224))
    rng, seen = random.Random(0), 0
    for _ in range(80):
        _, truth, _, qa = gen.build(gen.spec(rng), rng)
        for q in qa:
            if q.kind.startswith("relation"):
                text = grounded_relation(q.question, q.answer, truth["objects"], say_side, places)
                assert text is not None and yes_no(text) == q.answer
                if places == "box":
                    boxes = {tuple(o["box"]) for o in truth["objects"]}
                    assert len(parse_boxes(text)) == 2 and all(tuple(b) in boxes for b in parse_boxes(text))
                else:  # relations are asked only where the centres are a tenth apart: the digits never tie
                    (ax, ay), (bx, by) = parse_points(text)
                    assert (ax != bx) if "left / right" in q.kind else (ay != by), text
                if say_side:  # the side said is the relation asked exactly when the label is yes
                    said = text.rsplit(" is ", 1)[1].split(" the ")[0]
                    asked = next(r for r in ("left of", "right of", "above", "below") if f" {r} the " in q.question)
                    assert (said == asked) == (q.answer == "yes"), (q.question, text)
                seen += 1
    assert seen >= 10


def test_script_rewrites_relation_turns_only_and_refuses_unknown_objects(tmp_path, monkeypatch, capsys):
    mod = repo_file.load("scripts/make_grounded_relations.py")
    (tmp_path / "truth.jsonl").write_text(json.dumps({"image": "images/a.png", "truth": {"objects": OBJECTS}}) + "\n")
    turns = [{"from": "human", "value": "<image>\nIs the star right of the red circle?"}, {"from": "gpt", "value": "yes"},
             {"from": "human", "value": "How many shapes are there?"}, {"from": "gpt", "value": "3"}]
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "a", "image": "images/a.png", "conversations": turns}) + "\n")
    monkeypatch.setattr("sys.argv", ["x", str(tmp_path), "c.jsonl"])
    mod.main()
    out = json.loads((tmp_path / "c-grounded.jsonl").read_text())["conversations"]
    assert [t["value"] for t in out] == [
        turns[0]["value"], "the star <box>400,40,460,100</box> and the red circle <box>100,120,180,200</box>: yes",
        "How many shapes are there?", "3"]
    assert "1 relation answers grounded" in capsys.readouterr().out
    turns[0]["value"] = "Is the star right of the circle?"  # two circles: which box is meant is unknown
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "a", "image": "images/a.png", "conversations": turns}) + "\n")
    with pytest.raises(ValueError, match="names no object"):
        mod.main()


def test_say_side_writes_the_boxes_true_side_then_the_label():
    text = grounded_relation("Is the blue circle left of the star?", "no", OBJECTS, say_side=True)
    assert text == ("the blue circle <box>600,500,900,800</box> and the star <box>400,40,460,100</box> "
                    "so the blue circle is right of the star: no")
    assert yes_no(text) == "no"
    text = grounded_relation("Is the star above the red circle?", "yes", OBJECTS, say_side=True)
    assert text.endswith("</box> so the star is above the red circle: yes") and yes_no(text) == "yes"
    # the side is read from the boxes, whatever the label says
    assert grounded_relation("Is the star below the red circle?", "no", OBJECTS, say_side=True).endswith(
        "so the star is above the red circle: no")


def test_script_say_side_writes_reasoned_files(tmp_path, monkeypatch):
    mod = repo_file.load("scripts/make_grounded_relations.py")
    (tmp_path / "truth.jsonl").write_text(json.dumps({"image": "images/a.png", "truth": {"objects": OBJECTS}}) + "\n")
    turns = [{"from": "human", "value": "<image>\nIs the star right of the red circle?"}, {"from": "gpt", "value": "yes"}]
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "a", "image": "images/a.png", "conversations": turns}) + "\n")
    monkeypatch.setattr("sys.argv", ["x", str(tmp_path), "c.jsonl", "--say-side"])
    mod.main()
    out = json.loads((tmp_path / "c-reasoned.jsonl").read_text())["conversations"]
    assert out[1]["value"].endswith("</box> so the star is right of the red circle: yes")
    assert not (tmp_path / "c-grounded.jsonl").exists()


def test_script_train_side_only_gives_the_boxes(tmp_path, monkeypatch):
    mod = repo_file.load("scripts/make_grounded_relations.py")
    (tmp_path / "truth.jsonl").write_text(json.dumps({"image": "images/a.png", "truth": {"objects": OBJECTS}}) + "\n")
    turns = [{"from": "human", "value": "<image>\nIs the star right of the red circle?"}, {"from": "gpt", "value": "yes"},
             {"from": "human", "value": "How many shapes are there?"}, {"from": "gpt", "value": "3"}]
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "a", "image": "images/a.png", "conversations": turns}) + "\n")
    monkeypatch.setattr("sys.argv", ["x", str(tmp_path), "c.jsonl", "--say-side", "--train-side-only"])
    mod.main()
    out = json.loads((tmp_path / "c-side.jsonl").read_text())["conversations"]
    assert out[1] == {"from": "gpt", "given": "the star <box>400,40,460,100</box> and the red circle "
                      "<box>100,120,180,200</box> so the star is", "value": " right of the red circle: yes"}
    assert out[3] == {"from": "gpt", "value": "3"}
    monkeypatch.setattr("sys.argv", ["x", str(tmp_path), "c.jsonl", "--train-side-only"])
    with pytest.raises(SystemExit):
        mod.main()


def test_swapped_boxes_carry_the_side_and_the_label_with_them(tmp_path, monkeypatch):
    mod = repo_file.load("scripts/make_grounded_relations.py")
    given, value = mod.swapped_boxes("the star <box>400,40,460,100</box> and the red circle <box>100,120,180,200</box> "
                                     "so the star is", "Is the star right of the red circle?")
    assert given == "the star <box>100,120,180,200</box> and the red circle <box>400,40,460,100</box> so the star is"
    assert value == " left of the red circle: no"  # what the exchanged boxes show, against the image
    given, value = mod.swapped_boxes("the star <box>400,40,460,100</box> and the red circle <box>100,120,180,200</box> "
                                     "so the star is", "Is the star below the red circle?")
    assert value == " below the red circle: yes"
    (tmp_path / "truth.jsonl").write_text(json.dumps({"image": "images/a.png", "truth": {"objects": OBJECTS}}) + "\n")
    turns = [{"from": "human", "value": "<image>\nIs the star right of the red circle?"}, {"from": "gpt", "value": "yes"}]
    rows = [{"id": f"a{k}", "image": "images/a.png", "conversations": turns} for k in range(40)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr("sys.argv", ["x", str(tmp_path), "c.jsonl", "--say-side", "--train-side-only", "--swap-boxes"])
    mod.main()
    out = [json.loads(line)["conversations"][1] for line in (tmp_path / "c-side-swapped.jsonl").read_text().splitlines()]
    values = [t["value"] for t in out]
    assert 10 < values.count(" left of the red circle: no") < 30  # about half exchanged, seeded
    assert values.count(" left of the red circle: no") + values.count(" right of the red circle: yes") == 40
    monkeypatch.setattr("sys.argv", ["x", str(tmp_path), "c.jsonl", "--say-side", "--swap-boxes"])
    with pytest.raises(SystemExit):
        mod.main()


def test_points_are_the_centres_tenth_on_each_axis():
    assert format_point([100, 120, 180, 200]) == "<point>1,1</point>"  # centre (140, 160)
    assert format_point([600, 500, 900, 800]) == "<point>7,6</point>"
    assert format_point([900, 980, 1000, 1000]) == "<point>9,9</point>"  # a centre at 1000 stays one digit
    assert format_point([0, 0, 199, 201]) == "<point>0,1</point>"
    assert parse_points("a <point>7,6</point> b <point> 1 , 2 </point> <point>10,2</point>") == [(7, 6), (1, 2)]


def test_point_chain_and_its_swap_follow_the_points(tmp_path, monkeypatch):
    text = grounded_relation("Is the blue circle left of the star?", "no", OBJECTS, say_side=True, places="point")
    assert text == ("the blue circle <point>7,6</point> and the star <point>4,0</point> "
                    "so the blue circle is right of the star: no")
    with pytest.raises(ValueError, match="places"):
        grounded_relation("Is the blue circle left of the star?", "no", OBJECTS, places="centre")
    mod = repo_file.load("scripts/make_grounded_relations.py")
    assert parse_places(text) == [[750, 650, 750, 650], [450, 50, 450, 50]]
    assert parse_places("<point>1,2</point> <box>1,2,3,4</box>") == [[150, 250, 150, 250], [1, 2, 3, 4]]
    given, value = mod.swapped_boxes(mod.split_at_side(text)[0], "Is the blue circle left of the star?")
    assert given == "the blue circle <point>4,0</point> and the star <point>7,6</point> so the blue circle is"
    assert value == " left of the star: yes"
    (tmp_path / "truth.jsonl").write_text(json.dumps({"image": "images/a.png", "truth": {"objects": OBJECTS}}) + "\n")
    turns = [{"from": "human", "value": "<image>\nIs the star right of the red circle?"}, {"from": "gpt", "value": "yes"}]
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "a", "image": "images/a.png", "conversations": turns}) + "\n")
    monkeypatch.setattr("sys.argv", ["x", str(tmp_path), "c.jsonl", "--say-side", "--train-side-only", "--points"])
    mod.main()
    out = json.loads((tmp_path / "c-side-points.jsonl").read_text())["conversations"]
    assert out[1] == {"from": "gpt", "given": "the star <point>4,0</point> and the red circle <point>1,1</point> "
                      "so the star is", "value": " right of the red circle: yes"}
    # trained points carry their objects' boxes, the box head's targets (vlmkit.train.box_head.reply_boxes)
    monkeypatch.setattr("sys.argv", ["x", str(tmp_path), "c.jsonl", "--say-side", "--points"])
    mod.main()
    out = json.loads((tmp_path / "c-reasoned-points.jsonl").read_text())["conversations"]
    assert out[1] == {"from": "gpt", "value": "the star <point>4,0</point> and the red circle <point>1,1</point> so "
                      "the star is right of the red circle: yes", "places": [[400, 40, 460, 100], [100, 120, 180, 200]]}


def test_keep_splits_turns_by_axis_and_moves_the_image_to_the_first_kept_question(tmp_path, monkeypatch, capsys):
    mod = repo_file.load("scripts/make_grounded_relations.py")
    (tmp_path / "truth.jsonl").write_text(json.dumps({"image": "images/a.png", "truth": {"objects": OBJECTS}}) + "\n")
    turns = [{"from": "human", "value": "<image>\nIs the star right of the red circle?"}, {"from": "gpt", "value": "yes"},
             {"from": "human", "value": "Which shape is at the top?"}, {"from": "gpt", "value": "star"},
             {"from": "human", "value": "Is the star above the red circle?"}, {"from": "gpt", "value": "yes"}]
    rows = [{"id": "a", "image": "images/a.png", "conversations": turns},
            {"id": "b", "image": "images/a.png", "conversations": turns[:4]}]  # no above / below turn
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr("sys.argv", ["x", str(tmp_path), "c.jsonl", "--say-side", "--keep", "y"])
    mod.main()
    out = [json.loads(line) for line in (tmp_path / "c-reasoned-y.jsonl").read_text().splitlines()]
    assert [r["id"] for r in out] == ["a"]  # b had nothing left
    assert [t["value"] for t in out[0]["conversations"]] == [
        "<image>\nIs the star above the red circle?",
        "the star <box>400,40,460,100</box> and the red circle <box>100,120,180,200</box> so the star is above the "
        "red circle: yes"]
    assert "1 conversations, 1 relation answers grounded" in capsys.readouterr().out
    monkeypatch.setattr("sys.argv", ["x", str(tmp_path), "c.jsonl", "--keep", "other"])
    mod.main()
    out = [json.loads(line)["conversations"] for line in (tmp_path / "c-other.jsonl").read_text().splitlines()]
    top = [{"from": "human", "value": "<image>\nWhich shape is at the top?"}, {"from": "gpt", "value": "star"}]
    assert out == [top, top]
    assert rows[0]["conversations"][0]["value"].startswith("<image>\n")  # the source rows are not edited in place
    monkeypatch.setattr("sys.argv", ["x", str(tmp_path), "c.jsonl", "--keep", "other", "--points"])
    with pytest.raises(SystemExit):
        mod.main()


@pytest.mark.parametrize("max_gap, kept", [(0, []), (1, ["above"]), (3, ["right of", "above"])])
def test_max_gap_keeps_relations_whose_points_are_close_on_the_asked_axis(tmp_path, monkeypatch, max_gap, kept):
    mod = repo_file.load("scripts/make_grounded_relations.py")
    (tmp_path / "truth.jsonl").write_text(json.dumps({"image": "images/a.png", "truth": {"objects": OBJECTS}}) + "\n")
    # the star is <point>4,0</point>, the red circle <point>1,1</point>: 3 apart on x, 1 on y
    turns = [{"from": "human", "value": "<image>\nIs the star right of the red circle?"}, {"from": "gpt", "value": "yes"},
             {"from": "human", "value": "Which shape is at the top?"}, {"from": "gpt", "value": "star"},
             {"from": "human", "value": "Is the star above the red circle?"}, {"from": "gpt", "value": "yes"}]
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "a", "image": "images/a.png", "conversations": turns}) + "\n")
    monkeypatch.setattr("sys.argv", ["x", str(tmp_path), "c.jsonl", "--say-side", "--train-side-only", "--points",
                                     "--max-gap", str(max_gap)])
    mod.main()
    rows = [json.loads(line) for line in (tmp_path / f"c-side-points-gap{max_gap}.jsonl").read_text().splitlines()]
    questions = [t["value"] for r in rows for t in r["conversations"][::2]]
    assert [q.split(" the ")[1].split("star ")[1] for q in questions] == kept
    assert all(q.startswith("<image>\n") == (k == 0) for k, q in enumerate(questions))
    monkeypatch.setattr("sys.argv", ["x", str(tmp_path), "c.jsonl", "--say-side", "--max-gap", "3"])
    with pytest.raises(SystemExit):  # boxes have no one-digit gap
        mod.main()
