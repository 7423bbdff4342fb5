"""What a request's fields become for each kind of backend, and what a response's message becomes.

The one place that maps OpenAI request fields (the expert's defaults from experts.yaml, the
query's own settings and `Query.params`) onto a backend call, and a backend's response message or
stream delta back onto composer's types:

- `openai_kwargs(backend, q)`: keyword arguments for litellm.completion (litellm and server experts)
- `llamacpp_kwargs(backend, q)`: keyword arguments for llama_cpp.Llama.create_chat_completion
- `message_fields(message)`: (text, tool_calls) of an OpenAI-shaped response message (object or dict)
- `delta_fields(delta)`: (text, tool_call deltas) of an OpenAI-shaped stream delta (object or dict)
"""

from __future__ import annotations

from typing import Any

from composer.types import Query


def _get(obj: Any, key: str, default=None):
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def openai_kwargs(backend, q: Query) -> dict:
    s = backend.settings_for(q)
    kw = dict(messages=backend.messages_for(q), max_tokens=s["max_tokens"], temperature=s["temperature"],
              top_p=s["top_p"])
    if s["stop"]:
        kw["stop"] = s["stop"]
    if s["seed"] is not None:
        kw["seed"] = s["seed"]
    return kw


def llamacpp_kwargs(backend, q: Query) -> dict:
    s = backend.settings_for(q)
    kw = dict(max_tokens=s["max_tokens"], temperature=s["temperature"], top_p=s["top_p"],
              stop=s["stop"] or None)
    if s["seed"] is not None:
        kw["seed"] = s["seed"]
    return kw


def _tool_calls(raw) -> list[dict] | None:
    if not raw:
        return None
    out = []
    for tc in raw:
        fn = _get(tc, "function") or {}
        item = {"id": _get(tc, "id"), "type": _get(tc, "type") or "function",
                "function": {"name": _get(fn, "name"), "arguments": _get(fn, "arguments") or ""}}
        if _get(tc, "index") is not None:
            item["index"] = _get(tc, "index")
        out.append(item)
    return out


def message_fields(message) -> tuple[str, list[dict] | None]:
    return (_get(message, "content") or ""), _tool_calls(_get(message, "tool_calls"))


def delta_fields(delta) -> tuple[str, list[dict] | None]:
    return (_get(delta, "content") or ""), _tool_calls(_get(delta, "tool_calls"))
