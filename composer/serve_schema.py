"""The HTTP endpoint's request shapes (OpenAI Chat Completions, Completions, Embeddings) and checks.

Every standard OpenAI field is declared. Unknown non-standard fields are ignored and reported
(as vLLM does); fields that would change how an expert is reached (api_base, api_key, base_url,
...) are refused outright: a request may never override a backend setting. Every problem becomes
a `BadRequest` (an OpenAI error object, 4xx) naming the field, raised before any model loads:
malformed JSON, JSON nested too deeply, wrong types, unknown models (404).

What a validated request becomes against the registry (its target, its Queries) is
composer/serve/plan.py.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


# Keys that would redirect or re-authenticate an expert call; never accepted from a request.
FORBIDDEN_FIELDS = frozenset({
    "api_base", "base_url", "api_key", "api_version", "api_type", "organization", "custom_llm_provider",
    "backend", "options", "model_path", "command", "headers", "extra_headers", "extra_body",
    "timeout", "num_retries", "fallbacks", "aws_access_key_id", "aws_secret_access_key",
    "vertex_credentials", "azure_ad_token", "drop_params",
})
MAX_DEPTH = 64  # JSON nesting a request may have (tool schemas included)
MAX_BODY = 8 * 1024 * 1024


class BadRequest(Exception):
    """A request the endpoint refuses with 400 (or `status`); `param` names the field."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 code: str | None = "invalid_request_error"):
        self.message, self.param, self.status, self.code = message, param, status, code
        super().__init__(message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    """OpenAI objects that may grow fields: unknown keys are kept and passed on."""
    model_config = ConfigDict(extra="allow")


class ContentPart(_Open):
    type: Literal["text", "image_url", "input_audio", "file", "refusal"]
    text: str | None = None
    refusal: str | None = None

    @model_validator(mode="after")
    def _text_needs_text(self):
        if self.type == "text" and self.text is None:
            raise ValueError("a 'text' content part needs 'text'")
        return self


class FunctionCall(_Open):
    name: str
    arguments: str


class ToolCall(_Open):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Open):
    role: Literal["system", "user", "assistant", "developer", "tool", "function"]
    content: Union[str, list[ContentPart], None] = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type == "text")

    def non_text_parts(self) -> list[int]:
        if isinstance(self.content, list):
            return [i for i, p in enumerate(self.content) if p.type not in ("text", "refusal")]
        return []

    def as_dict(self) -> dict:
        d = self.model_dump(exclude_none=True)
        if d["role"] == "developer":
            d["role"] = "system"
        d.setdefault("content", None if self.tool_calls else "")
        return d


class FunctionDef(_Open):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaSpec(_Open):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs 'json_schema': {name, schema}")
        return self


class StreamOptions(_Open):
    include_usage: bool = False


Stop = Union[str, list[str], None]


class ChatRequest(_Open):
    """POST /v1/chat/completions: every field of OpenAI's Chat Completions request."""

    model: str = Field(..., min_length=1, description="A pipeline, an expert, `default` or `router-<pipeline>-<threshold>`.")
    messages: list[Message] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stop: Stop = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    tools: list[Tool] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDef] | None = None
    function_call: Union[Literal["none", "auto"], NamedFunction, None] = None
    response_format: ResponseFormat | None = None
    service_tier: str | None = None
    store: bool | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    task: str | None = Field(None, description="composer extension: the task type for routing.")

    # fields composer handles itself (they are not passed on as Query.params)
    OWN: ClassVar[tuple[str, ...]] = ("model", "messages", "max_tokens", "max_completion_tokens", "temperature", "stop", "seed",
           "n", "stream", "stream_options", "task", "metadata")

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def params(self) -> dict:
        """The further OpenAI fields the client set (non-null), as sent."""
        data = self.model_dump(exclude_unset=True, exclude_none=True, by_alias=True)
        return {k: v for k, v in data.items() if k not in self.OWN and k in type(self).model_fields}

    def ignored(self) -> list[str]:
        return sorted(self.model_extra or {})


