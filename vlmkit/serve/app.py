"""The HTTP server: OpenAI-compatible chat completions and embeddings, Anthropic Messages, a web page.

    app = create_app(vlmkit.load(), embedder=load_dual_encoder(...))
    uvicorn.run(app, host="127.0.0.1", port=8000)     # or: vlmkit serve --model DIR

Routes: POST /v1/chat/completions, POST /v1/messages, POST /v1/embeddings,
GET /v1/models, GET /health, GET / (the web page). Limits and their status
codes are listed in limits.py; batching in batching.py. Every request is
logged as one JSON line on the "vlmkit.serve.access" logger, with latency and
token counts.
"""
# no `from __future__ import annotations`: FastAPI must see the real Request class on the route functions
import asyncio
import base64
import contextlib
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import VlmkitError
from .batching import Batcher, BatchConfig, FeatureCache, Job
from .limits import ApiError, Limits, decode_base64_image, decode_image, fetch_image_url, read_body
from . import schemas as S

log = logging.getLogger("vlmkit.serve")
access_log = logging.getLogger("vlmkit.serve.access")
STATIC = Path(__file__).resolve().parent / "static"


class Embedder(Protocol):
    """What /v1/embeddings needs: vlmkit.models.dual_encoder.DualEncoder fits. Outputs are [N, D], L2-normalised."""

    def encode_text(self, texts: list[str]): ...

    def encode_images(self, images: list): ...


@dataclass
class _Request:
    """A chat request turned into model input, whichever wire format it came in."""

    job: Job
    prompt_tokens: int
    image_tokens: int


