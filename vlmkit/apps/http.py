"""POST /v1/extract for the server (vlmkit/serve/app.py registers it; the logic lives here, beside the extractor).

Request body (JSON):
    {"image": "data:image/png;base64,..." | "https://...",    required
     "schema": "receipt" | "invoice" | {a JSON schema},      default "receipt"
     "mode": "ocr" | "ocr+vlm" | "vlm",                      default "ocr"
     "tolerance": 0.005, "retry": true}
Response: Extraction.to_dict() (data, evidence boxes, verified / status, checks, confidence).

In the VLM modes the model's generation goes through the server's own batcher,
like a chat request, so extraction never runs the model beside the batch loop.
"""
from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

ALLOWED = {"image", "schema", "mode", "tolerance", "retry", "max_new_tokens"}


class _BatchedVLM:
    """What the extractor needs of a VLM (`cfg`, `generate`), backed by the server's batcher."""

    def __init__(self, server, request, loop):
        self.server, self.request, self.loop = server, request, loop
        self.cfg = server.vlm.cfg

    def generate(self, conversations, json_schema=None, max_new_tokens: int = 512, **_ignored):
        # tiling requests are dropped: the server prepares prompts with its own policy
        async def one(messages):
            r = await self.server.submit(self.request, messages, max_new_tokens, 0.0, None, None, [], json_schema)
            text, info = await self.server.collect(r.job)
            return SimpleNamespace(text=text, finish_reason=info["finish_reason"])

        return [asyncio.run_coroutine_threadsafe(one(c), self.loop).result() for c in conversations]


async def extract_endpoint(server, request):
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import Response

    from ..errors import VlmkitError
    from ..serve.limits import ApiError, read_body
    from .extract import MODES, ExtractConfig, Extractor
    from .verify import VerifyConfig

    server.check_auth(request)
    try:
        body = json.loads(await read_body(request, server.limits) or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the body must be JSON", "invalid_request") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", "invalid_request")
    unknown = sorted(set(body) - ALLOWED)
    if unknown:
        raise ApiError(400, f"unknown fields {unknown}; allowed: {sorted(ALLOWED)}", "invalid_request", unknown[0])
    image = body.get("image")
    if not isinstance(image, str) or not image:
        raise ApiError(400, "image is required: a data:image/...;base64 URL or an http(s) URL", "invalid_request", "image")
    mode = body.get("mode", "ocr")
    if mode not in MODES:
        raise ApiError(400, f"mode must be one of {list(MODES)}", "invalid_request", "mode")
    tol = body.get("tolerance", 0.005)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or tol < 0:
        raise ApiError(400, "tolerance must be a number >= 0", "invalid_request", "tolerance")
    max_new = body.get("max_new_tokens", 512)
    if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1:
        raise ApiError(400, "max_new_tokens must be a positive integer", "invalid_request", "max_new_tokens")
    retry = body.get("retry", True)
    if not isinstance(retry, bool):
        raise ApiError(400, "retry must be true or false", "invalid_request", "retry")
    img = await server.load_image(image, "image")
    model = _BatchedVLM(server, request, asyncio.get_running_loop()) if mode != "ocr" else None
    try:
        cfg = ExtractConfig(mode=mode, retry=retry, max_new_tokens=max_new,
                            verify=VerifyConfig(tolerance=float(tol)))
        extractor = Extractor(body.get("schema", "receipt"), cfg, model=model)
        result = await run_in_threadpool(extractor, img)
    except ApiError:
        raise
    except VlmkitError as e:
        raise ApiError(400, str(e), "extraction_failed") from None
    request.state.usage = {"mode": mode, "verified": result.verified}
    return Response(json.dumps(result.to_dict(), ensure_ascii=False), media_type="application/json")
