"""Embedding tasks in the evaluation harness: retrieval recall@k and zero-shot accuracy for a dual encoder.

The encoders here look their embeddings up in tables, so every number is known exactly.
"""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fixtures.eval.tiny_vlm import write_task
from vlmkit.eval.embedding import load_embedding_samples
from vlmkit.eval.harness import EvalConfig, read_predictions, run_eval
from vlmkit.eval.tasks import DUAL_ENCODER, TaskError, load_spec, registered_model_kind

CFG = EvalConfig(batch_size=4, progress=False)


def e(i, d=6):
    return torch.eye(d)[i]


class Table:
    """A 'dual encoder' whose image embedding is looked up by file name and text embedding by the text itself."""

    def __init__(self, images: dict, texts: dict):
        self.images, self.texts = images, texts

    def encode_images(self, paths, batch_size=64):
        return F.normalize(torch.stack([self.images[Path(p).name] for p in paths]), dim=-1)

    def encode_text(self, texts):
        return F.normalize(torch.stack([self.texts[t] for t in texts]), dim=-1)


def _write_spec(folder: Path, spec: dict, samples: list[dict], files: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        (folder / name).write_bytes(b"")  # the table encoder never opens them; the loader checks they exist
    (folder / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    (folder / "task.json").write_text(json.dumps({"samples": "samples.jsonl", **spec}))
    return folder / "task.json"


# ---- retrieval ----
CAPTIONS = ["c0", "c1", "c2", "dup", "dup", "c5"]  # scenes 3 and 4 share a caption: either image answers it


def retrieval_case(tmp_path, pass_bars=None):
    samples = [{"id": f"s{i}", "slice": "a" if i < 3 else "b", "split": "test", "image": f"img{i}.png", "caption": c}
               for i, c in enumerate(CAPTIONS)]
    for s in samples[:5]:  # scene 5 has no views: image-to-image runs over scenes 0-4
        s["views"] = [f"{s['id']}-a.png", f"{s['id']}-b.png"]
    files = [s["image"] for s in samples] + [v for s in samples[:5] for v in s["views"]]
    spec = load_spec(_write_spec(tmp_path / "retrieval", {"name": "retrieval", "kind": "retrieval",
                                                          "pass_bars": pass_bars or {}}, samples, files))
    images = {f"img{i}.png": e(i) for i in range(6)}
    images.update({f"s{i}-a.png": e(i) for i in range(5)} | {f"s{i}-b.png": e(i) for i in range(5)})
    images["s1-a.png"] = 0.8 * e(2) + 0.6 * e(1)  # scene 1's view a looks more like scene 2: rank 1
    texts = {"c0": e(0), "c1": e(1), "dup": e(3),
             "c2": 0.9 * e(3) + 0.1 * e(2),  # image 3 outranks image 2: rank 1
             "c5": e(0) + e(1) + e(2) + e(3) + e(4) + 0.1 * e(5)}  # five images outrank image 5: rank 5
    return spec, Table(images, texts)


def test_retrieval_recall_is_exact_by_direction_and_source(tmp_path):
    spec, enc = retrieval_case(tmp_path, {"text-to-image": {"recall@5": 0.9}, "image-to-image/b": 1.0})
    results = run_eval(enc, [spec], tmp_path / "run", CFG)
    rows = {r["name"]: r for r in results["tasks"]["retrieval"]["slices"]}
    assert list(rows) == ["text-to-image", "text-to-image/a", "text-to-image/b",
                          "image-to-image", "image-to-image/a", "image-to-image/b"]

    def recall(name):
        r = rows[name]
        assert r["metric"] == "recall" and r["score"] == r["extras"]["recall@1"]
        return [r["extras"][f"recall@{k}"] for k in (1, 5, 10)], r["n"], r["extras"]["gallery"]

    # text-to-image ranks 0, 0, 1 | 0, 0 (the shared caption), 5
    assert recall("text-to-image") == ([4 / 6, 5 / 6, 1.0], 6, 6)
    assert recall("text-to-image/a") == ([2 / 3, 1.0, 1.0], 3, 6)  # a slice picks queries; the gallery stays whole
    assert recall("text-to-image/b") == ([2 / 3, 2 / 3, 1.0], 3, 6)
    # image-to-image ranks 0, 1, 0 | 0, 0 over the five scenes with views
    assert recall("image-to-image") == ([4 / 5, 1.0, 1.0], 5, 5)
    assert recall("image-to-image/a") == ([2 / 3, 1.0, 1.0], 3, 5)
    assert recall("image-to-image/b") == ([1.0, 1.0, 1.0], 2, 5)
    # bars on extras gate like any other: recall@5 5/6 < 0.9 fails
    assert rows["text-to-image"]["status"] == "fail" and rows["image-to-image/b"]["status"] == "pass"
    assert rows["image-to-image/a"]["status"] == "none" and results["passed"] is False
    assert results["failures"] == ["retrieval/text-to-image: recall@5 0.8333 < 0.9"]

    preds = read_predictions(tmp_path / "run" / "retrieval" / "predictions.jsonl")
    assert preds["text-to-image/s4"]["answers"] == ["s3", "s4"] and preds["text-to-image/s4"]["rank"] == 0
    assert preds["text-to-image/s2"]["prediction"] == "s3" and preds["text-to-image/s5"]["rank"] == 5
    assert preds["image-to-image/s1"]["prediction"] == "s2" and "image-to-image/s5" not in preds
    from vlmkit.eval.report import write_report

    assert "recall@10" in write_report(tmp_path / "run", results, charts=False).read_text()


def test_retrieval_limit_keeps_the_first_scenes_of_each_source(tmp_path):
    spec, enc = retrieval_case(tmp_path)
    results = run_eval(enc, [spec], tmp_path / "run", EvalConfig(limit=2, progress=False))
    rows = {r["name"]: r for r in results["tasks"]["retrieval"]["slices"]}
    # scenes 0, 1, 3, 4: every caption finds its image first (3 and 4 through their shared caption), and
    # scene 1's view a, which ranked scene 2 first, is right once scene 2 is out of the gallery
    assert rows["text-to-image"]["n"] == 4 and rows["text-to-image"]["extras"]["gallery"] == 4
    assert rows["text-to-image"]["score"] == 1.0 and rows["image-to-image"]["score"] == 1.0


# ---- zero-shot ----
CLASSES = ["cat", "dog", "car"]
SINGLE, OTHERS = "a photo of a {}.", ["art of the {}.", "a {} in a video game."]


def zeroshot_case(tmp_path, pass_bars):
    """Class c is the axis e_c; the plain prompt is biased toward class c + 1, the other two are not.

    Images 0-2 sit on their class axis: the biased prompt gets them wrong, the ensemble right. Images 3-5 sit
    between class c and c + 1 (labelled c): both get them right. Single template 3/6, ensemble 6/6."""
    samples = [{"id": f"z{k}", "image": f"z{k}.png", "label": CLASSES[k % 3], "split": "test"} for k in range(6)]
    spec = load_spec(_write_spec(tmp_path / "zs", {"name": "zs", "kind": "zeroshot", "classes": CLASSES,
                                                   "prompts": {"single-template": [SINGLE], "ensemble": [SINGLE] + OTHERS},
                                                   "pass_bars": pass_bars}, samples, [s["image"] for s in samples]))
    texts = {SINGLE.format(c): e(i, 3) + 1.5 * e((i + 1) % 3, 3) for i, c in enumerate(CLASSES)}
    texts.update({t.format(c): e(i, 3) for i, c in enumerate(CLASSES) for t in OTHERS})
    images = {f"z{k}.png": e(k % 3, 3) + (e((k + 1) % 3, 3) if k >= 3 else 0) for k in range(6)}
    return spec, Table(images, texts)


def test_zeroshot_reports_single_template_and_ensemble(tmp_path):
    spec, enc = zeroshot_case(tmp_path, {"ensemble": 0.75, "single-template": 0.75})
    results = run_eval(enc, [spec], tmp_path / "run", CFG)
    rows = {r["name"]: r for r in results["tasks"]["zs"]["slices"]}
    assert list(rows) == ["single-template", "ensemble"]
    assert rows["single-template"]["score"] == 0.5 and rows["single-template"]["extras"]["templates"] == 1
    assert rows["ensemble"]["score"] == 1.0 and rows["ensemble"]["extras"]["templates"] == 3
    assert rows["ensemble"]["status"] == "pass" and rows["single-template"]["status"] == "fail"
    assert rows["ensemble"]["n"] == rows["single-template"]["n"] == 6
    preds = read_predictions(tmp_path / "run" / "zs" / "predictions.jsonl")
    assert preds["single-template/z0"]["prediction"] == "car" and preds["ensemble/z0"]["prediction"] == "cat"
    from vlmkit.eval.report import write_report

    text = write_report(tmp_path / "run", results).read_text()
    assert "ensemble-confusion.png" in text  # per-sample "exact" records give the report its confusion matrix


def test_zeroshot_spec_validation(tmp_path):
    base = {"name": "zs", "kind": "zeroshot", "classes": CLASSES, "prompts": {"p": [SINGLE]}}
    one = [{"id": "z0", "image": "z0.png", "label": "cat"}]
    bad = [({**base, "classes": ["cat"]}, one, "at least two"),
           ({**base, "prompts": {"p": ["no slot"]}}, one, "exactly one"),
           ({**base, "kind": "ranking"}, one, "unknown kind 'ranking'"),
           ({**base, "prompt": "{question}"}, one, "unknown keys")]
    for spec, samples, message in bad:
        with pytest.raises(TaskError, match=message):
            load_spec(_write_spec(tmp_path / "bad", spec, samples, ["z0.png"]))
    spec = load_spec(_write_spec(tmp_path / "bad", base, [{"id": "z0", "image": "z0.png", "label": "horse"}], ["z0.png"]))
    with pytest.raises(TaskError, match=":1: label 'horse'"):
        load_embedding_samples(spec)


# ---- model and task kinds ----
class Generator:
    path = None

    def generate(self, conversations, config):
        raise AssertionError("never called: the run is refused first")


def test_a_task_and_a_model_of_different_kinds_are_refused(tmp_path):
    spec, enc = retrieval_case(tmp_path)
    with pytest.raises(TaskError, match="'retrieval' need a dual encoder, but the model is a generative VLM"):
        run_eval(Generator(), [spec], tmp_path / "a", CFG)
    sample = {"id": "q", "image": "img0.png", "question": "q?", "answers": ["x"], "metric": "exact", "slice": "s"}
    (tmp_path / "vqa").mkdir()
    (tmp_path / "vqa" / "img0.png").write_bytes(b"")
    vqa = load_spec(write_task(tmp_path / "vqa", [sample], name="vqa"))
    with pytest.raises(TaskError, match="'vqa' need a generative VLM, but the model is a dual encoder"):
        run_eval(enc, [vqa], tmp_path / "b", CFG)
    assert not (tmp_path / "a" / "run.json").exists() and not (tmp_path / "b" / "run.json").exists()
    assert registered_model_kind("retrieval") == registered_model_kind("zeroshot-fmnist") == DUAL_ENCODER


def _cli(*argv):
    from vlmkit.cli import main

    return main([str(a) for a in argv])


def test_cli_runs_a_dual_encoder_and_refuses_mismatches_before_building(tmp_path, monkeypatch, capsys):
    from vlmkit.config import VisionConfig
    from vlmkit.eval.embedding_data import write_retrieval_task
    from vlmkit.models.dual_encoder import DualEncoder, DualEncoderConfig, TextTowerConfig

    monkeypatch.setenv("VLMKIT_CACHE", str(tmp_path / "cache"))
    vc = VisionConfig(image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=2)
    DualEncoder(DualEncoderConfig(vision=vc, text=TextTowerConfig(kind="hash"), embed_dim=16)).save_pretrained(tmp_path / "de")
    (tmp_path / "r").mkdir()
    spec = write_retrieval_task(tmp_path / "r", sources=("shapes",), n=3, size=64, progress=False)
    assert _cli("eval", "--model", tmp_path / "de", "--tasks", spec, "--out", tmp_path / "run", "--no-progress", "--no-charts") == 0
    out = capsys.readouterr().out
    assert "text-to-image/shapes" in out and "image-to-image" in out and "recall@10" in out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["model"]["path"] == str((tmp_path / "de").resolve()) and results["passed"]

    vlm = tmp_path / "vlm"  # any model folder that is not a dual encoder is taken for a VLM
    vlm.mkdir()
    (vlm / "config.json").write_text("{}")
    assert _cli("eval", "--model", vlm, "--tasks", "retrieval", "--out", tmp_path / "x") == 2
    assert "need a dual encoder, but" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "eval" / "retrieval").exists()  # refused before its data was built
    sample = {"id": "q", "image": "images/img0.png", "question": "q?", "answers": ["x"], "metric": "exact", "slice": "s"}
    (tmp_path / "g" / "images").mkdir(parents=True)
    (tmp_path / "g" / "images" / "img0.png").write_bytes(b"")
    assert _cli("eval", "--model", tmp_path / "de", "--tasks", write_task(tmp_path / "g", [sample]), "--out", tmp_path / "y") == 2
    assert "need a generative VLM, but" in capsys.readouterr().err


# ---- the built-in data: held out ----
def test_builtin_retrieval_pairs_are_test_split_scenes_with_two_different_views(tmp_path):
    from PIL import Image

    from vlmkit.eval.embedding_data import write_retrieval_task

    spec = load_spec(write_retrieval_task(tmp_path, sources=("shapes", "text"), n=3, size=64, progress=False))
    samples = load_embedding_samples(spec)
    assert [s.slice for s in samples] == ["shapes"] * 3 + ["text"] * 3
    assert all(s.split == "test" and "-test-" in s.id for s in samples)  # held out: the generators' test split
    for s in samples:
        a, b = (Image.open(v).convert("RGB") for v in s.views)
        assert a.tobytes() != b.tobytes() and s.caption
    assert json.loads((tmp_path / "manifest.json").read_text())["split"] == "test"


def test_builtin_zeroshot_task_is_the_fashion_mnist_test_split(tmp_path):
    from vlmkit.data import DataError
    from vlmkit.eval.embedding_data import write_zeroshot_task
    from vlmkit.search.classify import DEFAULT_TEMPLATES, SINGLE_TEMPLATE

    try:
        path = write_zeroshot_task(tmp_path, n=12, bar=0.75, progress=False)
    except DataError as err:
        pytest.skip(str(err))  # the Debian package dataset-fashion-mnist is not installed
    spec = load_spec(path)
    assert spec.kind == "zeroshot" and len(spec.classes) == 10 and spec.pass_bars == {"ensemble": {"score": 0.75}}
    assert spec.prompts == {"single-template": list(SINGLE_TEMPLATE), "ensemble": list(DEFAULT_TEMPLATES)}
    samples = load_embedding_samples(spec)
    assert len(samples) == 12 and all(s.split == "test" and s.id.startswith("fashion-mnist-test-") for s in samples)