class Server:
    def __init__(self, vlm, limits: Limits, batch: BatchConfig, embedder=None, model_name: str | None = None,
                 api_key: str | None = None, default_temperature: float = 0.0, feature_cache_items: int = 256):
        from ..generation import eos_ids

        self.vlm, self.limits, self.embedder, self.api_key = vlm, limits, embedder, api_key
        self.model_name = model_name or (Path(vlm.path).name if getattr(vlm, "path", None) else vlm.cfg.name)
        self.embed_name = _embedder_name(embedder)
        self.default_temperature = default_temperature
        self.context = vlm.cfg.lm.max_position_embeddings
        self.eos = eos_ids(vlm.tokenizer, vlm.model.lm.model)
        self.cache = FeatureCache(feature_cache_items)
        vlm.feature_cache = self.cache
        self.batcher = Batcher(vlm, batch)
        self._embed_lock = threading.Lock()
        self._tok_lock = threading.Lock()
        self.draining = False
        self.started = time.time()

    # ---- shared steps ----
    def _prompt(self, messages: list[dict]):
        with self._tok_lock:  # HF fast tokenizers are not safe to call from several threads at once
            return self.vlm.prompt(messages)

    def check_auth(self, request) -> None:
        if not self.api_key:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if given != self.api_key:
            raise ApiError(401, "missing or wrong API key", "invalid_api_key")

    async def load_image(self, url: str | None, where: str, b64: str | None = None):
        from starlette.concurrency import run_in_threadpool

        if b64 is not None:
            data = decode_base64_image(b64, self.limits, where)
        else:
            data = await fetch_image_url(url or "", self.limits, where)
        return await run_in_threadpool(decode_image, data, self.limits, where)

    def check_image_count(self, n: int) -> None:
        if n > self.limits.max_images_per_request:
            raise ApiError(400, f"{n} images in one request is over the limit of {self.limits.max_images_per_request}", "too_many_images")

    def safe_text(self, text: str) -> str:
        """User text must not be able to open visual slots: break up any literal image placeholder."""
        tok = self.vlm.cfg.image_token
        return text.replace(tok, tok[0] + "\u200b" + tok[1:]) if tok and tok in text else text

    async def submit(self, request, messages: list[dict], max_tokens: int | None, temperature: float | None,
                     top_p: float | None, seed: int | None, stop: list[str], schema: dict | None) -> _Request:
        """Tokenise, check the budget, build the row's sampler and queue it (400 / 429 on failure)."""
        from starlette.concurrency import run_in_threadpool

        from ..constrained import JsonConstraint, RowSampler, SchemaError, grammar_for

        try:
            prompt = await run_in_threadpool(self._prompt, messages)
        except VlmkitError as e:
            raise ApiError(400, str(e), "invalid_prompt") from None
        n_prompt = len(prompt.input_ids)
        n_image = sum(1 for t in prompt.input_ids if t == self.vlm.cfg.image_token_id)
        room = self.context - n_prompt
        if max_tokens is None:
            max_tokens = min(self.limits.default_max_tokens, room)
        if max_tokens < 1 or n_prompt + max_tokens > self.context:
            raise ApiError(400, f"this model's context is {self.context:,} tokens, but the request needs {n_prompt + max(max_tokens, 1):,} "
                                f"({n_prompt:,} in the prompt, {n_image:,} of them for images, and {max(max_tokens, 1):,} to generate)",
                           "context_length_exceeded", "messages")
        stop = [s for s in stop if s]
        constraint = None
        if schema is not None:
            if stop:
                raise ApiError(400, "stop sequences cannot be combined with a JSON schema (they would cut the JSON short)", "invalid_request", "stop")
            try:
                grammar = await run_in_threadpool(grammar_for, schema, self.vlm.tokenizer)
                constraint = JsonConstraint(grammar, max_tokens)
            except SchemaError as e:
                raise ApiError(400, str(e), "unsupported_schema", "response_format") from None
        temperature = self.default_temperature if temperature is None else temperature
        sampler = RowSampler(self.eos, max_tokens, temperature, 1.0 if top_p is None else top_p, seed, constraint)
        loop = asyncio.get_running_loop()
        job = Job(prompt, sampler, max_tokens, tuple(stop), loop, deadline=time.monotonic() + self.batcher.cfg.timeout_s)
        self.batcher.submit(job)
        request.state.usage = {"prompt_tokens": n_prompt, "image_tokens": n_image}
        return _Request(job, n_prompt, n_image)

    async def next_event(self, job: Job):
        left = job.deadline - time.monotonic()
        try:
            if left <= 0:
                raise asyncio.TimeoutError
            return await asyncio.wait_for(job.events.get(), left)
        except asyncio.TimeoutError:
            job.cancel()
            self.batcher.stats["timed_out"] += 1
            raise ApiError(504, f"the request ran past its deadline of {self.batcher.cfg.timeout_s:g} s", "timeout") from None
        except asyncio.CancelledError:  # the handler itself was cancelled (forced shutdown): nobody wants the row
            job.cancel()
            raise

    async def wait_start(self, job: Job) -> dict:
        kind, info = await self.next_event(job)
        if kind == "error":
            raise info
        return info

    async def stream_event(self, job: Job):
        """next_event for a stream already under way: its status line is sent, so a deadline or
        queue error arrives as an ("error", ApiError) event to format, not as an exception."""
        try:
            return await self.next_event(job)
        except ApiError as e:
            return "error", e

    async def collect(self, job: Job) -> tuple[str, dict]:
        parts = []
        while True:
            kind, data = await self.next_event(job)
            if kind == "delta":
                parts.append(data)
            elif kind == "done":
                return "".join(parts), data
            elif kind == "error":
                raise data

    def record(self, request, info: dict) -> None:
        request.state.usage = {**getattr(request.state, "usage", {}), "completion_tokens": info["completion_tokens"],
                               "batch_size": info["batch_size"], "queue_ms": info["queue_ms"]}

    # ---- OpenAI chat ----
    async def chat_messages(self, req: S.ChatRequest) -> list[dict]:
        self.check_image_count(sum(isinstance(p, S.ImagePart) for m in req.messages if isinstance(m.content, list) for p in m.content))
        out = []
        for i, m in enumerate(req.messages):
            role = "system" if m.role == "developer" else m.role
            if not isinstance(m.content, list):
                out.append({"role": role, "content": self.safe_text(m.content or "")})
                continue
            parts = []
            for j, p in enumerate(m.content):
                if isinstance(p, S.TextPart):
                    parts.append({"type": "text", "text": self.safe_text(p.text)})
                else:
                    parts.append({"type": "image", "image": await self.load_image(p.url, f"messages.{i}.content.{j}")})
            out.append({"role": role, "content": parts})
        return out

    async def chat_completions(self, request):
        self.check_auth(request)
        req = S.parse(S.ChatRequest, await read_body(request, self.limits))
        if req.n != 1:
            raise ApiError(400, "only n=1 is supported", "invalid_request", "n")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > 4:
            raise ApiError(400, "at most 4 stop sequences", "invalid_request", "stop")
        schema = None
        if req.response_format is not None and req.response_format.type == "json_schema":
            if req.response_format.json_schema is None:
                raise ApiError(422, "response_format.json_schema is required for type json_schema", "invalid_request", "response_format")
            schema = req.response_format.json_schema.schema_
        elif req.response_format is not None and req.response_format.type == "json_object":
            schema = {"type": "object"}
        messages = await self.chat_messages(req)
        r = await self.submit(request, messages, req.max_completion_tokens or req.max_tokens, req.temperature, req.top_p, req.seed, stop, schema)
        cid = S.new_id("chatcmpl-")
        if not req.stream:
            text, info = await self.collect(r.job)
            self.record(request, info)
            return _json(S.chat_completion(cid, self.model_name, text, info["finish_reason"],
                                           S.openai_usage(r.prompt_tokens, info["completion_tokens"], r.image_tokens)))
        await self.wait_start(r.job)  # queue errors and deadlines still get their status code
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def events():
            done = False
            try:
                yield S.chat_chunk(cid, self.model_name, {"role": "assistant", "content": ""})
                while True:
                    kind, data = await self.stream_event(r.job)
                    if kind == "delta":
                        yield S.chat_chunk(cid, self.model_name, {"content": data})
                    elif kind == "done":
                        done = True
                        self.record(request, data)
                        yield S.chat_chunk(cid, self.model_name, {}, data["finish_reason"])
                        if include_usage:
                            usage = S.openai_usage(r.prompt_tokens, data["completion_tokens"], r.image_tokens)
                            yield S.chat_chunk(cid, self.model_name, {}, usage=usage, choices=False)
                        yield "data: [DONE]\n\n"
                        return
                    else:
                        done = True
                        yield f"data: {json.dumps(data.openai_body())}\n\n"
                        yield "data: [DONE]\n\n"
                        return
            finally:
                if not done:
                    r.job.cancel()  # the client went away: free the row

        return _sse(events())

    # ---- Anthropic messages ----
    async def anthropic_messages(self, req: S.MessagesRequest) -> list[dict]:
        self.check_image_count(sum(isinstance(b, S.AImageBlock) for m in req.messages if isinstance(m.content, list) for b in m.content))
        out = []
        if req.system:
            system = req.system if isinstance(req.system, str) else "\n".join(b.text for b in req.system)
            out.append({"role": "system", "content": self.safe_text(system)})
        for i, m in enumerate(req.messages):
            if isinstance(m.content, str):
                out.append({"role": m.role, "content": self.safe_text(m.content)})
                continue
            parts = []
            for j, b in enumerate(m.content):
                where = f"messages.{i}.content.{j}"
                if isinstance(b, S.ATextBlock):
                    parts.append({"type": "text", "text": self.safe_text(b.text)})
                elif b.source.type == "base64":
                    if not b.source.data:
                        raise ApiError(400, f"{where}: image source has no data", "invalid_image", where)
                    parts.append({"type": "image", "image": await self.load_image(None, where, b64=b.source.data)})
                else:
                    parts.append({"type": "image", "image": await self.load_image(b.source.url, where)})
            out.append({"role": m.role, "content": parts})
        return out

    async def messages(self, request):
        self.check_auth(request)
        req = S.parse(S.MessagesRequest, await read_body(request, self.limits))
        messages = await self.anthropic_messages(req)
        r = await self.submit(request, messages, req.max_tokens, req.temperature, req.top_p, None, list(req.stop_sequences or []), None)
        mid = S.new_id("msg_")

        def stop_reason(info):
            return "stop_sequence" if info["stop_sequence"] else S.ANTHROPIC_STOP[info["finish_reason"]]

        if not req.stream:
            text, info = await self.collect(r.job)
            self.record(request, info)
            usage = {"input_tokens": r.prompt_tokens, "output_tokens": info["completion_tokens"]}
            return _json(S.anthropic_message(mid, self.model_name, text, stop_reason(info), info["stop_sequence"], usage))
        await self.wait_start(r.job)

        async def events():
            done = False
            try:
                start = S.anthropic_message(mid, self.model_name, "", None, None, {"input_tokens": r.prompt_tokens, "output_tokens": 0})
                yield S.anthropic_event("message_start", {"message": start})
                yield S.anthropic_event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
                yield S.anthropic_event("ping", {})
                while True:
                    kind, data = await self.stream_event(r.job)
                    if kind == "delta":
                        yield S.anthropic_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": data}})
                    elif kind == "done":
                        done = True
                        self.record(request, data)
                        yield S.anthropic_event("content_block_stop", {"index": 0})
                        yield S.anthropic_event("message_delta", {"delta": {"stop_reason": stop_reason(data), "stop_sequence": data["stop_sequence"]},
                                                                  "usage": {"output_tokens": data["completion_tokens"]}})
                        yield S.anthropic_event("message_stop", {})
                        return
                    else:
                        done = True
                        yield S.anthropic_event("error", {"error": data.anthropic_body()["error"]})
                        return
            finally:
                if not done:
                    r.job.cancel()

        return _sse(events())

    # ---- embeddings ----
    async def embeddings(self, request):
        from starlette.concurrency import run_in_threadpool

        self.check_auth(request)
        req = S.parse(S.EmbeddingsRequest, await read_body(request, self.limits))
        if self.embedder is None:
            raise ApiError(404, "no embedding model is loaded: start the server with --embed-model DIR", "model_not_found", "model")
        inputs = [req.input] if isinstance(req.input, str) else req.input
        if not inputs:
            raise ApiError(400, "input must not be empty", "invalid_request", "input")
        if len(inputs) > self.limits.max_embedding_inputs:
            raise ApiError(400, f"{len(inputs)} inputs is over the limit of {self.limits.max_embedding_inputs}", "too_many_inputs", "input")
        texts, images, order = [], [], []
        for i, x in enumerate(inputs):
            if x.startswith("data:image/"):
                order.append(("image", len(images)))
                images.append(await self.load_image(x, f"input.{i}"))
            elif not x.strip():
                raise ApiError(400, f"input.{i}: empty string", "invalid_request", f"input.{i}")
            else:
                order.append(("text", len(texts)))
                texts.append(x)
        text_vecs, image_vecs = await run_in_threadpool(self._embed, texts, images)
        vecs = [text_vecs[k] if kind == "text" else image_vecs[k] for kind, k in order]
        data = [{"object": "embedding", "index": i, "embedding": _encode_vector(v, req.encoding_format)} for i, v in enumerate(vecs)]
        n_tokens = sum(len(t.split()) for t in texts)  # approximate: the text tower's tokenizer is its own business
        request.state.usage = {"prompt_tokens": n_tokens, "images": len(images)}
        return _json({"object": "list", "data": data, "model": self.embed_name, "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}})

    def _embed(self, texts: list[str], images: list):
        import numpy as np
        import torch

        def arr(x):
            return (x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)).astype(np.float32)

        with self._embed_lock, torch.no_grad():
            tv = arr(self.embedder.encode_text(texts)) if texts else None
            encode = getattr(self.embedder, "encode_images", None) or self.embedder.encode_image
            iv = arr(encode(images)) if images else None
        return tv, iv

    # ---- small GETs ----
    def models(self) -> dict:
        ids = [self.model_name] + ([self.embed_name] if self.embedder is not None else [])
        return {"object": "list", "data": [{"id": i, "object": "model", "created": int(self.started), "owned_by": "vlmkit"} for i in ids]}

    def health(self) -> dict:
        return {"status": "draining" if self.draining else "ok", "model": self.model_name, "embedding_model": self.embed_name,
                "queued": self.batcher.queued, **self.batcher.stats, "feature_cache": self.cache.stats()}


def _embedder_name(embedder) -> str | None:
    if embedder is None:
        return None
    mid = getattr(embedder, "model_id", None)
    return (mid() if callable(mid) else mid) or type(embedder).__name__


def _encode_vector(v, fmt: str):
    import numpy as np

    v = np.asarray(v, dtype="<f4")
    return base64.b64encode(v.tobytes()).decode() if fmt == "base64" else v.tolist()


def _json(body: dict, status: int = 200, headers: dict | None = None):
    from starlette.responses import Response

    return Response(json.dumps(body, ensure_ascii=False), status_code=status, headers=headers, media_type="application/json")


def _sse(gen):
    from starlette.responses import StreamingResponse

    return StreamingResponse(gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class AccessLog:
    """Pure ASGI middleware: one JSON line per request, written when its last byte is sent (streams included)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        rid = uuid.uuid4().hex[:16]
        state = scope.setdefault("state", {})
        status, logged = [500], [False]

        def write():
            if logged[0]:
                return
            logged[0] = True
            usage = state.get("usage") or {}
            line = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), "request_id": rid, "method": scope["method"],
                    "path": scope["path"], "status": status[0], "latency_ms": round((time.perf_counter() - t0) * 1000, 1),
                    "client": (scope.get("client") or ("", 0))[0], **usage}
            access_log.info(json.dumps(line))

        async def send_logged(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
                msg = {**msg, "headers": list(msg.get("headers", [])) + [(b"x-request-id", rid.encode())]}
            await send(msg)
            if msg["type"] == "http.response.body" and not msg.get("more_body", False):
                write()

        try:
            await self.app(scope, receive, send_logged)
        finally:
            write()  # the client went away mid-stream, or the app raised


def create_app(vlm, limits: Limits | None = None, batch: BatchConfig | None = None, embedder=None, model_name: str | None = None,
               api_key: str | None = None, default_temperature: float = 0.0, feature_cache_items: int = 256):
    """A FastAPI app serving `vlm` (and `embedder` for /v1/embeddings); the batcher runs for the app's lifetime."""
    from fastapi import FastAPI, Request
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse

    server = Server(vlm, limits or Limits(), batch or BatchConfig(), embedder, model_name, api_key, default_temperature, feature_cache_items)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        from ..constrained import token_table

        server.batcher.start()
        await run_in_threadpool(token_table, vlm.tokenizer)  # built now, not on the first JSON request
        log.info("serving %s", server.model_name)
        try:
            yield
        finally:
            # uvicorn has already waited for in-flight requests; anything still queued finishes too
            server.draining = True
            await run_in_threadpool(server.batcher.stop)

    app = FastAPI(title="vlmkit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    def error_response(request, e: ApiError):
        body = e.anthropic_body() if request.url.path.startswith("/v1/messages") else e.openai_body()
        return _json(body, e.status, e.headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return error_response(request, e)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException):
        return error_response(request, ApiError(e.status_code, str(e.detail), "not_found" if e.status_code == 404 else None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error_response(request, ApiError(500, f"internal error: {type(e).__name__}", "internal_error"))

    page = (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    @app.get("/health")
    async def health():
        return server.health()

    @app.get("/v1/models")
    async def models(request: Request):
        server.check_auth(request)
        return server.models()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await server.chat_completions(request)

    @app.post("/v1/messages")
    async def messages(request: Request):
        return await server.messages(request)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        return await server.embeddings(request)

    @app.post("/v1/extract")
    async def extract(request: Request):  # receipts/invoices -> checked JSON (vlmkit/apps/http.py)
        from ..apps.http import extract_endpoint

        return await extract_endpoint(server, request)

    app.add_middleware(AccessLog)
    return app


class ServerThread:
    """uvicorn in a background thread, on a socket bound before it starts (so no port race).

    For tests, notebooks and benchmarks:  with ServerThread(create_app(vlm)) as s: httpx.get(s.url + "/health")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import socket

        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=30))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, name="vlmkit-uvicorn", daemon=True)

    def start(self, timeout: float = 60.0) -> "ServerThread":
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > timeout:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
