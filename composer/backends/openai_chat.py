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
              extra: dict | None = None, stream: bool = False) -> Candidate:
    """One chat call. `stream=True` reads the answer as it is generated so `backend.cancel()`
    can close the upstream request mid-generation (the server then stops decoding)."""
    if backend.is_cancelled(q.id):
        return backend.cancelled_candidate(q, 0.0)
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
        if stream:
            return _streamed(backend, q, litellm.completion(**kw, stream=True,
                                                            stream_options={"include_usage": True}), t0)
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


def _streamed(backend, q: Query, chunks, t0: float) -> Candidate:
    parts: list[str] = []
    n_chunks, usage, finish = 0, None, None
    try:
        for chunk in chunks:
            if backend.is_cancelled(q.id):
                return backend.cancelled_candidate(q, time.perf_counter() - t0, n_chunks)
            usage = getattr(chunk, "usage", None) or usage
            if chunk.choices:
                delta = chunk.choices[0].delta
                if getattr(delta, "content", None):
                    parts.append(delta.content)
                    n_chunks += 1
                finish = chunk.choices[0].finish_reason or finish
    finally:
        close = getattr(chunks, "close", None) or getattr(getattr(chunks, "completion_stream", None), "close", None)
        if close is not None:
            close()  # drop the connection: the server stops generating for a cancelled query
    text = "".join(parts).strip()
    pt = int(getattr(usage, "prompt_tokens", 0) or 0)
    ct = int(getattr(usage, "completion_tokens", 0) or 0) or n_chunks
    meta = {} if usage is not None else {"usage_estimated": True}
    return Candidate(q.id, backend.name, text, Usage(pt, ct, backend.cost(pt, ct), time.perf_counter() - t0),
                     finish_reason=finish, metadata=meta)


def chat_batch(backend, queries: list[Query], **kw) -> list[Candidate]:
    """Run a batch with at most `concurrency` calls in flight; results keep the input order."""
    n = max(1, min(backend.spec.concurrency, len(queries)))
    if n == 1:
        return [chat_call(backend, q, **kw) for q in queries]
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix=f"expert-{backend.name}") as pool:
        return list(pool.map(lambda q: chat_call(backend, q, **kw), queries))
