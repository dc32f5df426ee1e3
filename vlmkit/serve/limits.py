"""What the server accepts: size and count limits, and where images may come from.

Every refusal is an ApiError carrying its HTTP status and an OpenAI-style body:

    413  body over max_body_bytes, image over max_image_bytes
    400  malformed JSON or base64, an undecodable image, too many pixels (a decompression
         bomb is refused from its header, before its pixels are allocated), too many images,
         prompt + max_tokens over the context, a URL that is not allowed
    422  JSON that does not match the request schema (wrong types, unknown content parts)
    429  the batching queue is full (with Retry-After)
    504  the request waited or ran past its deadline

Image URLs: `data:` base64 is always accepted. http(s) only for hosts on the
operator's allow-list, fetched without following redirects (a redirect could
point anywhere, 127.0.0.1 included). Local paths and file:// only under
--allow-local-files DIR, checked after resolving symlinks and "..".
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

MIB = 1024 * 1024


@dataclass
class Limits:
    max_body_bytes: int = 20 * MIB
    max_image_bytes: int = 10 * MIB
    max_image_pixels: int = 25_000_000  # a 6000x4000 photo; a bomb claims far more
    max_images_per_request: int = 8
    max_embedding_inputs: int = 256
    default_max_tokens: int = 256
    allow_hosts: tuple[str, ...] = ()  # "host" or "host:port", for http(s) image URLs
    allow_local_files: str | None = None  # a directory; None refuses local paths
    fetch_timeout_s: float = 10.0

    def __post_init__(self):
        self.allow_hosts = tuple(h.strip().lower() for h in self.allow_hosts if h.strip())
        for name in ("max_body_bytes", "max_image_bytes", "max_image_pixels", "max_images_per_request", "default_max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


class ApiError(Exception):
    """An error answered as JSON with `status`; `code` is machine-readable, `message` is for people."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 413: "request_too_large",
             422: "invalid_request_error", 429: "rate_limit_error", 500: "api_error", 503: "overloaded_error", 504: "timeout_error"}

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return self.TYPES.get(self.status, "api_error")

    def openai_body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def anthropic_body(self) -> dict:
        return {"type": "error", "error": {"type": self.type, "message": self.message}}


