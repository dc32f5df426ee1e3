"""Routing: a small rule set sends each request to retrieval, OCR+VLM or the VLM alone, and says why."""
from __future__ import annotations

import json

import pytest

from vlmkit.apps.route import PATHS, dispatch, route
from vlmkit.errors import VlmkitError

CASES = [
    # (request, number of images, path)
    ("find images like this one", 1, "retrieval"),
    ("Find photos of red cars", 0, "retrieval"),
    ("show me pictures of receipts from Metro Market", 0, "retrieval"),
    ("images similar to this", 1, "retrieval"),
    ("search for sunsets", 0, "retrieval"),
    ("What is the total on this receipt?", 1, "ocr+vlm"),
    ("what does it say?", 1, "ocr+vlm"),
    ("Extract the invoice as JSON", 1, "ocr+vlm"),
    ("how much did I pay?", 1, "ocr+vlm"),
    ("transcribe this page of text", 1, "ocr+vlm"),
    ("find the total", 1, "ocr+vlm"),  # "find" with a reading target and an image is reading, not search
    ("Describe this photo", 1, "vlm"),
    ("How many dogs are there?", 1, "vlm"),
    ("what colour is the car?", 1, "vlm"),
    ("Is the man smiling?", 1, "vlm"),
    ("tell me a joke", 0, "vlm"),
]


@pytest.mark.parametrize("request_text, n, path", CASES)
def test_rules(request_text, n, path):
    r = route(request_text, ["img.png"] * n)
    assert r.path == path, r.reason
    assert r.path in PATHS and r.reason


def test_reasons_name_the_cues_that_decided():
    r = route("What is the total on this receipt?", ["r.png"])
    assert r.cues == ["total", "receipt"] and "1 image" in r.reason
    assert "give the image" in route("what is the total?", []).reason
    assert route("find photos of cats", []).cues == ["find ... images"]


def test_cli_explain_prints_the_path_and_why(capsys):
    from vlmkit.cli import main

    assert main(["route", "find images like a beach at dusk", "--explain"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("path: retrieval\nwhy: asks for images")
    assert main(["route", "describe it", "--explain", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == "vlm"


def test_cli_refuses_missing_images_and_retrieval_without_an_index(tmp_path, capsys):
    from vlmkit.cli import main

    assert main(["route", "what does it say", str(tmp_path / "nope.png")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(VlmkitError, match="--db"):
        dispatch(route("find photos of cats"), "find photos of cats", [])
    with pytest.raises(VlmkitError, match="give the image"):
        dispatch(route("what is the total?"), "what is the total?", [])


def test_reading_requests_run_on_ocr_without_a_model(tmp_path):
    pytest.importorskip("rapidocr_onnxruntime")
    from vlmkit.data import make_source

    s = make_source("receipts", "test", seed=11, n=1, augment="photo")[0]
    path = tmp_path / "r.png"
    s.image.save(path)
    out = dispatch(route("what is the total?", [path]), "what is the total?", [path])
    assert out["route"]["path"] == "ocr+vlm"
    assert out["answer"] == f"{s.truth['receipt']['total']:.2f} (verified)"
    assert out["extraction"]["evidence"]["total"]["box"]
    said = dispatch(route("what does it say?", [path]), "what does it say?", [path])
    assert s.truth["receipt"]["merchant"].replace(" ", "") in said["answer"].replace(" ", "")
    assert said["answer"] == said["ocr_text"]
