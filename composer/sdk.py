"""Python SDK: the same methods in-process (`Composer`) and over HTTP (`Client`, `AsyncClient`).

    from composer.sdk import Composer, Client
    with Composer.from_yaml("experts.yaml") as c:          # in-process, the one core
        print(c.ask("What is 2+2?").text)
    with Client("http://127.0.0.1:8000", api_key="...") as cl:   # a running `composer serve`
        print(cl.ask("What is 2+2?").text)
        print(cl.route(["What is 2+2?"])[0].reason)
        print(cl.chat([{"role": "user", "content": "hi"}], model="smollm2").text)

Every method returns the core's types (Answer, RouteDecision). `ask`/`chat` take `expert=` or
`pipeline=` (or `model=` for chat); async variants: `AsyncClient` and `Composer.aask/achat/aroute`.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import AsyncIterator, Iterable, Iterator

from composer import core
from composer.errors import BadRequestError, ComposerError
from composer.types import Answer, Candidate, Query, RouteDecision, Usage


class ServiceError(ComposerError):
    """The endpoint answered with an error. `status` is the HTTP status; `retry_after` seconds when given."""

    def __init__(self, message: str, status: int, retry_after: float | None = None):
        self.status, self.retry_after = status, retry_after
        super().__init__(f"HTTP {status}: {message}")


class Composer(core.Composer):
    """The core Composer plus `chat` and async variants, so in-process code reads like Client code."""

    def chat(self, messages: list[dict], *, model: str | None = None, expert: str | None = None,
             pipeline: str | None = None, **generation) -> Answer:
        expert, pipeline = _split_model(self, model, expert, pipeline)
        return self.ask(_chat_query(messages, generation), expert=expert, pipeline=pipeline)

    async def aask(self, question, **kw) -> Answer:
        return await asyncio.to_thread(self.ask, question, **kw)

    async def achat(self, messages: list[dict], **kw) -> Answer:
        return await asyncio.to_thread(self.chat, messages, **kw)

    async def aroute(self, queries, **kw) -> list[RouteDecision]:
        return await asyncio.to_thread(self.route, queries, **kw)


def _split_model(c: core.Composer, model, expert, pipeline):
    if model is not None:
        if model in c.pipelines:
            return None, model
        return model, None
    return expert, pipeline


def _chat_query(messages: list[dict], generation: dict) -> Query:
    users = [m["content"] for m in messages if m.get("role") == "user"]
    if not users:
        raise BadRequestError("messages needs at least one 'user' message")
    return Query(users[-1], messages=tuple(dict(m) for m in messages), **generation)


def _model_of(expert: str | None, pipeline: str | None, model: str | None = None) -> str:
    if sum(x is not None for x in (expert, pipeline, model)) > 1:
        raise BadRequestError("give one of model, expert or pipeline")
    return model or expert or pipeline or "default"


def _body(messages: list[dict], model: str, generation: dict, stream: bool = False) -> dict:
    body = {"model": model, "messages": messages, **{k: v for k, v in generation.items() if v is not None}}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _raise_for(resp) -> None:
    if resp.status_code < 400:
        return
    try:
        msg = resp.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        msg = resp.text[:500]
    if resp.status_code == 400:
        raise BadRequestError(msg)
    ra = resp.headers.get("retry-after")
    raise ServiceError(msg, resp.status_code, float(ra) if ra else None)


def _answer(data: dict, latency_s: float) -> Answer:
    ext = data.get("composer") or {}
    u = data.get("usage") or {}
    usage = Usage(u.get("prompt_tokens", 0), u.get("completion_tokens", 0), ext.get("cost", 0.0), latency_s)
    experts = (ext.get("experts") or [[]])[0]
    tried = (ext.get("experts_tried") or [[]])[0]
    route = (ext.get("route") or [None])[0]
    text = data["choices"][0]["message"]["content"] or ""
    cand = Candidate(data["id"], experts[0] if experts else data.get("model", ""), text, usage,
                     finish_reason=data["choices"][0].get("finish_reason"), metadata={"experts_tried": tried})
    return Answer(data["id"], text, experts, [cand], usage, RouteDecision.from_dict(route) if route else None)


def _sse_lines(lines: Iterable[str]) -> Iterator[dict]:
    for line in lines:
        if not line.startswith("data: "):
            continue
        payload = line[len("data: "):].strip()
        if payload == "[DONE]":
            return
        obj = json.loads(payload)
        if "error" in obj:
            raise ServiceError(obj["error"].get("message", "stream error"), 503)
        yield obj


def _delta(obj: dict) -> str:
    return "".join((ch.get("delta") or {}).get("content") or "" for ch in obj.get("choices", []))


class Client:
    """Synchronous client of a running `composer serve` (httpx)."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 300.0):
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.api_key = api_key
        self.timeout = timeout
        self._http = None

    @property
    def http(self):
        if self._http is None:
            import httpx

            self._http = httpx.Client(base_url=self.base_url, timeout=self.timeout,
                                      headers={"Authorization": f"Bearer {self.api_key}"})
        return self._http

    def chat(self, messages: list[dict], *, model: str | None = None, expert: str | None = None,
             pipeline: str | None = None, **generation) -> Answer:
        t0 = time.perf_counter()
        r = self.http.post("/v1/chat/completions", json=_body(messages, _model_of(expert, pipeline, model), generation))
        _raise_for(r)
        return _answer(r.json(), time.perf_counter() - t0)

    def ask(self, question: str, *, expert: str | None = None, pipeline: str | None = None, **generation) -> Answer:
        return self.chat([{"role": "user", "content": question}], expert=expert, pipeline=pipeline, **generation)

    def stream(self, messages: list[dict], *, model: str | None = None, **generation) -> Iterator[str]:
        """Yield the answer's text pieces as the server streams them."""
        with self.http.stream("POST", "/v1/chat/completions",
                              json=_body(messages, _model_of(None, None, model), generation, stream=True)) as r:
            if r.status_code >= 400:
                r.read()
                _raise_for(r)
            for obj in _sse_lines(r.iter_lines()):
                piece = _delta(obj)
                if piece:
                    yield piece

    def route(self, queries: Iterable[str], *, expert: str | None = None,
              pipeline: str | None = None) -> list[RouteDecision]:
        r = self.http.post("/v1/route", json={"model": _model_of(expert, pipeline), "input": list(queries)})
        _raise_for(r)
        return [RouteDecision.from_dict(d) for d in r.json()["decisions"]]

    def models(self) -> list[dict]:
        r = self.http.get("/v1/models")
        _raise_for(r)
        return r.json()["data"]

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient(Client):
    """Asynchronous client: the same methods, awaited (httpx.AsyncClient)."""

    @property
    def http(self):
        if self._http is None:
            import httpx

            self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout,
                                           headers={"Authorization": f"Bearer {self.api_key}"})
        return self._http

    async def chat(self, messages, *, model=None, expert=None, pipeline=None, **generation) -> Answer:
        t0 = time.perf_counter()
        r = await self.http.post("/v1/chat/completions",
                                 json=_body(messages, _model_of(expert, pipeline, model), generation))
        _raise_for(r)
        return _answer(r.json(), time.perf_counter() - t0)

    async def ask(self, question, *, expert=None, pipeline=None, **generation) -> Answer:
        return await self.chat([{"role": "user", "content": question}], expert=expert, pipeline=pipeline,
                               **generation)

    async def stream(self, messages, *, model=None, **generation) -> AsyncIterator[str]:
        async with self.http.stream("POST", "/v1/chat/completions",
                                    json=_body(messages, _model_of(None, None, model), generation, stream=True)) as r:
            if r.status_code >= 400:
                await r.aread()
                _raise_for(r)
            lines = [line async for line in r.aiter_lines()]
        for obj in _sse_lines(lines):
            piece = _delta(obj)
            if piece:
                yield piece

    async def route(self, queries, *, expert=None, pipeline=None) -> list[RouteDecision]:
        r = await self.http.post("/v1/route", json={"model": _model_of(expert, pipeline), "input": list(queries)})
        _raise_for(r)
        return [RouteDecision.from_dict(d) for d in r.json()["decisions"]]

    async def models(self) -> list[dict]:
        r = await self.http.get("/v1/models")
        _raise_for(r)
        return r.json()["data"]

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


__all__ = ["AsyncClient", "Client", "Composer", "ServiceError"]
