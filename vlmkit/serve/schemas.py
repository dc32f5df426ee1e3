"""Request bodies (pydantic) and response bodies of the three wire formats the server speaks.

OpenAI chat completions and embeddings, and Anthropic Messages. Unknown fields
are ignored, as the official APIs' clients send fields we have no use for; a
field we cannot honour (n > 1) is refused in app.py with a clear 400.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .limits import ApiError


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# ---------------------------------------------------------------- OpenAI chat
class TextPart(_Model):
    type: Literal["text"]
    text: str


class ImageURL(_Model):
    url: str
    detail: str | None = None


class ImagePart(_Model):
    type: Literal["image_url"]
    image_url: Union[ImageURL, str]

    @property
    def url(self) -> str:
        return self.image_url if isinstance(self.image_url, str) else self.image_url.url


ContentPart = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class ChatMessage(_Model):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[ContentPart], None] = None


class JsonSchemaSpec(_Model):
    name: str = "output"
    schema_: dict = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Model):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class StreamOptions(_Model):
    include_usage: bool = False


class ChatRequest(_Model):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None


# ---------------------------------------------------------------- Anthropic messages
class ImageSource(_Model):
    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ATextBlock(_Model):
    type: Literal["text"]
    text: str


class AImageBlock(_Model):
    type: Literal["image"]
    source: ImageSource


ABlock = Annotated[Union[ATextBlock, AImageBlock], Field(discriminator="type")]


class AMessage(_Model):
    role: Literal["user", "assistant"]
    content: Union[str, list[ABlock]]


class MessagesRequest(_Model):
    model: str | None = None
    max_tokens: int = Field(ge=1)
    messages: list[AMessage] = Field(min_length=1)
    system: Union[str, list[ATextBlock], None] = None
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stream: bool = False


# ---------------------------------------------------------------- OpenAI embeddings
class EmbeddingsRequest(_Model):
    input: Union[str, list[str]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"


def parse(model: type[BaseModel], body: bytes):
    """Raw body -> a request model: 400 for broken JSON, 422 for JSON of the wrong shape."""
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}", "invalid_json") from None
    if not isinstance(obj, dict):
        raise ApiError(400, "request body must be a JSON object", "invalid_json")
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        # a union reports one error per alternative: the deepest one is the informative one
        err = max(e.errors(), key=lambda x: len(x["loc"]))
        loc = ".".join(str(x) for x in err["loc"] if not _union_branch(x))
        raise ApiError(422, f"{loc}: {err['msg']}", "invalid_request", loc or None) from None


def _union_branch(part) -> bool:
    """pydantic names union alternatives in error locations ('str', 'list[...]', 'ImageURL'): not fields."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool", "none") or "[" in part or part[:1].isupper())


# ---------------------------------------------------------------- responses
def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def openai_usage(prompt: int, completion: int, image: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"image_tokens": image, "cached_tokens": 0}}


def chat_completion(cid: str, model: str, text: str, finish: str, usage: dict) -> dict:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": None}],
            "usage": usage}


def chat_chunk(cid: str, model: str, delta: dict, finish: str | None = None, usage: dict | None = None, choices: bool = True) -> str:
    body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}] if choices else []}
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens", "stop_sequence": "stop_sequence"}


def anthropic_message(mid: str, model: str, text: str, stop_reason: str | None, stop_sequence: str | None, usage: dict) -> dict:
    return {"id": mid, "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}] if text or stop_reason else [],
            "stop_reason": stop_reason, "stop_sequence": stop_sequence, "usage": usage}


def anthropic_event(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data}, ensure_ascii=False)}\n\n"
