"""Shared call path for experts reached over an OpenAI-compatible API through litellm.

Used by the `litellm` backend (any provider) and the `server` backend (a managed local server).
Maps provider errors onto composer's: context overflow, retryable (timeouts, 429, 5xx, connection)
and non-retryable (400-class) failures, each as a Candidate with `error` set.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from composer.offline import import_litellm
from composer.types import Candidate, Query, Usage


def classify(exc: Exception) -> tuple[str, bool]:
    """(error_type, retryable) for a litellm/OpenAI exception."""
    name = type(exc).__name__
    if "ContextWindowExceeded" in name:
        return "context_overflow", False
    if name in ("Timeout", "APITimeoutError") or "Timeout" in name:
        return "timeout", True
    if name in ("RateLimitError",):
        return "rate_limit", True
    if name in ("APIConnectionError", "ServiceUnavailableError", "InternalServerError",
                "BadGatewayError", "ConnectionError"):
        return "unavailable", True
    if name in ("BadRequestError", "AuthenticationError", "PermissionDeniedError", "NotFoundError",
                "UnprocessableEntityError", "UnsupportedParamsError"):
        return "bad_request", False
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return ("unavailable", True) if status >= 500 or status == 429 else ("bad_request", False)
    return "error", True


def chat_call(backend, q: Query, *, model: str, api_base: str | None, api_key: str | None,
              extra: dict | None = None) -> Candidate:
    litellm = import_litellm()
    s = backend.settings_for(q)
    kw = dict(model=model, messages=backend.messages_for(q), max_tokens=s["max_tokens"],
              temperature=s["temperature"], top_p=s["top_p"], timeout=backend.spec.timeout_s,
              num_retries=0)
    if s["stop"]:
        kw["stop"] = s["stop"]
    if s["seed"] is not None:
        kw["seed"] = s["seed"]
    if api_base:
        kw["api_base"] = api_base
    if api_key:
        kw["api_key"] = api_key
    kw.update(extra or {})
    t0 = time.perf_counter()
    try:
        res = litellm.completion(**kw)
    except Exception as exc:  # noqa: BLE001 - every provider error becomes a clear per-query error
        etype, retryable = classify(exc)
        msg = str(exc).split("\n")[0][:500]
        return Candidate(q.id, backend.name, "", Usage(latency_s=time.perf_counter() - t0),
                         error=f"expert '{backend.name}': {etype}: {msg}",
                         metadata={"error_type": etype, "retryable": retryable})
    choice = res.choices[0]
    text = (choice.message.content or "").strip()
    u = getattr(res, "usage", None)
    pt = int(getattr(u, "prompt_tokens", 0) or 0)
    ct = int(getattr(u, "completion_tokens", 0) or 0)
    return Candidate(q.id, backend.name, text, Usage(pt, ct, backend.cost(pt, ct), time.perf_counter() - t0),
                     finish_reason=getattr(choice, "finish_reason", None))


def chat_batch(backend, queries: list[Query], **kw) -> list[Candidate]:
    """Run a batch with at most `concurrency` calls in flight; results keep the input order."""
    n = max(1, min(backend.spec.concurrency, len(queries)))
    if n == 1:
        return [chat_call(backend, q, **kw) for q in queries]
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix=f"expert-{backend.name}") as pool:
        return list(pool.map(lambda q: chat_call(backend, q, **kw), queries))
