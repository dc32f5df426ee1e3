"""scripts/relation_chain_report.py: each step of a grounded relation answer is checked against the one before."""
import json

import pytest
import repo_file

A, B = "<box>100,100,200,200</box>", "<box>600,120,700,220</box>"  # A is left of B; the rows nearly the same


def _rec(question, answer, prediction):
    return {"question": question, "answers": [answer], "prediction": prediction}


def test_each_step_is_judged_on_the_step_before():
    mod = repo_file.load("scripts/relation_chain_report.py")
    q = "Is the red circle left of the square?"
    good = mod.chain(_rec(q, "yes", f"the red circle {A} and the square {B} so the red circle is left of the square: yes"))
    assert good == {"right": True, "axis": "x", "said_yes": True, "boxes_true": True, "side_follows_boxes": True,
                    "answer_follows_side": True, "side_is_asked": True}
    # the side read wrong from right boxes, then the answer follows the side: wrong, and the report says where
    bad_side = mod.chain(_rec(q, "yes", f"the red circle {A} and the square {B} so the red circle is right of the square: no"))
    assert bad_side["right"] is False and bad_side["side_follows_boxes"] is False and bad_side["answer_follows_side"]
    assert bad_side["side_is_asked"] is False
    # the side right, the answer ignoring it (session 19's failure)
    bad_answer = mod.chain(_rec(q, "yes", f"the red circle {A} and the square {B} so the red circle is left of the square: no"))
    assert bad_answer["side_follows_boxes"] and bad_answer["answer_follows_side"] is False
    # boxes swapped by the head: their relation is false, the chain after them consistent
    wrong_boxes = mod.chain(_rec(q, "yes", f"the red circle {B} and the square {A} so the red circle is right of the square: no"))
    assert wrong_boxes["boxes_true"] is False and wrong_boxes["side_follows_boxes"]
    # above / below reads the y axis: A's centre is 40 above B's
    y = mod.chain(_rec("Is the square below the red circle?", "no", f"the square {A} and the red circle {B} so the square is above the red circle: no"))
    assert y["axis"] == "y" and y["right"] and y["side_follows_boxes"] and y["answer_follows_side"]
    # session 19's format: boxes, no side
    h = mod.chain(_rec(q, "no", f"the red circle {A} and the square {B}: no"))
    assert h["boxes_true"] is False and "side_follows_boxes" not in h
    assert mod.chain(_rec("How many shapes are there?", "3", "3")) is None
    assert mod.chain(_rec(q, "yes", "yes")) == {"right": True, "axis": "x", "said_yes": True}
    # session 22's points: one digit an axis, read as boxes are
    p = mod.chain(_rec(q, "yes", "the red circle <point>1,1</point> and the square <point>6,1</point> so the red "
                                 "circle is right of the square: no"))
    assert p["boxes_true"] and p["side_follows_boxes"] is False and p["answer_follows_side"] and not p["right"]
    assert p["gap"] == 4  # 5 tenths apart on x, counted with the rest of 4 and more
    close = mod.chain(_rec("Is the square above the red circle?", "no", "the square <point>1,4</point> and the red "
                           "circle <point>6,2</point> so the square is above the red circle: yes"))
    assert close["gap"] == 2 and close["side_follows_boxes"] is False  # y: 4 is below 2
    out = mod.report([p, close])
    assert out["side follows points 2 apart"] == {"n": 1, "rate": 0.0}
    assert out["side follows points 4+ apart"] == {"n": 1, "rate": 0.0}
    assert out["side follows points 1 apart"] == {"n": 0, "rate": None}
    assert "side follows points 2 apart" not in mod.report([good])  # boxes have no one-digit gap


def test_report_rates_and_the_command(tmp_path, monkeypatch, capsys):
    mod = repo_file.load("scripts/relation_chain_report.py")
    q = "Is the red circle left of the square?"
    recs = [_rec(q, "yes", f"the red circle {A} and the square {B} so the red circle is left of the square: yes"),
            _rec(q, "yes", f"the red circle {A} and the square {B} so the red circle is left of the square: no"),
            _rec(q, "no", "yes"), _rec("Which shape is furthest to the left?", "circle", "circle")]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    monkeypatch.setattr("sys.argv", ["x", str(path), "--json"])
    mod.main()
    out = json.loads(capsys.readouterr().out)
    assert out["relations"] == 3 and out["said yes"] == 2
    assert out["relations right"] == {"n": 3, "rate": 0.333}
    assert out["boxes written"] == {"n": 2, "rate": 0.667}
    assert out["side follows boxes"] == {"n": 2, "rate": 1.0}
    assert out["answer follows side"] == {"n": 2, "rate": 0.5}
    assert out["side is the asked one"] == {"n": 2, "rate": 1.0}
    assert out["side follows boxes on x"] == {"n": 2, "rate": 1.0}
    assert out["side follows boxes on y"] == {"n": 0, "rate": None}
    assert out["other questions"] == {"Which shape is furthest to the left?": {
        "n": 1, "right": 1, "commonest answer": "circle", "its share": 1.0}}
    path.write_text(json.dumps(recs[-1]) + "\n")
    with pytest.raises(SystemExit, match="no relation questions"):
        mod.main()


def test_other_questions_are_grouped_by_form_with_the_commonest_answer():
    mod = repo_file.load("scripts/relation_chain_report.py")
    lone = "Is the {} on the left or the right side of the image?"
    recs = [_rec(lone.format("red circle"), "left", "right"), _rec(lone.format("star"), "right", "Right."),
            _rec(lone.format("square"), "left", "right"),
            _rec("Is the star in the top or the bottom half?", "top", "top"),
            _rec("Is the star left of the square?", "yes", "yes")]
    out = mod.other_forms(recs)
    assert out == {"Is the _ on the left or the right side of the image?": {  # one answer whatever the image
                       "n": 3, "right": 1, "commonest answer": "right", "its share": 1.0},
                   "Is the _ in the top or the bottom half?": {
                       "n": 1, "right": 1, "commonest answer": "top", "its share": 1.0}}
