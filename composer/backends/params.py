"""What a request's fields become for each kind of backend, and what a response's message becomes.

The one place that maps OpenAI request fields (the expert's defaults from experts.yaml, the
query's own settings and `Query.params`) onto a backend call, and a backend's response message or
stream delta back onto composer's types:

- `openai_kwargs(backend, q)`: keyword arguments for litellm.completion (litellm and server
  experts): `messages` plus every field the client set; temperature/top_p only when the client
  or experts.yaml set them (not on every call)
- `llamacpp_kwargs(backend, q)`: keyword arguments for llama_cpp.Llama.create_chat_completion (or
  create_completion for `chat_format: completion` experts), without `messages`: send
  `llamacpp_messages(backend.messages_for(q))` (flattened to text: llama.cpp templates take
  strings); tools and response_format become llama.cpp's chat-handler and JSON-schema-grammar
  arguments
- `unsupported(spec, params)`: the request fields an expert cannot honour (dropped with a warning,
  or refused when the expert sets `options: {drop_params: false}`)
- `message_fields(message)`: (text, tool_calls) of an OpenAI-shaped response message (object or dict)
- `delta_fields(delta)`: (text, tool call deltas) of an OpenAI-shaped stream delta (object or dict)
- `merge_tool_calls(deltas)`: streamed tool-call deltas merged into whole calls (by index)
- `logprobs_of(choice)`: the OpenAI `logprobs` object of a response choice, or None

Fields live in `Query.params` only when the client set them (the HTTP layer sends exactly the
request's set fields), so nothing is sent upstream that the client did not ask for.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import Any

from composer.types import Query

log = logging.getLogger("composer.params")

# Fields an OpenAI-compatible upstream takes as they are (litellm translates them per provider).
OPENAI_FIELDS = frozenset({
    "top_p", "presence_penalty", "frequency_penalty", "logit_bias", "user", "tools", "tool_choice",
    "parallel_tool_calls", "response_format", "logprobs", "top_logprobs", "functions", "function_call",
    "service_tier", "store", "reasoning_effort", "modalities", "audio", "prediction",
    "web_search_options", "verbosity", "prompt_cache_key", "safety_identifier",
})
# OpenAI fields that describe the client's own bookkeeping at OpenAI; never sent to an expert
# (litellm treats `metadata` as its own logging argument).
CLIENT_ONLY = frozenset({"metadata"})
# What llama.cpp's create_chat_completion honours (logprobs only when loaded with logits_all).
LLAMACPP_FIELDS = frozenset({
    "top_p", "presence_penalty", "frequency_penalty", "logit_bias", "tools", "tool_choice",
    "parallel_tool_calls", "response_format", "logprobs", "top_logprobs", "functions", "function_call",
    "user",
})
# Fields that are harmless to ignore on a backend that has no use for them (no warning).
IGNORABLE = frozenset({"user", "parallel_tool_calls", "store", "service_tier", "prompt_cache_key",
                       "safety_identifier", "metadata"})


def _get(obj: Any, key: str, default=None):
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def drop_params(spec) -> bool:
    """Whether fields this expert cannot honour are dropped (default) or refused."""
    return bool((spec.options or {}).get("drop_params", True))


@lru_cache(maxsize=128)
def provider_fields(model: str) -> frozenset | None:
    """The OpenAI fields litellm knows its provider for `model` takes (None: unknown)."""
    try:
        from composer.offline import import_litellm  # noqa: PLC0415

        got = import_litellm().get_supported_openai_params(model=model)
    except Exception:  # noqa: BLE001 - an unknown provider: assume the OpenAI set
        return None
    return frozenset(got) if got else None


def unsupported(spec, params: dict) -> list[str]:
    """The request fields (of `params`) that the expert `spec` cannot honour, sorted."""
    if spec.backend in ("litellm", "server"):
        allowed = OPENAI_FIELDS
        if spec.backend == "litellm":  # a provider (anthropic/, ollama/...) may take fewer
            allowed = OPENAI_FIELDS & (provider_fields(spec.model) or OPENAI_FIELDS)
        return sorted(k for k in params if k not in allowed and k not in CLIENT_ONLY and k not in IGNORABLE)
    if spec.backend == "llamacpp":
        bad = []
        for k, v in params.items():
            if k in IGNORABLE or k in CLIENT_ONLY:
                continue
            if k not in LLAMACPP_FIELDS:
                bad.append(k)
            elif k in ("logprobs", "top_logprobs") and v and not (spec.options or {}).get("logits_all"):
                bad.append(k)
            elif k in ("tools", "tool_choice", "functions", "function_call", "response_format") \
                    and spec.chat_format == "completion":
                bad.append(k)  # a base model with no chat template: no chat handler, no tools
        return sorted(bad)
    # replay/fake experts answer from recordings or rules: generation fields do not apply.
    return sorted(k for k in params if k not in IGNORABLE and k not in CLIENT_ONLY)


def _sampling(backend, q: Query) -> dict:
    """max_tokens always (composer enforces a limit); temperature/top_p/stop/seed only when the
    query or experts.yaml set them."""
    g = backend.spec.generation
    set_in_yaml = getattr(g, "model_fields_set", set())
    kw: dict[str, Any] = {"max_tokens": q.max_tokens if q.max_tokens is not None else g.max_tokens}
    if q.temperature is not None:
        kw["temperature"] = q.temperature
    elif "temperature" in set_in_yaml:
        kw["temperature"] = g.temperature
    if "top_p" in q.params:
        kw["top_p"] = q.params["top_p"]
    elif "top_p" in set_in_yaml:
        kw["top_p"] = g.top_p
    stop = list(q.stop) if q.stop is not None else list(g.stop)
    if stop:
        kw["stop"] = stop
    seed = q.seed if q.seed is not None else g.seed
    if seed is not None:
        kw["seed"] = seed
    return kw


def openai_kwargs(backend, q: Query) -> dict:
    """Arguments for litellm.completion (without model, api_base, key, timeout)."""
    kw = dict(messages=backend.messages_for(q), **_sampling(backend, q))
    drop = unsupported(backend.spec, q.params)
    if drop:
        log.warning("expert '%s' cannot honour %s; dropped", backend.name, ", ".join(drop))
    for k, v in q.params.items():
        if k in OPENAI_FIELDS and k not in drop and k != "top_p":
            kw[k] = v
    if drop_params(backend.spec) and any(k in OPENAI_FIELDS for k in kw):
        kw["drop_params"] = True  # litellm drops what a provider cannot take instead of raising
    if "tools" in kw:
        # litellm (1.106) routes any call with tools through its MCP-proxy handler, which imports
        # the optional `mcp` package; composer's tools are plain functions: skip that handler.
        kw["_skip_mcp_handler"] = True
    return kw


def _text_of(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")


def llamacpp_messages(messages: list[dict]) -> list[dict]:
    """Messages as llama.cpp chat templates take them: string content; an assistant turn's tool
    calls written out as JSON; a tool result as a `tool` turn naming its call."""
    out = []
    for m in messages:
        text = _text_of(m.get("content"))
        calls = m.get("tool_calls")
        if calls:
            written = json.dumps([{"name": _get(_get(c, "function"), "name"),
                                   "arguments": _get(_get(c, "function"), "arguments")} for c in calls])
            text = f"{text}\n{written}" if text else written
        out.append({"role": m.get("role", "user"), "content": text})
    return out


def _schema_format(rf: dict) -> dict | None:
    """OpenAI response_format -> llama.cpp's {"type": "json_object", "schema"?: ...}."""
    kind = rf.get("type")
    if kind == "json_object":
        return {"type": "json_object", **({"schema": rf["schema"]} if "schema" in rf else {})}
    if kind == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema")
        return {"type": "json_object", **({"schema": schema} if schema else {})}
    return None  # "text": nothing to constrain


