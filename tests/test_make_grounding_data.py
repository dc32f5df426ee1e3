"""scripts/make_grounding_data.py: every object's box, once each, under the name the generator would use."""
import random

import repo_file


def test_every_object_is_asked_for_once_with_its_exact_box():
    mod = repo_file.load("scripts/make_grounding_data.py")
    obj = lambda shape, colour, size, box: {"shape": shape, "colour": colour, "size": size, "box": box}
    objects = [obj("circle", "red", "small", [10, 20, 110, 120]), obj("circle", "blue", "large", [500, 40, 700, 240]),
               obj("star", "red", "small", [300, 600, 420, 720])]
    row = {"id": "s1", "image": "images/s1.png", "truth": {"objects": objects}}
    conv = mod.conversation(row, random.Random(0))
    turns = conv["conversations"]
    asked = {t["value"].replace("<image>\n", ""): a["value"] for t, a in zip(turns[::2], turns[1::2])}
    names = {}
    for q, a in asked.items():
        template = next(t for t in mod.GROUNDING_QUESTIONS if q.startswith(t.split("{}")[0]) and q.endswith(t.split("{}")[1]))
        names[q[len(template.split("{}")[0]):len(q) - len(template.split("{}")[1])]] = a
    # two circles need their colour; the lone star is "the star"
    assert names == {"red circle": "<box>10,20,110,120</box>", "blue circle": "<box>500,40,700,240</box>",
                     "star": "<box>300,600,420,720</box>"}
    assert turns[0]["value"].startswith("<image>\n") and sum("<image>" in t["value"] for t in turns) == 1
    assert conv["id"] == "s1-grounding" and conv["image"] == "images/s1.png"


def test_the_order_varies_between_scenes():
    mod = repo_file.load("scripts/make_grounding_data.py")
    objects = [{"shape": s, "colour": "red", "size": "small", "box": [i, i, i + 10, i + 10]}
               for i, s in enumerate(["circle", "star", "square", "triangle"])]
    row = {"id": "s", "image": "i.png", "truth": {"objects": objects}}
    rng = random.Random(1)
    firsts = {mod.conversation(row, rng)["conversations"][1]["value"] for _ in range(30)}
    assert len(firsts) > 1  # the first box asked is not always the first object listed


def test_eval_task_has_one_iou_sample_per_object_and_refuses_training_scenes(tmp_path, monkeypatch):
    import json
    import sys

    import pytest

    mod = repo_file.load("scripts/make_grounding_data.py")
    objects = [{"shape": s, "colour": "red", "size": "small", "box": [10 * i, 0, 10 * i + 5, 5]}
               for i, s in enumerate(["circle", "star"])]
    val = tmp_path / "shapes" / "val"
    val.mkdir(parents=True)
    rows = [{"id": f"v{k}", "image": f"images/v{k}.png", "truth": {"objects": objects}} for k in range(3)]
    (val / "truth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(sys, "argv", ["make_grounding_data.py", str(val), "--eval", "--scenes", "2"])
    mod.main()
    samples = [json.loads(line) for line in (val / "boxes.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and {s["id"] for s in samples} == {"v0-box0", "v0-box1", "v1-box0", "v1-box1"}
    assert all(s["metric"] == "iou" and s["slice"] == "grounding" and "<image>" not in s["question"] for s in samples)
    by_shape = {s["question"].split("the ")[-1].rstrip(".?"): s["answers"] for s in samples if s["image"] == "images/v0.png"}
    assert by_shape == {"circle": ["<box>0,0,5,5</box>"], "star": ["<box>10,0,15,5</box>"]}
    spec = json.loads((val / "boxes-task.json").read_text())
    assert spec["samples"] == "boxes.jsonl" and spec["pass_bars"] == {"grounding": 0.8} and spec["name"] == "shapes-val-boxes"

    train = tmp_path / "shapes" / "train"
    train.mkdir()
    (train / "truth.jsonl").write_text((val / "truth.jsonl").read_text())
    monkeypatch.setattr(sys, "argv", ["make_grounding_data.py", str(train), "--eval"])
    with pytest.raises(SystemExit, match="not training scenes"):
        mod.main()
