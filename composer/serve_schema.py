"""The HTTP endpoint's request and response shapes (OpenAI chat-completions schema) and checks.

Requests are parsed into pydantic models with `extra="forbid"`; every problem becomes a
`BadRequest` (HTTP 400) with a message naming the field, raised before any model loads.
Fields that would change how an expert is reached (api_base, api_key, base_url, ...) are
refused outright: a request may never override a backend setting.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from composer.types import Answer, Query

# Keys that would redirect or re-authenticate an expert call; never accepted from a request.
FORBIDDEN_FIELDS = frozenset({
    "api_base", "base_url", "api_key", "api_version", "api_type", "organization", "custom_llm_provider",
    "backend", "options", "model_path", "command", "headers", "extra_headers", "extra_body",
    "timeout", "num_retries", "fallbacks", "aws_access_key_id", "aws_secret_access_key",
    "vertex_credentials", "azure_ad_token",
})


class BadRequest(Exception):
    """A request the endpoint refuses with 400 (or `status`); `param` names the field."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 code: str = "invalid_request_error"):
        self.message, self.param, self.status, self.code = message, param, status, code
        super().__init__(message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Union[str, list[TextPart], None] = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatRequest(_Strict):
    model: str = Field(..., min_length=1, description="A pipeline or an expert name (GET /v1/models).")
    messages: list[Message] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    task: str | None = Field(None, description="composer extension: the task type for routing.")

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class RouteRequest(_Strict):
    model: str = Field(..., min_length=1)
    messages: list[Message] | None = None
    input: Union[str, list[str], None] = None
    task: str | None = None

    def texts(self) -> list[str]:
        if isinstance(self.input, list):
            return self.input
        if self.input:
            return [self.input]
        return [m.text() for m in reversed(self.messages or []) if m.role == "user"][:1]


class PredictRequest(_Strict):
    task: str | None = None
    specialist: str | None = None
    payload: dict[str, Any]


def parse_body(raw: bytes, model: type[BaseModel]):
    """JSON bytes -> validated request model; BadRequest naming the field otherwise."""
    try:
        data = json.loads(raw or b"")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON body: {exc}; send a JSON object") from None
    if not isinstance(data, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(data).__name__}")
    bad = sorted(FORBIDDEN_FIELDS.intersection(data))
    if bad:
        raise BadRequest(f"field '{bad[0]}' is not allowed: a request cannot change how an expert is "
                         "reached (api_base, keys and backend settings come only from experts.yaml)",
                         param=bad[0])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            msg = f"unknown field '{loc}'"
        elif err["type"] == "missing":
            msg = f"required field '{loc}' is missing"
        else:
            msg = f"field '{loc}': {err['msg']}"
            if "input" in err and not isinstance(err["input"], (dict, list)):
                msg += f" (got {json.dumps(err['input'])[:80]})"
        more = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
        raise BadRequest(msg + more, param=loc) from None


def resolve_model(composer, name: str) -> tuple[str | None, str | None, int]:
    """(expert, pipeline, context window) for a request's `model`; BadRequest if unknown."""
    experts, pipelines = composer.experts, composer.pipelines
    if name == "default" and name not in experts and name not in pipelines:  # the registry's default
        return None, None, experts[composer.default_expert()].context_length
    if name in pipelines:
        p = pipelines[name]
        pool = p.experts or list(experts)
        return None, name, max(experts[e].context_length for e in pool)
    if name in experts:
        return name, None, experts[name].context_length
    known = ", ".join([*pipelines, *experts, "default"])
    raise BadRequest(f"unknown model '{name}'; known pipelines and experts: {known}", param="model",
                     code="model_not_found")


def to_queries(req: ChatRequest, composer, max_n: int, request_id: str) -> tuple[list[Query], str | None, str | None]:
    """Validate a chat request against the registry and turn it into n Queries."""
    expert, pipeline, ctx = resolve_model(composer, req.model)
    if req.n > max_n:
        raise BadRequest(f"n={req.n} is too large; this server allows n <= {max_n}", param="n")
    limit = req.limit()
    if limit is not None and limit >= ctx:
        raise BadRequest(f"max_tokens={limit} does not fit model '{req.model}' (context window {ctx} "
                         "tokens, prompt included); ask for fewer tokens", param="max_tokens",
                         code="context_length_exceeded")
    if not any(m.role == "user" for m in req.messages):
        raise BadRequest("messages needs at least one 'user' message", param="messages")
    msgs = tuple({"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                 for m in req.messages)
    text = next(m.text() for m in reversed(req.messages) if m.role == "user")
    stop = (req.stop,) if isinstance(req.stop, str) else (tuple(req.stop) if req.stop else None)
    qs = []
    for i in range(req.n):
        seed = req.seed + i if req.seed is not None else (i if req.n > 1 else None)
        qs.append(Query(text, id=f"{request_id}-{i}", messages=msgs, task=req.task, max_tokens=limit,
                        temperature=req.temperature, stop=stop, seed=seed))
    return qs, expert, pipeline


# -- responses ------------------------------------------------------------------------------------


def new_request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def error_body(message: str, *, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def usage_of(answers: list[Answer]) -> dict:
    pt = sum(a.usage.prompt_tokens for a in answers)
    ct = sum(a.usage.completion_tokens for a in answers)
    return {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}


def composer_extension(answers: list[Answer]) -> dict:
    """What composer adds to a response: who answered, what was tried, what it cost."""
    return {
        "experts": [a.experts for a in answers],
        "experts_tried": [[e for c in a.candidates for e in c.metadata.get("experts_tried", [c.expert])]
                          for a in answers],
        "cost": round(sum(a.usage.cost for a in answers), 10),
        "route": [a.route.to_dict() if a.route else None for a in answers],
    }


def finish_reason(a: Answer) -> str:
    reasons = [c.finish_reason for c in a.candidates if c.ok and c.finish_reason]
    return "length" if "length" in reasons else "stop"


def completion_body(request_id: str, model: str, answers: list[Answer]) -> dict:
    return {
        "id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": i, "message": {"role": "assistant", "content": a.text},
                     "finish_reason": finish_reason(a), "logprobs": None} for i, a in enumerate(answers)],
        "usage": usage_of(answers),
        "composer": composer_extension(answers),
    }


def sse(obj) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def chunk(request_id: str, model: str, created: int, choices: list[dict], **extra) -> dict:
    return {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": choices, **extra}


def role_chunk(request_id: str, model: str, created: int, index: int = 0) -> bytes:
    return sse(chunk(request_id, model, created, [{"index": index, "delta": {"role": "assistant", "content": ""},
                                                  "finish_reason": None}]))


def stream_chunks(request_id: str, model: str, answers: list[Answer], include_usage: bool,
                  created: int, words_per_chunk: int = 4):
    """The SSE events of finished answers after the first role event: content pieces, finish,
    usage, [DONE]."""
    for i, a in enumerate(answers):
        if i > 0:
            yield role_chunk(request_id, model, created, i)
        words = a.text.split(" ")
        for k in range(0, len(words), words_per_chunk):
            piece = " ".join(words[k:k + words_per_chunk]) + (" " if k + words_per_chunk < len(words) else "")
            yield sse(chunk(request_id, model, created, [{"index": i, "delta": {"content": piece},
                                                         "finish_reason": None}]))
        yield sse(chunk(request_id, model, created, [{"index": i, "delta": {}, "finish_reason": finish_reason(a)}]))
    if include_usage:
        yield sse(chunk(request_id, model, created, [], usage=usage_of(answers),
                        composer=composer_extension(answers)))
    yield b"data: [DONE]\n\n"
