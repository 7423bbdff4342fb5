"""The HTTP endpoint's request shapes (OpenAI Chat Completions, Completions, Embeddings) and checks.

Every standard OpenAI field is declared. Unknown non-standard fields are ignored and reported
(as vLLM does); fields that would change how an expert is reached (api_base, api_key, base_url,
...) are refused outright: a request may never override a backend setting. Every problem becomes
a `BadRequest` (an OpenAI error object, 4xx) naming the field, raised before any model loads:
malformed JSON, JSON nested too deeply, wrong types, unknown models (404).

`to_queries` turns a chat request into composer Queries: the sampling fields composer handles
itself (max_tokens, temperature, stop, seed) go on the Query; every other field the client set
goes, as sent, into `Query.params` (composer/backends/params.py maps them per backend).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from composer.types import Query

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


# -- models ----------------------------------------------------------------------------------------

ROUTER_MODEL = re.compile(r"^router-(?P<pipeline>.+)-(?P<threshold>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")


@dataclass
class Target:
    """What a request's `model` resolves to."""

    expert: str | None
    pipeline: str | None
    context_length: int
    threshold: float | None = None  # RouteLLM's cost knob, from router-<pipeline>-<threshold>
    experts: list[str] = field(default_factory=list)  # every expert the request may reach


def _ctx(spec) -> int:
    from composer.backends.model_info import with_model_info

    return with_model_info(spec).context_length


def resolve_model(composer, name: str) -> Target:
    """The expert or pipeline a request's `model` names; 404 (OpenAI's model_not_found) if none."""
    experts, pipelines = composer.experts, composer.pipelines
    threshold = None
    m = ROUTER_MODEL.match(name)
    if m and name not in experts and name not in pipelines and m["pipeline"] in pipelines:
        if pipelines[m["pipeline"]].router is None:
            raise BadRequest(f"model '{name}': pipeline '{m['pipeline']}' has no router, so it has no "
                             "threshold to set; use its plain name", param="model")
        name, threshold = m["pipeline"], float(m["threshold"])
    if name == "default" and name not in experts and name not in pipelines:  # the registry's default
        e = composer.default_expert()
        return Target(None, None, _ctx(experts[e]), experts=[e])
    if name in pipelines:
        p = pipelines[name]
        pool = list(p.experts or experts)
        if p.aggregator.expert and p.aggregator.expert not in pool:
            pool.append(p.aggregator.expert)
        return Target(None, name, max(_ctx(experts[e]) for e in pool), threshold, pool)
    if name in experts:
        return Target(name, None, _ctx(experts[name]), experts=[name])
    known = ", ".join([*pipelines, *experts, "default"])
    raise BadRequest(f"The model '{name}' does not exist; known pipelines and experts: {known}", param="model",
                     status=404, code="model_not_found")


# -- chat request -> queries -----------------------------------------------------------------------