def _tool_choice(tools: list, choice):
    """OpenAI tool_choice -> what llama.cpp's chat handler acts on: a named function is forced
    through a JSON-schema grammar; "required" with one tool is that tool; "none" removes tools."""
    if isinstance(choice, dict):
        return choice
    if choice == "required" and len(tools) == 1:
        return {"type": "function", "function": {"name": tools[0]["function"]["name"]}}
    return choice


def llamacpp_kwargs(backend, q: Query) -> dict:
    """Arguments for Llama.create_chat_completion (create_completion for `chat_format:
    completion`), without `messages`. A `logit_bias` becomes a logits processor in
    `logits_processor` (llama-cpp-python 0.3's own logit_bias, next to any other processor, turns
    the list into None); the backend appends its own processors to that list."""
    kw: dict[str, Any] = dict(_sampling(backend, q))
    kw.setdefault("stop", None)
    if "top_p" not in kw:
        kw["top_p"] = 1.0  # llama.cpp's own default is 0.95: "not set" means no nucleus cut
    if "temperature" not in kw:
        kw["temperature"] = backend.spec.generation.temperature
    p = q.params
    drop = set(unsupported(backend.spec, p))
    if drop:
        log.warning("expert '%s' cannot honour %s; dropped", backend.name, ", ".join(sorted(drop)))
    for k in ("presence_penalty", "frequency_penalty"):
        if k in p and k not in drop:
            kw[k] = p[k]
    if p.get("logit_bias") and "logit_bias" not in drop:
        kw["logits_processor"] = [_bias_processor(p["logit_bias"])]
    if backend.spec.chat_format == "completion":
        if p.get("logprobs") and "logprobs" not in drop:
            kw["logprobs"] = int(p.get("top_logprobs") or 1)
        return kw
    tools = p.get("tools") or ([{"type": "function", "function": f} for f in p["functions"]]
                               if p.get("functions") else None)
    choice = p.get("tool_choice")
    if choice is None and isinstance(p.get("function_call"), (dict, str)):
        fc = p["function_call"]
        choice = {"type": "function", "function": {"name": fc["name"]}} if isinstance(fc, dict) else fc
    if tools and "tools" not in drop and choice != "none":
        kw["tools"] = tools
        if choice is not None:
            kw["tool_choice"] = _tool_choice(tools, choice)
    rf = p.get("response_format")
    if isinstance(rf, dict) and "response_format" not in drop:
        fmt = _schema_format(rf)
        if fmt is not None:
            kw["response_format"] = fmt
    if p.get("logprobs") and "logprobs" not in drop:
        kw["logprobs"] = True
        kw["top_logprobs"] = int(p.get("top_logprobs") or 0)
    return kw


