"""Shared call path for experts reached over an OpenAI-compatible API through litellm.

Used by the `litellm` backend (any provider) and the `server` backend (a managed local server).
Two entry points, one mapping:
- `achat_call(backend, q, on_delta)`: a coroutine on the runtime's event loop (litellm.acompletion),
  the path the runtime uses: up to the expert's `concurrency` calls at once, no thread per call;
  cancelling its task closes the upstream HTTP stream, so the server stops generating.
- `chat_batch(backend, queries, on_delta)`: the synchronous batch (Ray actors, tests).
Request fields come from composer/backends/params.py; exceptions become typed CallErrors by
class (composer/runtime/errors.py).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from composer.backends.params import delta_fields, merge_tool_calls, message_fields, openai_kwargs
from composer.offline import import_litellm
from composer.runtime.errors import failure, from_exception
from composer.types import Candidate, Delta, Query, Usage


def _kwargs(backend, q: Query, *, model: str, api_base: str | None, api_key: str | None,
            extra: dict | None) -> dict:
    kw = dict(model=model, timeout=backend.spec.timeout_s, num_retries=0, **openai_kwargs(backend, q))
    if api_base:
        kw["api_base"] = api_base
    if api_key:
        kw["api_key"] = api_key
    kw.update(extra or {})
    return kw


def _error(backend, q: Query, exc: BaseException, t0: float) -> Candidate:
    err = from_exception(exc)
    return failure(q.id, backend.name, err.kind, f"expert '{backend.name}': {err.kind}: {err.message}",
                   retryable=err.retryable, status=err.status, usage=Usage(latency_s=time.perf_counter() - t0))


def _finished(backend, q: Query, res, t0: float) -> Candidate:
    choice = res.choices[0]
    text, tool_calls = message_fields(choice.message)
    u = getattr(res, "usage", None)
    pt = int(getattr(u, "prompt_tokens", 0) or 0)
    ct = int(getattr(u, "completion_tokens", 0) or 0)
    lp = getattr(choice, "logprobs", None)
    return Candidate(q.id, backend.name, text.strip(), Usage(pt, ct, backend.cost(pt, ct), time.perf_counter() - t0),
                     finish_reason=getattr(choice, "finish_reason", None), tool_calls=tool_calls,
                     logprobs=lp.model_dump() if hasattr(lp, "model_dump") else lp)


class _Collector:
    """Accumulates stream chunks into a Candidate, passing each delta on as it arrives."""

    def __init__(self, backend, q: Query, on_delta, t0: float):
        self.backend, self.q, self.on_delta, self.t0 = backend, q, on_delta, t0
        self.parts: list[str] = []
        self.tool_deltas: list[dict] = []
        self.n, self.usage, self.finish = 0, None, None

    def add(self, chunk) -> None:
        self.usage = getattr(chunk, "usage", None) or self.usage
        if not chunk.choices:
            return
        choice = chunk.choices[0]
        text, tcs = delta_fields(choice.delta)
        self.finish = choice.finish_reason or self.finish
        if text or tcs:
            self.n += 1
            self.parts.append(text)
            if tcs:
                self.tool_deltas.extend(tcs)
            if self.on_delta is not None:
                lp = getattr(choice, "logprobs", None)
                self.on_delta(Delta(self.q.id, self.backend.name, text, tool_calls=tcs,
                                    logprobs=lp.model_dump() if hasattr(lp, "model_dump") else lp))

    def candidate(self) -> Candidate:
        pt = int(getattr(self.usage, "prompt_tokens", 0) or 0)
        ct = int(getattr(self.usage, "completion_tokens", 0) or 0) or self.n
        meta = {} if self.usage is not None else {"usage_estimated": True}
        calls = merge_tool_calls(self.tool_deltas) if self.tool_deltas else None
        return Candidate(self.q.id, self.backend.name, "".join(self.parts).strip(),
                         Usage(pt, ct, self.backend.cost(pt, ct), time.perf_counter() - self.t0),
                         finish_reason="tool_calls" if calls and self.finish in (None, "stop") else self.finish,
                         metadata=meta, tool_calls=calls)


# litellm-only arguments that an OpenAI-compatible server must not receive
_LITELLM_ONLY = ("drop_params", "_skip_mcp_handler", "num_retries", "timeout", "api_base", "api_key", "model")
_clients: dict = {}


def _direct_model(model: str, api_base: str | None) -> str | None:
    """The served model name when the upstream speaks OpenAI's API at `api_base` (an
    `openai/...` or `hosted_vllm/...` model with a base URL), else None (litellm translates)."""
    if not api_base:
        return None
    for prefix in ("openai/", "hosted_vllm/"):
        if model.startswith(prefix):
            return model[len(prefix):]
    return None


def _client(api_base: str, api_key: str | None, timeout: float, conc: int):
    """One openai.AsyncOpenAI per upstream (and event loop): pooled keep-alive connections."""
    import openai  # noqa: PLC0415

    loop = asyncio.get_running_loop()
    key = (id(loop), api_base, api_key, timeout)
    c = _clients.get(key)
    if c is None:
        import httpx  # noqa: PLC0415

        limits = httpx.Limits(max_connections=max(conc, 1) + 8, max_keepalive_connections=max(conc, 1) + 8)
        c = _clients[key] = openai.AsyncOpenAI(base_url=api_base, api_key=api_key or "not-needed",
                                               timeout=timeout, max_retries=0,
                                               http_client=httpx.AsyncClient(limits=limits, timeout=timeout))
    return c


async def achat_call(backend, q: Query, on_delta=None, *, model: str, api_base: str | None,
                     api_key: str | None, extra: dict | None = None) -> Candidate:
    """One call on the event loop. With `on_delta` the answer streams (each delta passed on as it
    arrives); cancelling the awaiting task closes the upstream connection. An OpenAI-compatible
    upstream (`openai/...` or `hosted_vllm/...` with an api_base, and every managed server) is
    called with the official async client directly; other providers go through litellm."""
    kw = _kwargs(backend, q, model=model, api_base=api_base, api_key=api_key, extra=extra)
    t0 = time.perf_counter()
    served = _direct_model(model, api_base)
    try:
        if served is not None:
            client = _client(api_base, api_key, float(backend.spec.timeout_s), backend.spec.concurrency or 64)
            args = {k: v for k, v in kw.items() if k not in _LITELLM_ONLY}
            create = client.chat.completions.create
            if on_delta is None:
                return _finished(backend, q, await create(model=served, **args), t0)
            stream = await create(model=served, **args, stream=True, stream_options={"include_usage": True})
        else:
            litellm = import_litellm()
            if on_delta is None:
                return _finished(backend, q, await litellm.acompletion(**kw), t0)
            stream = await litellm.acompletion(**kw, stream=True, stream_options={"include_usage": True})
        col = _Collector(backend, q, on_delta, t0)
        try:
            async for chunk in stream:
                col.add(chunk)
        finally:
            await _aclose(stream)
        return col.candidate()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - every provider error becomes a typed per-query error
        return _error(backend, q, exc, t0)


async def _aclose(stream) -> None:
    """Close a litellm stream wrapper and the HTTP response under it (drops the connection)."""
    for obj in (stream, getattr(stream, "completion_stream", None), getattr(stream, "response", None)):
        for name in ("aclose", "close"):
            fn = getattr(obj, name, None)
            if fn is None:
                continue
            try:
                res = fn()
                if asyncio.iscoroutine(res):
                    await res
            except Exception:  # noqa: BLE001 - already closed
                pass
            break


def chat_call(backend, q: Query, on_delta=None, *, model: str, api_base: str | None, api_key: str | None,
              extra: dict | None = None, stream: bool = False) -> Candidate:
    """One synchronous call. Streams when `on_delta` is given or `stream=True` (so that
    `backend.cancel()` can close the upstream request mid-generation)."""
    if backend.is_cancelled(q.id):
        return backend.cancelled_candidate(q, 0.0)
    litellm = import_litellm()
    kw = _kwargs(backend, q, model=model, api_base=api_base, api_key=api_key, extra=extra)
    t0 = time.perf_counter()
    try:
        if not stream and on_delta is None:
            return _finished(backend, q, litellm.completion(**kw), t0)
        chunks = litellm.completion(**kw, stream=True, stream_options={"include_usage": True})
        col = _Collector(backend, q, on_delta, t0)
        try:
            for chunk in chunks:
                if backend.is_cancelled(q.id):
                    return backend.cancelled_candidate(q, time.perf_counter() - t0, col.n)
                col.add(chunk)
        finally:
            close = getattr(chunks, "close", None) or getattr(getattr(chunks, "completion_stream", None), "close", None)
            if close is not None:
                close()  # drop the connection: the server stops generating for a cancelled query
        return col.candidate()
    except Exception as exc:  # noqa: BLE001 - every provider error becomes a typed per-query error
        return _error(backend, q, exc, t0)


def chat_batch(backend, queries: list[Query], on_delta=None, **kw) -> list[Candidate]:
    """A batch with at most `concurrency` calls in flight; results keep the input order."""
    n = max(1, min(backend.spec.concurrency or 64, len(queries)))
    if n == 1:
        return [chat_call(backend, q, on_delta, **kw) for q in queries]
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix=f"expert-{backend.name}") as pool:
        return list(pool.map(lambda q: chat_call(backend, q, on_delta, **kw), queries))