@dataclass
class Plan:
    """A validated chat request: its queries, where they go, and what was dropped or ignored."""

    queries: list[Query]
    target: Target
    dropped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _check_tools(req: ChatRequest) -> None:
    names = [t.function.name for t in req.tools or []]
    if req.tool_choice is not None and not names:
        raise BadRequest("'tool_choice' is only allowed when 'tools' are given", param="tool_choice")
    if isinstance(req.tool_choice, NamedToolChoice) and req.tool_choice.function.name not in names:
        raise BadRequest(f"tool_choice names function '{req.tool_choice.function.name}', which is not in "
                         f"'tools' ({', '.join(names)})", param="tool_choice.function.name")
    if req.top_logprobs is not None and not req.logprobs:
        raise BadRequest("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    ids = {tc.id for m in req.messages for tc in (m.tool_calls or [])}
    for i, m in enumerate(req.messages):
        if m.role == "tool":
            if not m.tool_call_id:
                raise BadRequest("a 'tool' message needs 'tool_call_id'", param=f"messages[{i}].tool_call_id")
            if m.tool_call_id not in ids:
                raise BadRequest(f"'tool' message answers tool call '{m.tool_call_id}', which no earlier "
                                 "assistant message made", param=f"messages[{i}].tool_call_id")
        if m.tool_calls and m.role != "assistant":
            raise BadRequest("only 'assistant' messages carry 'tool_calls'", param=f"messages[{i}].tool_calls")


def _check_experts(composer, req: ChatRequest, target: Target, params: dict) -> list[str]:
    """Fields the reachable experts cannot honour: a 400 where an expert sets drop_params: false,
    else the list to drop with a warning. Images for text-only experts are refused."""
    from composer.backends.params import drop_params, unsupported

    specs = composer.experts
    wants_tools = bool(params.get("tools") or params.get("functions") or params.get("response_format"))
    if target.pipeline is not None and wants_tools:
        kind = composer.pipelines[target.pipeline].aggregator.kind
        if kind == "vote":
            field_ = "tools" if params.get("tools") or params.get("functions") else "response_format"
            raise BadRequest(f"pipeline '{target.pipeline}' votes over short answers, so it cannot honour "
                             f"'{field_}'; send it to an expert or a MoA/Self-MoA pipeline", param=field_)
    for i, m in enumerate(req.messages):
        for j in m.non_text_parts():
            text_only = [e for e in target.experts if specs[e].backend not in ("litellm", "server")]
            if text_only:
                raise BadRequest(f"expert '{text_only[0]}' reads text only; messages[{i}].content[{j}] is "
                                 f"'{m.content[j].type}'", param=f"messages[{i}].content[{j}]")
    dropped: set[str] = set()
    for e in target.experts:
        bad = unsupported(specs[e], params)
        if bad and not drop_params(specs[e]):
            raise BadRequest(f"expert '{e}' cannot honour field '{bad[0]}' (drop_params is false for it)",
                             param=bad[0], code="unsupported_parameter")
        dropped.update(bad)
    return sorted(dropped)


def to_queries(req: ChatRequest, composer, max_n: int, request_id: str) -> Plan:
    """Validate a chat request against the registry and turn it into n Queries."""
    target = resolve_model(composer, req.model)
    if req.n > max_n:
        raise BadRequest(f"n={req.n} is too large; this server allows n <= {max_n}", param="n")
    limit = req.limit()
    if limit is not None and limit >= target.context_length:
        raise BadRequest(f"max_tokens={limit} does not fit model '{req.model}' (context window "
                         f"{target.context_length} tokens, prompt included); ask for fewer tokens",
                         param="max_completion_tokens" if req.max_completion_tokens else "max_tokens",
                         code="context_length_exceeded")
    if not any(m.role == "user" for m in req.messages):
        raise BadRequest("messages needs at least one 'user' message", param="messages")
    _check_tools(req)
    params = req.params()
    dropped = _check_experts(composer, req, target, params)
    msgs = tuple(m.as_dict() for m in req.messages)
    text = next(m.text() for m in reversed(req.messages) if m.role == "user")
    stop = (req.stop,) if isinstance(req.stop, str) else (tuple(req.stop) if req.stop else None)
    meta = {"threshold": target.threshold} if target.threshold is not None else {}
    qs = []
    for i in range(req.n):
        seed = req.seed + i if req.seed is not None else (i if req.n > 1 else None)
        qs.append(Query(text, id=f"{request_id}-{i}", messages=msgs, task=req.task, max_tokens=limit,
                        temperature=req.temperature, stop=stop, seed=seed, params=dict(params),
                        metadata=dict(meta)))
    return Plan(qs, target, dropped, req.ignored())


def completion_queries(req: CompletionRequest, composer, max_n: int, request_id: str) -> Plan:
    """A /v1/completions request as Queries: each prompt n times (choice index = prompt * n + j)."""
    target = resolve_model(composer, req.model)
    prompts = req.prompts()
    if not prompts:
        raise BadRequest("'prompt' is empty", param="prompt")
    if req.n * len(prompts) > max_n:
        raise BadRequest(f"{len(prompts)} prompt(s) x n={req.n} is too many; this server allows {max_n} "
                         "choices per request", param="n")
    if req.best_of is not None and req.best_of != req.n:
        raise BadRequest("best_of other than n is not supported (composer returns every choice it "
                         "generates)", param="best_of")
    if req.suffix:
        raise BadRequest("'suffix' (insertion) is not supported by composer's experts", param="suffix")
    if req.max_tokens is not None and req.max_tokens >= target.context_length:
        raise BadRequest(f"max_tokens={req.max_tokens} does not fit model '{req.model}' (context window "
                         f"{target.context_length} tokens)", param="max_tokens", code="context_length_exceeded")
    data = req.model_dump(exclude_unset=True, exclude_none=True)
    params = {k: data[k] for k in ("top_p", "presence_penalty", "frequency_penalty", "logit_bias", "user")
              if k in data}
    if req.logprobs is not None:
        params.update(logprobs=True, top_logprobs=req.logprobs)
    chat_like = ChatRequest(model=req.model, messages=[Message(role="user", content=prompts[0])])
    dropped = _check_experts(composer, chat_like, target, params)
    stop = (req.stop,) if isinstance(req.stop, str) else (tuple(req.stop) if req.stop else None)
    # the prompt is sent as it is to base models (chat_format: completion); chat models get it as
    # the user's message through their template
    meta = {"raw_prompt": True, **({"threshold": target.threshold} if target.threshold is not None else {})}
    qs = []
    for p_i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise BadRequest(f"prompt[{p_i}] is empty", param=f"prompt[{p_i}]")
        for j in range(req.n):
            seed = req.seed + j if req.seed is not None else (j if req.n > 1 else None)
            qs.append(Query(prompt, id=f"{request_id}-{p_i * req.n + j}", task=req.task, max_tokens=req.max_tokens,
                            temperature=req.temperature, stop=stop, seed=seed, params=dict(params),
                            metadata=dict(meta)))
    return Plan(qs, target, dropped, req.ignored())


def new_request_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"
