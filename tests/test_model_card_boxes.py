"""scripts/model_card_figures.py boxes: per-axis correlation of predicted and true box centres from an eval run."""
import json
import sys

import repo_file


def test_a_model_that_knows_rows_but_not_columns_is_told_apart(tmp_path, monkeypatch, capsys):
    mod = repo_file.load("scripts/model_card_figures.py")
    run = tmp_path / "run" / "boxes"
    run.mkdir(parents=True)
    rows = []
    for k, (tx, ty) in enumerate([(170, 100), (500, 500), (900, 800), (800, 700), (800, 300), (450, 150)]):
        truth = f"<box>{tx - 50},{ty - 50},{tx + 50},{ty + 50}</box>"
        px = 800 if k % 2 else 170  # a column by coin flip, the row exactly
        pred = f"<box>{px - 50},{ty - 50},{px + 50},{ty + 50}</box>"
        rows.append({"id": f"b{k}", "slice": "grounding", "metric": "iou", "question": "Where?", "answers": [truth],
                     "prediction": pred, "error": None})
    rows.append({"id": "b-none", "slice": "grounding", "metric": "iou", "question": "Where?",
                 "answers": ["<box>0,0,10,10</box>"], "prediction": "I can't tell.", "error": None})
    rows.append({"id": "c0", "slice": "counting", "metric": "exact", "question": "How many?", "answers": ["2"],
                 "prediction": "<box>1,1,2,2</box>", "error": None})
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "scores.jsonl").write_text("")
    out = tmp_path / "boxes.png"
    monkeypatch.setattr(sys, "argv", ["model_card_figures.py", "boxes", f"m={tmp_path / 'run'}", "--task", "boxes",
                                      "--out", str(out)])
    mod.main()
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("| m |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    label, questions, boxes, hit, mean_iou, r_x, r_y = cells[:7]
    assert (questions, boxes) == ("7", "6")  # the counting row is not a grounding answer; one answer has no box
    assert float(r_y) == 1.0 and abs(float(r_x)) < 0.5
    assert float(hit) == round(2 / 7, 2)  # b0 and b3 sit in the column that was guessed
    assert out.is_file() and out.stat().st_size > 10_000
