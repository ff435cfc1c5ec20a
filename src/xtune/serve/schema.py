"""The request body of POST /v1/chat/completions as OpenAI's API defines it (the fields xtune honours), checked with
pydantic, and OpenAI's error objects. Fields a client may send that change nothing here (user, metadata,
frequency_penalty 0, ...) are ignored; ones whose non-default value xtune cannot honour are refused by name."""

from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class RequestError(Exception):
    """A request the server refuses: an HTTP status and an OpenAI error object naming the field."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def body(self) -> dict:
        code = {401: "invalid_api_key", 404: "not_found", 413: "request_too_large", 429: "rate_limit_exceeded"}
        if self.param == "model" and self.status == 404:
            code[404] = "model_not_found"
        return {
            "error": {"message": self.message, "type": self.kind, "param": self.param, "code": code.get(self.status)}
        }


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # "yes" is no boolean, "0.5" no number


class ImageURL(_Body):
    url: str


class ContentPart(_Body):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None


class FunctionCall(_Body):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCallIn(_Body):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Body):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolDef(_Body):
    type: Literal["function"]
    function: FunctionDef


class StreamOptions(_Body):
    include_usage: bool = False


class ChatRequest(_Body):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto"] | None = None  # "required" and a named function cannot be enforced here
    n: Literal[1] = 1
    logprobs: Literal[False] | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError("at most 4 stop sequences")
        if stop is not None and any(not s for s in ([stop] if isinstance(stop, str) else stop)):
            raise ValueError("a stop sequence must not be empty")
        return stop

    def stop_words(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


def parse_request(raw: bytes) -> ChatRequest:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(400, f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object")
    try:
        return ChatRequest.model_validate(body)
    except ValidationError as e:
        error = e.errors()[0]
        param = ".".join(str(part) for part in error["loc"] if _is_field(part))
        raise RequestError(400, f"{param}: {error['msg']}", param) from None


def _is_field(part: str | int) -> bool:
    """A part of pydantic's error location that names a field or an index, not a union member (`str`,
    `list[ContentPart]`, `function-after[...]`)."""
    return isinstance(part, int) or (part.isidentifier() and part not in {"str", "int", "float", "bool", "list"})


def decode_image(url: str, param: str) -> Image.Image:
    """An image from a data: URL. The server never fetches a URL or reads a path a request names."""
    if not url.startswith("data:image/") or ";base64," not in url:
        raise RequestError(400, f"{param}: only data:image/...;base64 URLs are read, not files or web addresses", param)
    try:
        data = base64.b64decode(url.split(";base64,", 1)[1], validate=True)
        image = Image.open(io.BytesIO(data))
        return image.convert("RGB")
    except (binascii.Error, ValueError, OSError) as e:
        raise RequestError(400, f"{param}: not a readable image: {e}", param) from None


def conversation(request: ChatRequest, takes_images: bool) -> tuple[str | None, list[dict], list[Image.Image]]:
    """(the system prompt, the other messages as xtune's templates read them, the images in order)."""
    system: list[str] = []
    messages: list[dict] = []
    images: list[Image.Image] = []
    for i, message in enumerate(request.messages):
        where = f"messages.{i}"
        parts = [ContentPart(type="text", text=message.content)] if isinstance(message.content, str) else []
        parts = parts if parts else message.content or []
        text = []
        for j, part in enumerate(parts):
            if part.type == "text":
                if part.text is None:
                    raise RequestError(400, f"{where}.content.{j}.text: a text part needs its text", f"{where}.content")
                text.append(part.text)
                continue
            param = f"{where}.content.{j}.image_url"
            if not takes_images:
                raise RequestError(
                    400, f"{param}: this model reads text only (serve a LLaVA directory for images)", param
                )
            if message.role != "user" or part.image_url is None:
                raise RequestError(400, f"{param}: images go in user messages, as {{'url': 'data:...'}}", param)
            images.append(decode_image(part.image_url.url, param))
        content = "".join(text)
        if message.role in ("system", "developer"):
            system.append(content)
        elif message.role == "assistant" and message.tool_calls:
            calls = [
                {"type": "function", "function": _call(c.function, f"{where}.tool_calls")} for c in message.tool_calls
            ]
            messages.append({"role": "assistant", "content": content, "tool_calls": calls})
        else:
            messages.append({"role": message.role, "content": content})
    if not messages or messages[-1]["role"] == "assistant":
        raise RequestError(400, "messages: the last message must be the user's or a tool's", "messages")
    return ("\n".join(system) if system else None), messages, images


def _call(function: FunctionCall, param: str) -> dict:
    try:
        arguments = json.loads(function.arguments)
    except json.JSONDecodeError:
        raise RequestError(400, f"{param}: arguments must be JSON text", param) from None
    return {"name": function.name, "arguments": arguments}
