"""scripts/model_card_figures.py relations: spatial relations split by where the two shapes fall in the token raster."""
import json
import sys

import repo_file


def _obj(shape, colour, x, y):
    return {"shape": shape, "colour": colour, "size": "small", "center": [x, y]}


# 224 px, 8 x 8 tokens of 28 px: the star is in token row 0, the circle in row 3, the square in row 3 too
SCENE = [_obj("star", "red", 200, 10), _obj("circle", "blue", 20, 100), _obj("square", "green", 120, 90)]


def test_each_relation_falls_in_its_raster_case():
    mod = repo_file.load("scripts/model_card_figures.py")
    case = lambda q: mod.relation_case(q, SCENE, 224, 8)
    above, left_first, right_first, one_row = mod.RELATION_CASES
    assert case("Is the star above the circle?") == above
    assert case("Is the circle below the star?") == above
    # the star is right of the circle but sits in an earlier token row: the raster order says the opposite
    assert case("Is the star left of the circle?") == right_first
    assert case("Is the circle right of the star?") == right_first
    assert case("Is the circle left of the square?") == one_row
    assert case("How many shapes are there?") is None
    moved = [_obj("star", "red", 10, 10)] + SCENE[1:]  # now the earlier row holds the left shape
    assert mod.relation_case("Is the star right of the square?", moved, 224, 8) == left_first
    assert mod.relation_case("Is the star right of the square?", moved, 224, 2) == one_row  # a coarser raster


def test_the_table_counts_right_answers_per_case(tmp_path, monkeypatch, capsys):
    mod = repo_file.load("scripts/model_card_figures.py")
    worlds, run = tmp_path / "worlds", tmp_path / "run" / "shapes-val"
    worlds.mkdir()
    run.mkdir(parents=True)
    (worlds / "truth.jsonl").write_text(json.dumps({"id": "s0", "truth": {"size": [224, 224], "objects": SCENE}}) + "\n"
                                        + json.dumps({"id": "w0", "truth": {"size": [224, 224], "text": "cat"}}) + "\n")
    qs = [("Is the star left of the circle?", "no", "no"), ("Is the circle right of the star?", "no", "yes"),
          ("Is the star above the square?", "yes", "yes"), ("How many shapes are there?", "3", "3")]
    preds = [{"id": f"s0-q{i}", "slice": "spatial", "metric": "yesno", "question": q, "answers": [a],
              "prediction": p, "error": None} for i, (q, a, p) in enumerate(qs)]
    preds.append({"id": "w0-q0", "slice": "reading", "metric": "exact", "question": "Is the cat left of the dog?",
                  "answers": ["no"], "prediction": "no", "error": None})
    (run / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    scores = [{"id": p["id"], "score": float(p["prediction"] == p["answers"][0])} for p in preds]
    (run / "scores.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scores))
    monkeypatch.setattr(sys, "argv", ["model_card_figures.py", "relations", str(tmp_path / "run"), "--task",
                                      "shapes-val", "--worlds", str(worlds)])
    mod.main()
    row = [c.strip() for c in capsys.readouterr().out.splitlines()[-1].strip("|").split("|")]
    assert row == ["run", "1 / 1", "0 / 0", "1 / 2", "0 / 0"]
