"""`vlmkit data make`: the shared on-disk formats, the task spec, refusals, and the in-memory API."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlmkit.cli import main
from vlmkit.data import PASS_BARS, make_source

METRICS = {"vqa", "exact", "anls", "relaxed", "iou", "cider", "json_f1", "yesno"}


def _jsonl(path: Path) -> list[dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines and all(line.strip() for line in lines)
    return [json.loads(line) for line in lines]


def _check_formats(out: Path, n_images: int) -> dict:
    convs, caps, evals = _jsonl(out / "conversations.jsonl"), _jsonl(out / "captions.jsonl"), _jsonl(out / "eval.jsonl")
    assert len(convs) == len(caps) == n_images and len(evals) >= n_images
    for rec in convs:
        assert set(rec) == {"id", "image", "conversations"} and isinstance(rec["id"], str)
        turns = rec["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and len(turns) >= 2
        assert turns[0]["value"].startswith("<image>\n") and all("<image>" not in t["value"] for t in turns[1:])
        assert all(isinstance(t["value"], str) and t["value"] for t in turns)
    for rec in caps:
        assert set(rec) == {"id", "image", "text"} and rec["text"]
    for rec in evals:
        assert set(rec) - {"kind"} == {"id", "image", "question", "answers", "metric", "slice"}  # kind: optional
        assert rec["metric"] in METRICS and isinstance(rec["answers"], list) and rec["answers"]
        assert all(isinstance(a, str) for a in rec["answers"])
    for rec in convs + caps + evals:
        p = out / rec["image"]
        assert not Path(rec["image"]).is_absolute() and p.is_file()
        with Image.open(p) as im:
            assert im.format == "PNG"
    assert len({r["id"] for r in evals}) == len(evals)
    return {"conversations": convs, "captions": caps, "eval": evals}


def test_make_shapes_writes_the_shared_formats_and_a_task_spec(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert main(["data", "make", "shapes", "--split", "test", "--n", "5", "--seed", "3", "--out", str(out), "--no-progress"]) == 0
    assert "eval questions" in capsys.readouterr().out
    recs = _check_formats(out, 5)
    task = json.loads((out / "task.json").read_text())
    assert task["samples"] == "eval.jsonl" and task["name"] == "shapes-test"
    slices = {r["slice"] for r in recs["eval"]}
    assert slices == {"counting", "colour", "spatial", "grounding"}
    assert task["pass_bars"] == {s: PASS_BARS[s] for s in slices}
    assert task["pass_bars"]["grounding"] == 0.80 and task["pass_bars"]["counting"] == 0.90
    grounding = [r for r in recs["eval"] if r["slice"] == "grounding"]
    assert all(r["metric"] == "iou" and r["answers"][0].startswith("<box>") for r in grounding)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["images"] == 5 and manifest["seed"] == 3 and manifest["split"] == "test"
    # the files equal the in-memory API's records
    s = make_source("shapes", "test", seed=3, n=5)[0]
    assert recs["conversations"][0] == s.conversation(f"images/{s.id}.png")
    with Image.open(out / f"images/{s.id}.png") as im:
        assert im.convert("RGB").tobytes() == s.image.tobytes()


def test_task_spec_loads_in_the_evaluation_harness(tmp_path):
    tasks = pytest.importorskip("vlmkit.eval.tasks")
    out = tmp_path / "w"
    assert main(["data", "make", "worlds", "--n", "12", "--out", str(out), "--no-progress"]) == 0
    spec = tasks.load_spec(out / "task.json")
    samples = tasks.load_samples(spec)
    assert len(samples) == len(_jsonl(out / "eval.jsonl"))


def test_same_seed_writes_identical_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert main(["data", "make", "charts", "--n", "4", "--seed", "9", "--out", str(out), "--no-progress"]) == 0
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_refuses_to_overwrite_unless_asked(tmp_path, capsys):
    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["data", "make", "text", "--n", "2", "--out", str(out), "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"
    assert main(["data", "make", "text", "--n", "2", "--out", str(out), "--overwrite", "--no-progress"]) == 2
    assert "no manifest.json" in capsys.readouterr().err and (out / "notes.txt").exists()
    fresh = tmp_path / "e"
    assert main(["data", "make", "text", "--n", "3", "--out", str(fresh), "--no-progress"]) == 0
    assert main(["data", "make", "text", "--n", "2", "--out", str(fresh), "--overwrite", "--no-progress"]) == 0
    assert len(list((fresh / "images").iterdir())) == 2  # replaced, not merged
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial folders left behind


def test_classification_export_is_an_image_folder_with_labels(tmp_path):
    out = tmp_path / "digits"
    assert main(["data", "make", "digits", "--split", "val", "--n", "20", "--out", str(out), "--no-progress"]) == 0
    recs = _check_formats(out, 20)
    classes = json.loads((out / "classes.json").read_text())
    labels = _jsonl(out / "labels.jsonl")
    assert classes == [f"digit {d}" for d in range(10)] and len(labels) == 20
    for rec, cap in zip(labels, recs["captions"]):
        assert classes[rec["label_id"]] == rec["label"] and rec["image"].split("/")[1] == rec["label"].replace(" ", "-")
        assert cap["text"] == f"a photo of a {rec['label']}"


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["data", "make", "shapes", "--n", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--n must be at least 1" in capsys.readouterr().err
    assert main(["data", "make", "receipts", "--wrong-total-rate", "2", "--out", str(tmp_path / "x")]) == 2
    assert "wrong_total_rate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "make", "imagenet", "--out", str(tmp_path / "x")])


def test_in_memory_api_is_a_map_style_dataset():
    torch = pytest.importorskip("torch")
    src = make_source("worlds", "train", seed=0, n=6)
    assert len(src) == 6 and src[-1].id == src[5].id
    with pytest.raises(IndexError):
        src[6]
    loader = torch.utils.data.DataLoader(src, batch_size=3, collate_fn=list)
    batches = list(loader)
    assert [len(b) for b in batches] == [3, 3] and batches[1][0].id == src[3].id
    assert isinstance(batches[0][0].image, Image.Image) and batches[0][0].qa


def test_record_views_yield_images_with_the_exported_records():
    from vlmkit.data import DataError, RecordView

    src = make_source("charts", "val", seed=1, n=3)
    image, rec = RecordView(src, "conversation")[1]
    s = src[1]
    assert image.tobytes() == s.image.tobytes() and rec == s.conversation(f"{s.id}.png")
    assert RecordView(src, "caption")[0][1]["text"] == src[0].caption
    assert [r["slice"] for r in RecordView(src, "eval")[2][1]] == ["chart"] * len(src[2].qa)
    with pytest.raises(DataError):
        RecordView(src, "labels")


def test_contact_sheet_has_a_row_per_source(tmp_path):
    from vlmkit.data.preview import save_contact_sheet

    path = save_contact_sheet(tmp_path / "sheet.png", sources=("shapes", "charts"), per_row=2, tile=64)
    with Image.open(path) as im:
        w, h = im.size
        assert w > 2 * 64 and 2 * 64 < h < 3 * 120
        assert len(im.convert("RGB").getcolors(1 << 20)) > 50  # real pictures, not a blank page