# ---------------------------------------------------------------- request bodies
async def read_body(request, limits: Limits) -> bytes:
    """The raw body, refused with 413 as soon as it is known to be too large."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise ApiError(400, "invalid Content-Length header", "invalid_header") from None
        if n > limits.max_body_bytes:
            raise ApiError(413, f"request body of {n:,} bytes is over the limit of {limits.max_body_bytes:,}", "body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_body_bytes:  # chunked uploads declare no length: count as they arrive
            raise ApiError(413, f"request body is over the limit of {limits.max_body_bytes:,} bytes", "body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------- images
def decode_base64_image(payload: str, limits: Limits, where: str) -> bytes:
    if len(payload) * 3 // 4 > limits.max_image_bytes + 3:  # refuse before decoding
        raise ApiError(413, f"{where}: image of about {len(payload) * 3 // 4:,} bytes is over the limit of {limits.max_image_bytes:,}", "image_too_large", where)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where}: malformed base64 image data", "invalid_base64", where) from None
    if not data:
        raise ApiError(400, f"{where}: empty image data", "invalid_image", where)
    if len(data) > limits.max_image_bytes:
        raise ApiError(413, f"{where}: image of {len(data):,} bytes is over the limit of {limits.max_image_bytes:,}", "image_too_large", where)
    return data


def decode_data_url(url: str, limits: Limits, where: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header.lower():
        raise ApiError(400, f"{where}: image data URLs must be base64 (data:image/...;base64,...)", "invalid_image_url", where)
    return decode_base64_image(payload.strip(), limits, where)


async def fetch_image_url(url: str, limits: Limits, where: str) -> bytes:
    """The bytes behind an image URL, if the operator allows where it points."""
    if url.startswith("data:"):
        return decode_data_url(url, limits, where)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return await _fetch_remote(url, parts, limits, where)
    if scheme == "file" or (scheme == "" and url):
        return _read_local(unquote(parts.path) if scheme == "file" else url, limits, where)
    raise ApiError(400, f"{where}: unsupported image URL scheme {scheme!r}: use a data: URL", "invalid_image_url", where)


def host_allowed(parts, allow: tuple[str, ...]) -> bool:
    host = (parts.hostname or "").lower()
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        return False
    return bool(host) and (host in allow or f"{host}:{port}" in allow)


async def _fetch_remote(url: str, parts, limits: Limits, where: str) -> bytes:
    if not host_allowed(parts, limits.allow_hosts):
        raise ApiError(400, f"{where}: remote image URLs are refused for host {parts.hostname!r}: send the image as a data: URL "
                            "(the operator can allow hosts with --allow-hosts)", "url_not_allowed", where)
    import httpx

    try:
        async with httpx.AsyncClient(follow_redirects=False, timeout=limits.fetch_timeout_s, trust_env=False) as client:
            async with client.stream("GET", url) as r:
                if r.is_redirect:
                    raise ApiError(400, f"{where}: the image URL redirects ({r.status_code}); redirects are not followed", "url_redirect", where)
                if r.status_code != 200:
                    raise ApiError(400, f"{where}: fetching the image gave HTTP {r.status_code}", "url_fetch_failed", where)
                chunks, size = [], 0
                async for chunk in r.aiter_bytes():
                    size += len(chunk)
                    if size > limits.max_image_bytes:
                        raise ApiError(413, f"{where}: image is over the limit of {limits.max_image_bytes:,} bytes", "image_too_large", where)
                    chunks.append(chunk)
                return b"".join(chunks)
    except httpx.HTTPError as e:
        raise ApiError(400, f"{where}: could not fetch the image ({type(e).__name__})", "url_fetch_failed", where) from None


def _read_local(path: str, limits: Limits, where: str) -> bytes:
    if not limits.allow_local_files:
        raise ApiError(400, f"{where}: local file paths are refused: send the image as a data: URL "
                            "(the operator can allow a directory with --allow-local-files)", "local_files_refused", where)
    root = Path(limits.allow_local_files).resolve()
    p = Path(path)
    target = (p if p.is_absolute() else root / p).resolve()  # resolve() follows symlinks and "..", so escapes show
    if not target.is_relative_to(root):
        raise ApiError(400, f"{where}: {path!r} is outside the allowed directory", "local_file_outside_root", where)
    if not target.is_file():
        raise ApiError(400, f"{where}: no such file {path!r} in the allowed directory", "local_file_missing", where)
    if target.stat().st_size > limits.max_image_bytes:
        raise ApiError(413, f"{where}: file is over the limit of {limits.max_image_bytes:,} bytes", "image_too_large", where)
    return target.read_bytes()


def decode_image(data: bytes, limits: Limits, where: str):
    """Bytes -> a checked RGB PIL image tagged with its content hash (the feature cache's key).

    The pixel count is read from the header first: a decompression bomb is refused
    before a single pixel is allocated.
    """
    from PIL import Image, UnidentifiedImageError

    from ..errors import ImageError
    from ..processing.images import ImageLimits, load_image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            w, h = Image.open(io.BytesIO(data)).size
    except Image.DecompressionBombError:  # Pillow's own guard, for headers claiming billions of pixels
        raise ApiError(400, f"{where}: the image claims more pixels than the limit of {limits.max_image_pixels:,} (a decompression bomb?)",
                       "image_too_many_pixels", where) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise ApiError(400, f"{where}: not a readable image", "invalid_image", where) from None
    if w * h > limits.max_image_pixels:
        raise ApiError(400, f"{where}: {w}x{h} = {w * h:,} pixels is over the limit of {limits.max_image_pixels:,}", "image_too_many_pixels", where)
    try:
        img = load_image(data, ImageLimits(max_pixels=limits.max_image_pixels, max_bytes=limits.max_image_bytes))
        img.load()  # truncated data fails here, not later inside a batch
    except (OSError, SyntaxError, ValueError):
        raise ApiError(400, f"{where}: corrupt or truncated image", "invalid_image", where) from None
    except ImageError as e:
        raise ApiError(400, f"{where}: {e}", "invalid_image", where) from None
    img.info["content_hash"] = hashlib.sha256(data).hexdigest()
    return img
