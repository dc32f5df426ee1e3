"""The HTTP server, driven by the official openai and anthropic clients and raw httpx, on loopback only."""
import base64
import hashlib
import http.server
import io
import json
import logging
import os
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import numpy as np
import pytest
import torch
from PIL import Image

from tiny import tiny_vlm
from vlmkit.api import VLM
from vlmkit.serve.app import ServerThread, create_app
from vlmkit.serve.batching import BatchConfig
from vlmkit.serve.limits import Limits

KEY = "sekret"


# ---------------------------------------------------------------- helpers
def png(w=40, h=30, color=(200, 10, 10), noise=False) -> bytes:
    arr = np.random.default_rng(sum(color)).integers(0, 255, (h, w, 3), dtype=np.uint8) if noise else np.full((h, w, 3), color, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, mime="image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def bomb_png(w=60_000, h=60_000) -> bytes:
    """A valid PNG header claiming w x h with a tiny body: refused from the header, never decoded."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b""))


def ask(url: str, text="What is this?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}]


def chat(base, messages, headers=None, **kw) -> httpx.Response:
    return httpx.post(f"{base}/v1/chat/completions", json={"messages": messages, **kw}, headers=headers, timeout=60)


class FakeEmbedder:
    """The dual-encoder protocol: encode_text / encode_images -> [N, D], L2-normalised."""

    def text_vec(self, t: str) -> np.ndarray:
        v = np.frombuffer(hashlib.sha256(t.encode()).digest(), dtype=np.uint8)[:8].astype(np.float32) - 127.5
        return v / np.linalg.norm(v)

    def image_vec(self, im) -> np.ndarray:
        v = np.concatenate([np.asarray(im, dtype=np.float32).mean((0, 1)) + 1, np.ones(5, np.float32)])
        return v / np.linalg.norm(v)

    def encode_text(self, texts):
        return torch.from_numpy(np.stack([self.text_vec(t) for t in texts]))

    def encode_images(self, images):
        return torch.from_numpy(np.stack([self.image_vec(im) for im in images]))

    def model_id(self):
        return "fake-clip"


class Gate:
    """Holds the batch worker inside its next generate call until released: makes queue states deterministic."""

    def __init__(self, vlm: VLM):
        self.vlm, self.release, self.entered = vlm, threading.Event(), threading.Event()
        self.calls = []

    def __enter__(self):
        orig = type(self.vlm).generate_prompts.__get__(self.vlm)

        def gated(prompts, *a, **k):
            self.calls.append(len(prompts))
            self.entered.set()
            assert self.release.wait(30)
            return orig(prompts, *a, **k)

        self.vlm.generate_prompts = gated
        return self

    def __exit__(self, *exc):
        self.release.set()
        del self.vlm.generate_prompts


class ImageHost(http.server.ThreadingHTTPServer):
    """A loopback web server for the allow-list tests: an image, redirects, a 404."""

    def __init__(self, target_url: str):
        self.target_url = target_url
        super().__init__(("127.0.0.1", 0), self.Handler)
        self.netloc = f"127.0.0.1:{self.server_address[1]}"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            routes = {"/cat.png": (200, png(32, 32, (10, 200, 10)), None),
                      "/redirect": (302, b"", self.server.target_url),
                      "/redirect-file": (301, b"", "file:///etc/passwd")}
            status, body, location = routes.get(self.path, (404, b"no", None))
            self.send_response(status)
            if location:
                self.send_header("Location", location)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def vlm():
    return tiny_vlm()  # loading a saved model directory is tested through `vlmkit serve` in test_serve_shutdown.py


LIMITS = dict(max_body_bytes=2_000_000, max_image_bytes=500_000, max_image_pixels=1_000_000, max_images_per_request=3)


@pytest.fixture(scope="module")
def server(vlm):
    app = create_app(vlm, Limits(**LIMITS), BatchConfig(max_batch=8, window_ms=5, max_queue=16, timeout_s=60),
                     embedder=FakeEmbedder(), model_name="tiny")
    with ServerThread(app) as s:
        s.app = app
        yield s


@pytest.fixture(scope="module")
def files_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("allowed")
    (d / "ok.png").write_bytes(png(20, 20, (1, 2, 3)))
    (d / "escape.png").symlink_to("/etc/passwd")
    return d


@pytest.fixture(scope="module")
def tight(vlm, files_dir):
    """Queue of 1, no batching, a 2 s deadline, an API key, an image host and a file directory on the allow-lists."""
    own = VLM(vlm.model, vlm.tokenizer, path=vlm.path)  # same weights, its own feature cache and gate
    app = create_app(own, Limits(allow_hosts=("placeholder",), allow_local_files=str(files_dir)),
                     BatchConfig(max_batch=1, window_ms=0, max_queue=1, timeout_s=2), model_name="tiny", api_key=KEY)
    with ServerThread(app) as s:
        host = ImageHost(f"{s.url}/health")
        threading.Thread(target=host.serve_forever, daemon=True).start()
        app.state.server.limits.allow_hosts = (host.netloc,)
        s.vlm, s.host, s.headers, s.app_server = own, host, {"Authorization": f"Bearer {KEY}"}, app.state.server
        yield s
        host.shutdown()


@pytest.fixture(scope="module")
def openai_client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def anthropic_client(server):
    import anthropic

    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=60)


def alive(base, headers=None):
    r = chat(base, [{"role": "user", "content": "still there?"}], headers=headers, max_tokens=2)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 2


# ---------------------------------------------------------------- OpenAI client
def test_models_health_and_page(server):
    assert [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]] == ["tiny", "fake-clip"]
    h = httpx.get(f"{server.url}/health").json()
    assert h["status"] == "ok" and h["model"] == "tiny"
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "/v1/chat/completions" in page.text and "http://" not in page.text.replace("http://www.w3.org", "")


def test_openai_chat_matches_the_library(server, openai_client, vlm):
    url = data_url(png(noise=True))
    r = openai_client.chat.completions.create(model="tiny", messages=ask(url), max_tokens=12)
    expected = vlm.generate([ask(url)], max_new_tokens=12)[0]
    assert r.choices[0].message.content == expected.text
    assert r.choices[0].finish_reason == "length"
    prompt = vlm.prompt([{"role": "user", "content": [{"type": "image", "image": png(noise=True)}, {"type": "text", "text": "What is this?"}]}])
    assert r.usage.prompt_tokens == len(prompt.input_ids)
    assert r.usage.completion_tokens == 12
    assert r.usage.prompt_tokens_details.image_tokens == vlm.tokens_per_image == 16


def test_openai_streaming_is_the_same_text_in_pieces(openai_client):
    url = data_url(png(color=(0, 0, 250)))
    full = openai_client.chat.completions.create(model="tiny", messages=ask(url, "Colour?"), max_tokens=16)
    chunks = list(openai_client.chat.completions.create(model="tiny", messages=ask(url, "Colour?"), max_tokens=16, stream=True,
                                                         stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 3
    assert "".join(deltas) == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 16 and chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_raw_sse_ends_with_done(server):
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", timeout=60,
                      json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"


PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "pets"],
          "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"},
                         "pets": {"type": "array", "items": {"type": "object", "required": ["kind"],
                                                             "properties": {"kind": {"enum": ["cat", "dog"]}, "legs": {"type": "number"}}}}}}


@pytest.mark.parametrize("temperature", [0.0, 1.2])
def test_openai_json_schema_output_always_validates(openai_client, temperature):
    for seed in range(2):
        r = openai_client.chat.completions.create(
            model="tiny", messages=ask(data_url(png()), "Who is this, as JSON?"), max_tokens=40, temperature=temperature, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
    r = openai_client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "any JSON object"}], max_tokens=30,
                                              response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_openai_parse_with_a_pydantic_model(openai_client):
    from pydantic import BaseModel

    class Box(BaseModel):
        label: str
        x: float
        y: float

    class Answer(BaseModel):
        boxes: list[Box]
        count: int

    r = openai_client.chat.completions.parse(model="tiny", messages=[{"role": "user", "content": "Find boxes."}],
                                             response_format=Answer, max_tokens=48)
    assert isinstance(r.choices[0].message.parsed, Answer)


def test_stop_strings_cut_the_text_streaming_or_not(server):
    msgs = [{"role": "user", "content": "Tell me a story."}]
    free = chat(server.url, msgs, max_tokens=20).json()["choices"][0]["message"]["content"]
    stop = free[8:11]
    cut = free[: free.index(stop)]
    r = chat(server.url, msgs, max_tokens=20, stop=[stop, "never-appears"]).json()
    assert r["choices"][0]["message"]["content"] == cut and r["choices"][0]["finish_reason"] == "stop"
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={"messages": msgs, "max_tokens": 20, "stop": stop, "stream": True}, timeout=60) as s:
        chunks = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == cut
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_sampling_with_a_seed_is_reproducible(server):
    msgs = [{"role": "user", "content": "Pick words."}]
    a, b, c = (chat(server.url, msgs, max_tokens=10, temperature=1.0, seed=s).json()["choices"][0]["message"]["content"] for s in (5, 5, 6))
    assert a == b != c


# ---------------------------------------------------------------- Anthropic client
def test_anthropic_messages_match_openai(anthropic_client, openai_client):
    raw = png(noise=True, color=(1, 2, 3))
    want = openai_client.chat.completions.create(
        model="tiny", max_tokens=10, messages=[{"role": "system", "content": "Be brief."}] + ask(data_url(raw), "Describe."))
    content = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(raw).decode()}},
               {"type": "text", "text": "Describe."}]
    m = anthropic_client.messages.create(model="tiny", max_tokens=10, system="Be brief.", messages=[{"role": "user", "content": content}])
    assert m.content[0].text == want.choices[0].message.content
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 10
    assert m.usage.input_tokens == want.usage.prompt_tokens
    with anthropic_client.messages.stream(model="tiny", max_tokens=10, system="Be brief.", messages=[{"role": "user", "content": content}]) as s:
        pieces = list(s.text_stream)
        final = s.get_final_message()
    assert len(pieces) > 2 and "".join(pieces) == m.content[0].text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 10


def test_anthropic_errors_use_the_anthropic_shape(anthropic_client, server):
    import anthropic

    with pytest.raises(anthropic.BadRequestError) as e:
        anthropic_client.messages.create(model="tiny", max_tokens=5, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "%%%not base64%%%"}}]}])
    assert e.value.status_code == 400 and e.value.body["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{server.url}/v1/messages", json={"messages": [{"role": "user", "content": "no max_tokens"}]})
    assert r.status_code == 422 and r.json()["type"] == "error" and "max_tokens" in r.json()["error"]["message"]


# ---------------------------------------------------------------- embeddings
def test_embeddings_text_and_images(openai_client):
    fake = FakeEmbedder()
    img = png(8, 8, (30, 60, 90))
    r = openai_client.embeddings.create(model="fake-clip", input=["a red cube", data_url(img), "two"])  # the client asks for base64
    assert [d.index for d in r.data] == [0, 1, 2]
    np.testing.assert_allclose(r.data[0].embedding, fake.text_vec("a red cube"), atol=1e-6)
    np.testing.assert_allclose(r.data[1].embedding, fake.image_vec(Image.open(io.BytesIO(img)).convert("RGB")), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(r.data[2].embedding), 1.0, atol=1e-5)
    floats = openai_client.embeddings.create(model="fake-clip", input="a red cube", encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, r.data[0].embedding, atol=1e-6)


def test_dual_encoder_fits_the_embedder_protocol():
    from vlmkit.models.dual_encoder import DualEncoder

    assert callable(DualEncoder.encode_text) and callable(DualEncoder.encode_images)


def test_embeddings_without_a_model_is_404(tight):
    r = httpx.post(f"{tight.url}/v1/embeddings", json={"input": "x"}, headers=tight.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


# ---------------------------------------------------------------- limits and malformed input
def _bad_cases():
    ok_text = {"type": "text", "text": "hi"}
    img = lambda url: {"type": "image_url", "image_url": {"url": url}}  # noqa: E731
    user = lambda *parts: {"messages": [{"role": "user", "content": list(parts)}], "max_tokens": 2}  # noqa: E731
    return [
        ("body_too_large", dict(content=b'{"messages": "' + b"x" * 2_100_000 + b'"}'), 413, "body_too_large"),
        ("chunked_body_too_large", dict(content=iter([b"x" * 500_000] * 5)), 413, "body_too_large"),
        ("image_bytes", dict(json=user(img(data_url(os.urandom(600_000))), ok_text)), 413, "image_too_large"),
        ("image_pixels", dict(json=user(img(data_url(png(1200, 1000))), ok_text)), 400, "image_too_many_pixels"),
        ("decompression_bomb", dict(json=user(img(data_url(bomb_png())), ok_text)), 400, "image_too_many_pixels"),
        ("too_many_images", dict(json=user(*[img(data_url(png()))] * 4, ok_text)), 400, "too_many_images"),
        ("context", dict(json={"messages": [{"role": "user", "content": "word " * 1100}], "max_tokens": 2}), 400, "context_length_exceeded"),
        ("max_tokens_over_context", dict(json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}), 400, "context_length_exceeded"),
        ("bad_base64", dict(json=user(img("data:image/png;base64,@@@notbase64"), ok_text)), 400, "invalid_base64"),
        ("not_base64_data_url", dict(json=user(img("data:image/png,rawbytes"), ok_text)), 400, "invalid_image_url"),
        ("not_an_image", dict(json=user(img(data_url(b"hello world, no image here")), ok_text)), 400, "invalid_image"),
        ("truncated_image", dict(json=user(img(data_url(png(64, 64, noise=True)[:300])), ok_text)), 400, "invalid_image"),
        ("bad_json", dict(content=b'{"messages": [', headers={"content-type": "application/json"}), 400, "invalid_json"),
        ("json_not_object", dict(json=[1, 2]), 400, "invalid_json"),
        ("unknown_part", dict(json=user({"type": "audio", "audio": "x"})), 422, "invalid_request"),
        ("image_part_without_url", dict(json=user({"type": "image_url"})), 422, "invalid_request"),
        ("no_messages", dict(json={"max_tokens": 2}), 422, "invalid_request"),
        ("bad_role", dict(json={"messages": [{"role": "robot", "content": "x"}]}), 422, "invalid_request"),
        ("negative_max_tokens", dict(json={"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}), 422, "invalid_request"),
        ("n_2", dict(json={"messages": [{"role": "user", "content": "x"}], "n": 2}), 400, "invalid_request"),
        ("schema_unsupported", dict(json={"messages": [{"role": "user", "content": "x"}], "response_format": {
            "type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "string", "pattern": "a+"}}}}), 400, "unsupported_schema"),
        ("schema_needs_more_tokens", dict(json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "response_format": {
            "type": "json_schema", "json_schema": {"name": "s", "schema": PERSON}}}), 400, "unsupported_schema"),
    ]


@pytest.mark.parametrize("name,kw,status,code", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_limits_and_malformed_input(server, name, kw, status, code):
    r = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    alive(server.url)


def test_image_placeholder_text_cannot_open_visual_slots(server):
    r = chat(server.url, [{"role": "user", "content": "what does <image> mean in HTML? <image><image>"}], max_tokens=2)
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens_details"]["image_tokens"] == 0


# ---------------------------------------------------------------- SSRF
@pytest.mark.parametrize("url,code", [
    ("http://127.0.0.1:{port}/health", "url_not_allowed"),
    ("http://localhost:{port}/v1/models", "url_not_allowed"),
    ("http://169.254.169.254/latest/meta-data/", "url_not_allowed"),
    ("https://[::1]/x.png", "url_not_allowed"),
    ("file:///etc/passwd", "local_files_refused"),
    ("/etc/passwd", "local_files_refused"),
    ("../../etc/passwd", "local_files_refused"),
    ("ftp://127.0.0.1/x.png", "invalid_image_url"),
    ("gopher://127.0.0.1:25/x", "invalid_image_url"),
])
def test_ssrf_attempts_are_refused_by_default(server, url, code):
    r = chat(server.url, ask(url.format(port=server.url.rsplit(":", 1)[1])), max_tokens=2)
    assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text


@pytest.mark.parametrize("path,status,code", [
    ("http://{host}/cat.png", 200, None),
    ("http://{host}/redirect", 400, "url_redirect"),  # to the server's own /health
    ("http://{host}/redirect-file", 400, "url_redirect"),  # to file:///etc/passwd
    ("http://{host}/missing.png", 400, "url_fetch_failed"),
    ("http://127.0.0.2:{port}/cat.png", 400, "url_not_allowed"),  # same port, another host
    ("http://127.0.0.1:1/cat.png", 400, "url_not_allowed"),  # same host, another port
    ("ok.png", 200, None),
    ("{dir}/ok.png", 200, None),
    ("file://{dir}/ok.png", 200, None),
    ("{dir}/../../etc/passwd", 400, "local_file_outside_root"),
    ("escape.png", 400, "local_file_outside_root"),  # a symlink pointing out of the directory
    ("nothere.png", 400, "local_file_missing"),
])
def test_allow_lists_for_hosts_and_files(tight, files_dir, path, status, code):
    url = path.format(host=tight.host.netloc, port=tight.host.server_address[1], dir=files_dir)
    r = chat(tight.url, ask(url), headers=tight.headers, max_tokens=2)
    assert r.status_code == status, r.text
    if code:
        assert r.json()["error"]["code"] == code


def test_api_key_is_required_when_set(tight):
    r = chat(tight.url, [{"role": "user", "content": "hi"}], max_tokens=2)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{tight.url}/v1/models", headers={"x-api-key": KEY}).status_code == 200
    alive(tight.url, tight.headers)


# ---------------------------------------------------------------- batching, cache, back-pressure, deadlines
def test_concurrent_requests_share_one_batch_and_get_their_own_answers(server, vlm):
    prompts = [f"Question number {i}: what is {i} plus {i}?" * (i + 1) for i in range(4)]
    budgets = [8, 3, 8, 5]  # rows of one batch stop at their own max_tokens

    def answer(r):
        j = r.json()
        return j["choices"][0]["message"]["content"], j["choices"][0]["finish_reason"], j["usage"]["completion_tokens"]

    alone = [answer(chat(server.url, [{"role": "user", "content": p}], max_tokens=n)) for p, n in zip(prompts, budgets)]
    with Gate(vlm) as gate, ThreadPoolExecutor(5) as pool:
        first = pool.submit(chat, server.url, [{"role": "user", "content": "hold the worker"}], max_tokens=2)
        assert gate.entered.wait(30)
        futures = [pool.submit(chat, server.url, [{"role": "user", "content": p}], max_tokens=n) for p, n in zip(prompts, budgets)]
        t0 = time.monotonic()
        while server.app.state.server.batcher.queued < 4 and time.monotonic() - t0 < 30:
            time.sleep(0.01)
        gate.release.set()
        batched = [answer(f.result()) for f in futures]
        assert first.result().status_code == 200
    assert gate.calls == [1, 4]  # the four waiting requests ran as one batch
    assert batched == alone  # and each got exactly the answer it gets alone
    assert [n for _, _, n in batched] == budgets and {f for _, f, _ in batched} == {"length"}


def test_same_image_again_costs_no_vision_pass(server, vlm, monkeypatch):
    seen = []
    orig = vlm.model.encode_images
    monkeypatch.setattr(vlm.model, "encode_images", lambda px: (seen.append(px.shape[0]), orig(px))[1])
    url = data_url(png(33, 33, (9, 99, 199)))
    texts = [chat(server.url, ask(url, q), max_tokens=3).json()["choices"][0]["message"]["content"] for q in ("First?", "First?", "Follow-up?")]
    assert seen == [1]  # encoded once; the repeat and the follow-up hit the cache
    assert texts[0] == texts[1]
    chat(server.url, ask(data_url(png(33, 33, (1, 1, 1))), "Other?"), max_tokens=3)
    assert seen == [1, 1]


def test_full_queue_answers_429_with_retry_after(tight):
    with Gate(tight.vlm) as gate, ThreadPoolExecutor(2) as pool:
        running = pool.submit(chat, tight.url, [{"role": "user", "content": "a"}], tight.headers, max_tokens=2)
        assert gate.entered.wait(30)
        queued = pool.submit(chat, tight.url, [{"role": "user", "content": "b"}], tight.headers, max_tokens=2)
        t0 = time.monotonic()
        while tight.app_server.batcher.queued < 1 and time.monotonic() - t0 < 30:
            time.sleep(0.01)
        r = chat(tight.url, [{"role": "user", "content": "c"}], tight.headers, max_tokens=2)
        assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
        assert int(r.headers["retry-after"]) >= 1
        gate.release.set()
        assert running.result().status_code == 200 and queued.result().status_code == 200
    alive(tight.url, tight.headers)


def test_deadline_answers_504_and_the_server_recovers(tight):
    with Gate(tight.vlm) as gate, ThreadPoolExecutor(2) as pool:
        running = pool.submit(chat, tight.url, [{"role": "user", "content": "a"}], tight.headers, max_tokens=2)
        assert gate.entered.wait(30)
        t0 = time.monotonic()
        r = chat(tight.url, [{"role": "user", "content": "waits too long"}], tight.headers, max_tokens=2)  # deadline 2 s
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert 1.5 < time.monotonic() - t0 < 10
        gate.release.set()
        running.result()
    alive(tight.url, tight.headers)


def test_a_client_leaving_mid_stream_frees_its_row(server):
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", timeout=60,
                      json={"messages": [{"role": "user", "content": "go on"}], "max_tokens": 900, "stream": True}) as r:
        next(r.iter_lines())
    t0 = time.monotonic()
    while httpx.get(f"{server.url}/health").json()["running"] and time.monotonic() - t0 < 20:
        time.sleep(0.05)
    assert httpx.get(f"{server.url}/health").json()["running"] == 0
    alive(server.url)


def test_access_log_is_one_json_line_per_request(server):
    lines = []
    handler = logging.Handler()
    handler.emit = lambda rec: lines.append(json.loads(rec.getMessage()))
    log = logging.getLogger("vlmkit.serve.access")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        r = chat(server.url, ask(data_url(png())), max_tokens=3)
        r_bad = httpx.post(f"{server.url}/v1/chat/completions", content=b"{")
        # the line is written after the last byte is sent, so the client can get its answer first
        want = {r.headers["x-request-id"], r_bad.headers["x-request-id"]}
        t0 = time.monotonic()
        while not want <= {line["request_id"] for line in lines} and time.monotonic() - t0 < 10:
            time.sleep(0.02)
    finally:
        log.removeHandler(handler)
    by_id = {line["request_id"]: line for line in lines}
    ok, bad = by_id[r.headers["x-request-id"]], by_id[r_bad.headers["x-request-id"]]
    usage = r.json()["usage"]
    assert ok["path"] == "/v1/chat/completions" and ok["status"] == 200 and ok["latency_ms"] > 0
    assert ok["prompt_tokens"] == usage["prompt_tokens"] and ok["completion_tokens"] == 3 and ok["image_tokens"] == 16
    assert ok["batch_size"] == 1 and ok["request_id"] == r.headers["x-request-id"]
    assert bad["status"] == 400
