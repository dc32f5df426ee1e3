"""End-to-end extraction on generated photo-like receipts: exact values, evidence boxes, verification, the CLI."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("rapidocr_onnxruntime")

from vlmkit.apps.extract import ExtractConfig, Extractor, extract  # noqa: E402
from vlmkit.apps.schema import ExtractError, FieldMap, load_schema  # noqa: E402
from vlmkit.data import make_source  # noqa: E402

# held-out receipts with the "photo" augmentation (tilt, perspective, light, blur, noise, JPEG)
GOOD = make_source("receipts", "test", seed=11, n=3, augment="photo")


def lower_names(r: dict) -> dict:
    return {**r, "items": [{**it, "name": it["name"].lower()} for it in r["items"]]}


@pytest.fixture(scope="module")
def results():
    ex = Extractor("receipt", ExtractConfig(mode="ocr"))
    return [ex(s.image) for s in GOOD]


@pytest.mark.parametrize("k", range(len(GOOD)))
def test_receipts_are_extracted_exactly_and_verified(results, k):
    r, truth = results[k], GOOD[k].truth["receipt"]
    assert lower_names(r.data) == lower_names(truth)  # OCR may lower-case a letter; everything else is exact
    assert r.verified and r.status == "verified" and r.failed_checks == []
    assert 0.8 < r.confidence <= 1.0
    names = {c.name for c in r.checks}
    assert {"items_sum", "total_sum", "citation:total", "item_arithmetic[0]"} <= names


def test_every_field_carries_an_evidence_box_inside_the_image(results):
    r, s = results[0], GOOD[0]
    w, h = s.image.size
    for key in ("merchant", "date", "subtotal", "tax", "total", "currency"):
        ev = r.evidence[key]
        x0, y0, x1, y1 = ev["box"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, key
        assert 0 < ev["score"] <= 1
    assert f"{s.truth['receipt']['total']:.2f}" in r.evidence["total"]["text"].replace(" ", "")
    for it, ev in zip(s.truth["receipt"]["items"], r.evidence["items"]):
        assert f"{it['price']:.2f}" in ev["price"]["text"] and ev["qty"]["box"] == ev["unit_price"]["box"]
    # the rows are in reading order on the page: the total's box is below the subtotal's
    assert r.evidence["total"]["box"][1] > r.evidence["subtotal"]["box"][1]


def test_a_wrong_total_is_read_as_printed_retried_and_never_verified():
    s = make_source("receipts", "test", seed=5, n=1, augment="photo", wrong_total_rate=1.0)[0]
    assert s.truth["total_correct"] is False
    r = extract(s.image)
    assert r.data["total"] == s.truth["receipt"]["total"]  # what the paper says, not the corrected sum
    assert r.data["total"] != s.truth["correct_total"]
    assert not r.verified and r.status == "needs_review" and r.attempts == 2
    assert [c.name for c in r.failed_checks] == ["total_sum"]
    assert any(n.startswith("retried:") for n in r.notes)
    d = r.to_dict()
    assert d["status"] == "needs_review" and d["failed_checks"][0]["name"] == "total_sum"


def test_a_custom_schema_gets_the_fields_it_names(tmp_path):
    schema = {"title": "expense", "type": "object", "properties": {
        "vendor": {"type": ["string", "null"]}, "grand_total": {"type": ["number", "null"]},
        "line_items": {"type": "array", "items": {"type": "object", "properties": {
            "description": {"type": ["string", "null"]}, "amount": {"type": ["number", "null"]}}}},
        "notes": {"type": ["string", "null"]}}}
    path = tmp_path / "expense.json"
    path.write_text(json.dumps(schema))
    fmap = FieldMap(load_schema(str(path)))
    assert fmap.roles == {"vendor": "merchant", "grand_total": "total", "line_items": "items"}
    assert fmap.item_roles == {"description": "name", "amount": "price"}
    s = GOOD[0]
    r = extract(s.image, schema=str(path))
    truth = s.truth["receipt"]
    items = [{"description": it["description"].lower(), "amount": it["amount"]} for it in r.data["line_items"]]
    assert items == [{"description": it["name"].lower(), "amount": it["price"]} for it in truth["items"]]
    assert (r.data["vendor"], r.data["grand_total"], r.data["notes"]) == (truth["merchant"], truth["total"], None)
    # the schema asks for no quantities, but they were read, so each line's arithmetic is still checked
    assert r.verified and len([c for c in r.checks if c.name.startswith("item_arithmetic")]) == len(truth["items"])
    assert r.evidence["grand_total"]["box"] and r.evidence["notes"] is None


def test_bad_schemas_and_modes_are_clear_errors(tmp_path):
    with pytest.raises(ExtractError, match="unknown schema"):
        load_schema("passport")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ExtractError, match="not valid JSON"):
        load_schema(str(bad))
    bad.write_text(json.dumps({"type": "array", "items": {}}))
    with pytest.raises(ExtractError, match="object schema"):
        load_schema(str(bad))
    from vlmkit.constrained import SchemaError

    bad.write_text(json.dumps({"type": "object", "properties": {"x": {"type": "string", "pattern": "^a"}}}))
    with pytest.raises(SchemaError, match="pattern"):
        load_schema(str(bad))
    with pytest.raises(ExtractError, match="mode"):
        ExtractConfig(mode="magic")


def test_cli_extract_json_and_exit_codes(tmp_path, capsys):
    from vlmkit.cli import main

    good, wrong = tmp_path / "good.png", tmp_path / "wrong.png"
    GOOD[1].image.save(good)
    make_source("receipts", "test", seed=5, n=1, augment="photo", wrong_total_rate=1.0)[0].image.save(wrong)
    assert main(["extract", str(good), "--json", "--mode", "ocr"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "verified" and out["data"]["total"] == GOOD[1].truth["receipt"]["total"]
    assert out["evidence"]["total"]["box"] and out["source"] == str(good)
    assert main(["extract", str(wrong), "--mode", "ocr"]) == 1  # needs review: a non-zero exit for scripts
    text = capsys.readouterr().out
    assert "NEEDS_REVIEW" in text and "failed total_sum" in text
    assert main(["extract", str(tmp_path / "nope.png")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["extract", str(good), "--schema", "passport"]) == 2
    assert "unknown schema" in capsys.readouterr().err


def test_auto_mode_skips_the_untrained_placeholder():
    from vlmkit.cli.extract import resolve_mode

    mode, note = resolve_mode("auto", "weights/vlmkit-smol-untrained")
    assert mode == "ocr" and "untrained" in note
    assert resolve_mode("auto", "weights/some-trained-model") == ("ocr+vlm", None)
    assert resolve_mode("vlm", None) == ("vlm", None)
    mode, note = resolve_mode("auto", None)  # the bundled default never saw a receipt
    assert mode == "ocr" and "not trained on receipts" in note


def test_a_strongly_tilted_photo_is_levelled_and_boxes_still_land_on_the_input():
    s = GOOD[0]
    tilted = s.image.rotate(-40, expand=True, fillcolor=(90, 90, 90))
    r = extract(tilted, retry=False)
    assert any("level" in n for n in r.notes) and r.verified
    assert lower_names(r.data) == lower_names(s.truth["receipt"])
    x0, y0, x1, y1 = r.evidence["total"]["box"]
    assert 0 <= x0 < x1 <= tilted.width and 0 <= y0 < y1 <= tilted.height
