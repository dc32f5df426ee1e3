"""The VLM's place in extraction: OCR lines in its prompt, schema-constrained output, and no trust without citations."""
from __future__ import annotations

import json
from types import SimpleNamespace

import jsonschema
import pytest

pytest.importorskip("rapidocr_onnxruntime")

from tiny import tiny_vlm, tiny_vlm_config  # noqa: E402
from vlmkit.apps.extract import ExtractConfig, Extractor  # noqa: E402
from vlmkit.apps.schema import load_schema  # noqa: E402
from vlmkit.data import make_source  # noqa: E402

RECEIPT = make_source("receipts", "test", seed=11, n=1, augment="photo")[0]
WRONG = make_source("receipts", "test", seed=5, n=1, augment="photo", wrong_total_rate=1.0)[0]


class ScriptedVLM:
    """Answers every request with a fixed text, and remembers what it was asked."""

    def __init__(self, text: str):
        self.text, self.calls = text, []
        self.cfg = tiny_vlm_config()

    def generate(self, conversations, json_schema=None, max_new_tokens=512, **kw):
        self.calls.append({"conversations": conversations, "schema": json_schema, "max_new_tokens": max_new_tokens, **kw})
        return [SimpleNamespace(text=self.text, finish_reason="stop") for _ in conversations]


def prompt_text(call) -> str:
    return next(p["text"] for p in call["conversations"][0][0]["content"] if p["type"] == "text")


def test_the_vlm_sees_the_ocr_rows_and_is_held_to_the_schema():
    truth = RECEIPT.truth["receipt"]
    vlm = ScriptedVLM(json.dumps(truth))
    r = Extractor("receipt", ExtractConfig(mode="ocr+vlm", vlm_when="always"), model=vlm)(RECEIPT.image)
    call = vlm.calls[0]
    assert call["schema"] == load_schema("receipt")
    text = prompt_text(call)
    assert f"{truth['total']:.2f}" in text and "Subtotal" in text  # the OCR rows are in the prompt
    assert r.verified and r.mode == "ocr+vlm (parser)"  # both verify: the deterministic parser wins the tie
    assert r.candidates["vlm"]["total"] == truth["total"] and r.vlm_text == json.dumps(truth)


def test_the_vlm_is_not_asked_when_the_parser_verifies_unless_always():
    vlm = ScriptedVLM("{}")
    r = Extractor("receipt", ExtractConfig(mode="ocr+vlm"), model=vlm)(RECEIPT.image)
    assert r.verified and vlm.calls == [] and r.vlm_text is None


def test_invented_numbers_are_not_trusted_even_when_they_add_up():
    fake = {"merchant": "Fake Shop", "date": "2020-01-01", "items": [{"name": "Gold", "qty": 2, "unit_price": 50.0, "price": 100.0}],
            "subtotal": 100.0, "tax": 10.0, "total": 110.0, "currency": "USD"}
    vlm = ScriptedVLM(json.dumps(fake))
    r = Extractor("receipt", ExtractConfig(mode="vlm"), model=vlm)(RECEIPT.image)
    assert r.data == fake and not r.verified and r.attempts == 1  # VLM alone: a retry cannot supply evidence
    failed = {c.name for c in r.failed_checks}
    assert {"citation:total", "citation:subtotal", "citation:items[0].price"} <= failed
    assert not {"total_sum", "items_sum", "item_arithmetic[0]"} & failed  # its arithmetic was fine
    assert "OCR" not in prompt_text(vlm.calls[0])  # VLM alone: no OCR in the prompt


def test_a_vlm_that_corrects_a_wrong_total_does_not_win():
    # the paper's total is wrong; a VLM "fixing" it to subtotal + tax invents a number nobody printed
    fixed = dict(WRONG.truth["receipt"], total=WRONG.truth["correct_total"])
    vlm = ScriptedVLM(json.dumps(fixed))
    r = Extractor("receipt", ExtractConfig(mode="ocr+vlm", vlm_when="always"), model=vlm)(WRONG.image)
    assert not r.verified and r.data["total"] == WRONG.truth["receipt"]["total"]
    assert r.candidates["vlm"]["total"] == WRONG.truth["correct_total"]
    # the retry asks the VLM again with the full-resolution tiling policy
    assert len(vlm.calls) == 2 and "tiling" not in vlm.calls[0] and vlm.calls[1]["tiling"].policy == "split"


def test_garbage_from_the_vlm_is_an_empty_proposal_not_a_crash():
    vlm = ScriptedVLM("this is not json")
    r = Extractor("receipt", ExtractConfig(mode="vlm"), model=vlm)(RECEIPT.image)
    assert not r.verified and r.data["total"] is None and r.data["items"] == []
    assert "present:total" in {c.name for c in r.failed_checks}


def test_a_real_tiny_vlm_under_constrained_decoding_always_gives_schema_valid_json():
    vlm = tiny_vlm()
    cfg = ExtractConfig(mode="ocr+vlm", vlm_when="always", max_new_tokens=96, retry=False)
    r = Extractor("receipt", cfg, model=vlm)(RECEIPT.image)
    schema = load_schema("receipt")
    jsonschema.validate(json.loads(r.vlm_text), schema)
    jsonschema.validate(r.candidates["vlm"], schema)
    assert r.verified and r.mode == "ocr+vlm (parser)"  # a random model's numbers cannot out-verify the OCR read
