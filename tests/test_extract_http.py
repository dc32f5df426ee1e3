"""POST /v1/extract on the server: checked JSON over HTTP; VLM modes go through the server's batcher; bad requests are 400s."""
from __future__ import annotations

import base64
import io
import json

import httpx
import jsonschema
import pytest

pytest.importorskip("rapidocr_onnxruntime")

from tiny import tiny_vlm  # noqa: E402
from vlmkit.apps.schema import load_schema  # noqa: E402
from vlmkit.data import make_source  # noqa: E402
from vlmkit.serve.app import ServerThread, create_app  # noqa: E402

GOOD = make_source("receipts", "test", seed=11, n=1, augment="photo")[0]
WRONG = make_source("receipts", "test", seed=5, n=1, augment="photo", wrong_total_rate=1.0)[0]


def data_url(img) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def server():
    with ServerThread(create_app(tiny_vlm())) as s:
        yield s.url


def post(base, body, **kw):
    return httpx.post(f"{base}/v1/extract", content=body if isinstance(body, (bytes, str)) else json.dumps(body), timeout=120, **kw)


def test_extract_over_http_returns_checked_json_with_evidence(server):
    r = post(server, {"image": data_url(GOOD.image)})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == "verified" and out["verified"] is True and out["failed_checks"] == []
    assert out["data"]["total"] == GOOD.truth["receipt"]["total"]
    assert len(out["evidence"]["total"]["box"]) == 4 and out["mode"].startswith("ocr")


def test_vlm_mode_runs_through_the_batcher_and_stays_schema_valid(server):
    r = post(server, {"image": data_url(WRONG.image), "mode": "ocr+vlm", "max_new_tokens": 64})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == "needs_review" and out["data"]["total"] == WRONG.truth["receipt"]["total"]
    jsonschema.validate(json.loads(out["vlm_text"]), load_schema("receipt"))  # constrained by the server's own sampler
    health = httpx.get(f"{server}/health", timeout=10).json()
    assert health  # the batcher is still serving after the extraction's generations


@pytest.mark.parametrize("body, where", [
    ({}, "image"),
    ({"image": "data:image/png;base64,AAAA", "mode": "magic"}, "mode"),
    ({"image": "data:image/png;base64,AAAA", "tolerance": -1}, "tolerance"),
    ({"image": "x", "colour": "red"}, "colour"),
    ("not json", None),
])
def test_bad_requests_are_400s_with_a_message(server, body, where):
    r = post(server, body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["message"] and (where is None or err["param"] == where)


def test_a_bad_schema_or_image_is_a_400(server):
    r = post(server, {"image": data_url(GOOD.image), "schema": "passport"})
    assert r.status_code == 400 and "unknown schema" in r.json()["error"]["message"]
    r = post(server, {"image": "data:image/png;base64," + base64.b64encode(b"garbage").decode()})
    assert r.status_code == 400 and "image" in r.json()["error"]["message"]