def _bias_processor(bias: dict):
    items = [(int(k), float(v)) for k, v in bias.items()]

    def add_bias(_ids, scores):
        for tok, b in items:
            if 0 <= tok < scores.shape[-1]:
                scores[tok] += b
        return scores

    return add_bias


def _tool_calls(raw) -> list[dict] | None:
    if not raw:
        return None
    out = []
    for i, tc in enumerate(raw):
        fn = _get(tc, "function") or {}
        item = {"id": _get(tc, "id"), "type": _get(tc, "type") or "function",
                "function": {"name": _get(fn, "name"), "arguments": _get(fn, "arguments") or ""}}
        idx = _get(tc, "index")
        item["index"] = idx if idx is not None else i
        out.append(item)
    return out


def message_fields(message) -> tuple[str, list[dict] | None]:
    return (_get(message, "content") or ""), _tool_calls(_get(message, "tool_calls"))


def delta_fields(delta) -> tuple[str, list[dict] | None]:
    return (_get(delta, "content") or ""), _tool_calls(_get(delta, "tool_calls"))


def merge_tool_calls(deltas: list[dict]) -> list[dict]:
    """Streamed tool-call deltas (OpenAI shape, with `index`) merged into whole calls: the first
    delta of an index brings id and name, later ones append to `arguments`."""
    calls: dict[int, dict] = {}
    for i, d in enumerate(deltas):
        idx = d.get("index")
        idx = idx if idx is not None else (i if not calls else max(calls))
        fn = d.get("function") or {}
        c = calls.setdefault(idx, {"id": None, "type": "function", "function": {"name": None, "arguments": ""}})
        c["id"] = c["id"] or d.get("id")
        c["function"]["name"] = c["function"]["name"] or fn.get("name")
        c["function"]["arguments"] += fn.get("arguments") or ""
    return [{**c, "id": c["id"] or f"call_{idx}"} for idx, c in sorted(calls.items())]


def logprobs_of(choice) -> dict | None:
    """The OpenAI-shaped `logprobs` of a choice ({"content": [{token, logprob, bytes, top_logprobs}]})."""
    lp = _get(choice, "logprobs")
    if lp is None:
        return None
    if hasattr(lp, "model_dump"):
        lp = lp.model_dump()
    elif not isinstance(lp, dict):
        lp = dict(lp)
    return lp if lp.get("content") is not None else None