class CompletionRequest(_Open):
    """POST /v1/completions (legacy): prompt in, text out."""

    model: str = Field(..., min_length=1)
    prompt: Union[str, list[str]]
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    n: int = Field(1, ge=1, le=128)
    best_of: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    stop: Stop = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    suffix: str | None = None
    user: str | None = None
    task: str | None = None

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def ignored(self) -> list[str]:
        return sorted(self.model_extra or {})


class EmbeddingRequest(_Open):
    """POST /v1/embeddings."""

    model: str = Field(..., min_length=1)
    input: Union[str, list[str]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


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


# -- parsing ---------------------------------------------------------------------------------------


def _depth(obj) -> int:
    """Nesting depth of decoded JSON, without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        deepest = max(deepest, d)
        if d > MAX_DEPTH:
            return d
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return deepest


def _loc(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _clean_loc(loc) -> list:
    # pydantic puts union member names and function-validator tags in locs; keep the field path
    return [p for p in loc if isinstance(p, int) or not (
        p in ("str", "list[str]", "list[ContentPart]", "NamedToolChoice", "NamedFunction", "none")
        or "[" in str(p) or str(p).startswith(("function-", "literal", "json-or-python", "lax-or-strict")))]


def validation_message(exc: ValidationError) -> tuple[str, str]:
    """(message, param) naming the first problem of a pydantic error."""
    errors = exc.errors()
    # in a union (content: str | parts, tool_choice: str | object) the deepest error says most
    first = [e for e in errors if e["loc"][:1] == errors[0]["loc"][:1]]
    err = max(first, key=lambda e: len(_clean_loc(e["loc"])))
    loc = _loc(_clean_loc(err["loc"]))
    if err["type"] == "extra_forbidden":
        msg = f"unknown field '{loc}'"
    elif err["type"] == "missing":
        msg = f"required field '{loc}' is missing"
    else:
        msg = f"field '{loc}': {err['msg']}"
        if "input" in err and not isinstance(err["input"], (dict, list)):
            msg += f" (got {json.dumps(err['input'], default=str)[:80]})"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return msg + more, loc


class _NotJSON(ValueError):
    pass


def _no_constant(name: str):
    raise _NotJSON(name)  # NaN, Infinity, -Infinity: Python's json reads them, JSON has none


def parse_body(raw: bytes, model: type[BaseModel]):
    """JSON bytes -> validated request model; BadRequest naming the field otherwise."""
    if len(raw or b"") > MAX_BODY:
        raise BadRequest(f"body is {len(raw)} bytes; the limit is {MAX_BODY}", status=413,
                         code="request_too_large")
    try:
        data = json.loads(raw or b"", parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON body: {exc}; send a JSON object") from None
    except _NotJSON as exc:
        raise BadRequest(f"malformed JSON body: {exc} is not a JSON number") from None
    except RecursionError:
        raise BadRequest(f"JSON body nested too deeply (limit {MAX_DEPTH} levels)") from None
    return validate(data, model)


def validate(data, model: type[BaseModel]):
    """Decoded JSON -> validated request model; BadRequest naming the field otherwise."""
    if not isinstance(data, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(data).__name__}")
    if _depth(data) > MAX_DEPTH:
        raise BadRequest(f"JSON body nested too deeply (limit {MAX_DEPTH} levels)")
    bad = sorted(FORBIDDEN_FIELDS.intersection(data))
    if bad:
        raise BadRequest(f"field '{bad[0]}' is not allowed: a request cannot change how an expert is "
                         "reached (api_base, keys and backend settings come only from experts.yaml)",
                         param=bad[0])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        msg, loc = validation_message(exc)
        raise BadRequest(msg, param=loc) from None
    except RecursionError:
        raise BadRequest(f"JSON body nested too deeply (limit {MAX_DEPTH} levels)") from None


def new_request_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"
