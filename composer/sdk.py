"""Python SDK: the same methods in-process (`Composer`) and over HTTP (`Client`, `AsyncClient`).

    from composer.sdk import Composer, Client
    with Composer.from_yaml("experts.yaml") as c:          # in-process, the one core
        print(c.ask("What is 2+2?").text)
        r = c.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}])
    with Client("http://127.0.0.1:8000", api_key="...") as cl:   # a running `composer serve`
        print(cl.ask("What is 2+2?").text)
        print(cl.route(["What is 2+2?"])[0].reason)
        print(cl.chat([{"role": "user", "content": "hi"}], model="smollm2").text)
        r = cl.chat.completions.create(model="smollm2", messages=[...], tools=[...])   # openai's own

`Client` and `AsyncClient` are thin layers over the official `openai.OpenAI` / `AsyncOpenAI`
(`cl.openai`), so they stream as the server sends, retry on 429/503 with `Retry-After`, and take
every OpenAI field; composer's extras travel in `extra_body` (e.g. `task`) and come back in the
response's `composer` field. `ask`/`chat` return the core's `Answer`; `chat.completions.create`
returns OpenAI's `ChatCompletion` (in-process too, as RouteLLM's Controller does).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Iterable, Iterator

from composer import core
from composer.errors import BadRequestError, ComposerError
from composer.types import Answer, Candidate, Query, RouteDecision, Usage

EXTRA_FIELDS = ("task",)  # composer's request extensions, sent in extra_body


class ServiceError(ComposerError):
    """The endpoint answered with an error. `status` is the HTTP status; `retry_after` seconds when given."""

    def __init__(self, message: str, status: int, retry_after: float | None = None):
        self.status, self.retry_after = status, retry_after
        super().__init__(f"HTTP {status}: {message}")


# -- in-process ------------------------------------------------------------------------------------


class _LocalCompletions:
    """`chat.completions.create` on the in-process core: the endpoint's schema and checks, the
    same response objects as the `openai` client gives (ChatCompletion / ChatCompletionChunk)."""

    def __init__(self, composer: "Composer"):
        self._c = composer

    def _plan(self, body: dict):
        from composer.serve.plan import to_queries
        from composer.serve_schema import BadRequest, ChatRequest, new_request_id, validate

        try:
            req = validate(body, ChatRequest)
            rid = new_request_id()
            return req, rid, to_queries(req, self._c, max_n=128, request_id=rid)
        except BadRequest as exc:
            raise BadRequestError(exc.message) from None

    def create(self, *, model: str, messages: list[dict], stream: bool = False, extra_body: dict | None = None,
               **fields):
        from openai.types.chat import ChatCompletion

        from composer.serve.bodies import completion_body

        body = {"model": model, "messages": messages, "stream": stream,
                **{k: v for k, v in fields.items() if v is not None}, **(extra_body or {})}
        req, rid, plan = self._plan(body)
        t = plan.target
        if stream:
            return self._stream(req, rid, plan)
        answers = self._c.run(plan.queries, expert=t.expert, pipeline=t.pipeline)
        bad = [a for a in answers if not a.ok]
        if bad:
            raise ServiceError(bad[0].error or "generation failed", 502)
        return ChatCompletion.model_validate(completion_body(rid, req.model, answers))

    def _stream(self, req, rid, plan) -> Iterator:
        from openai.types.chat import ChatCompletionChunk

        from composer.serve.bodies import ChunkWriter, finish_reason, tool_calls_of
        from composer.types import Delta

        w = ChunkWriter(rid, req.model, encode=dict)
        t, answers = plan.target, []
        for i, q in enumerate(plan.queries):
            yield ChatCompletionChunk.model_validate(w.role(i))
            text = tools = False
            for item in self._c.stream(q, expert=t.expert, pipeline=t.pipeline):
                if isinstance(item, Answer):
                    if not item.ok:
                        raise ServiceError(item.error or "generation failed", 502)
                    answers.append(item)
                    late = Delta(q.id, "", "" if text else item.text,
                                 None if tools else tool_calls_of(item, streaming=True))
                    piece = w.delta(i, late)
                    if piece is not None:
                        yield ChatCompletionChunk.model_validate(piece)
                    yield ChatCompletionChunk.model_validate(w.finish(i, finish_reason(item)))
                else:
                    text |= bool(item.text)
                    tools |= bool(item.tool_calls)
                    piece = w.delta(i, Delta(item.query_id, item.expert, item.text, item.tool_calls, None,
                                             item.logprobs))
                    if piece is not None:
                        yield ChatCompletionChunk.model_validate(piece)
        if req.stream_options is not None and req.stream_options.include_usage:
            yield ChatCompletionChunk.model_validate(w.usage(answers))


class _LocalChat:
    """`c.chat(messages, ...)` -> Answer, and `c.chat.completions.create(...)` (OpenAI's shape)."""

    def __init__(self, composer: "Composer"):
        self._c = composer
        self.completions = _LocalCompletions(composer)

    def __call__(self, messages: list[dict], *, model: str | None = None, expert: str | None = None,
                 pipeline: str | None = None, **generation) -> Answer:
        expert, pipeline = _split_model(self._c, model, expert, pipeline)
        return self._c.ask(_chat_query(messages, generation), expert=expert, pipeline=pipeline)


class Composer(core.Composer):
    """The core Composer plus `chat` (callable, and `chat.completions.create`) and async variants,
    so in-process code reads like Client code."""

    @property
    def chat(self) -> _LocalChat:
        return _LocalChat(self)

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


# -- over HTTP (the official openai client) --------------------------------------------------------


def _model_of(expert: str | None, pipeline: str | None, model: str | None = None) -> str:
    if sum(x is not None for x in (expert, pipeline, model)) > 1:
        raise BadRequestError("give one of model, expert or pipeline")
    return model or expert or pipeline or "default"


def _split_fields(generation: dict) -> dict:
    """OpenAI keyword arguments, with composer's extensions moved into extra_body."""
    kw = {k: v for k, v in generation.items() if v is not None and k not in EXTRA_FIELDS}
    extra = {k: generation[k] for k in EXTRA_FIELDS if generation.get(k) is not None}
    if extra:
        kw["extra_body"] = {**kw.get("extra_body", {}), **extra}
    return kw


def _error(exc) -> ComposerError:
    """An openai exception as composer's: 4xx request problems are BadRequestError."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        try:
            msg = exc.body.get("message") if isinstance(exc.body, dict) else None
        except AttributeError:
            msg = None
        msg = msg or str(exc)
        if exc.status_code in (400, 404, 413, 422):
            return BadRequestError(msg)
        ra = exc.response.headers.get("retry-after")
        return ServiceError(msg, exc.status_code, float(ra) if ra else None)
    return ServiceError(str(exc), 0)


def answer_of(r, latency_s: float = 0.0) -> Answer:
    """An OpenAI ChatCompletion (from composer) as composer's Answer (experts, cost, route)."""
    ext = (r.model_extra or {}).get("composer") or {}
    u = r.usage
    usage = Usage(u.prompt_tokens if u else 0, u.completion_tokens if u else 0, ext.get("cost", 0.0), latency_s)
    experts = (ext.get("experts") or [[]])[0]
    tried = (ext.get("experts_tried") or [[]])[0]
    route = (ext.get("route") or [None])[0]
    choice = r.choices[0]
    text = choice.message.content or ""
    calls = [tc.model_dump() for tc in choice.message.tool_calls] if choice.message.tool_calls else None
    cand = Candidate(r.id, experts[0] if experts else r.model, text, usage, finish_reason=choice.finish_reason,
                     metadata={"experts_tried": tried}, tool_calls=calls)
    return Answer(r.id, text, experts, [cand], usage, RouteDecision.from_dict(route) if route else None,
                  finish_reason=choice.finish_reason, tool_calls=calls)


class _ClientChat:
    """`cl.chat(messages, ...)` -> Answer, and `cl.chat.completions` (the openai client's own)."""

    def __init__(self, client: "Client"):
        self._cl = client
        self.completions = client.openai.chat.completions

    def __call__(self, messages: list[dict], *, model: str | None = None, expert: str | None = None,
                 pipeline: str | None = None, **generation):
        return self._cl._chat(messages, _model_of(expert, pipeline, model), generation)


class Client:
    """Synchronous client of a running `composer serve`, on `openai.OpenAI`."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 300.0, max_retries: int = 2):
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.api_key, self.timeout, self.max_retries = api_key, timeout, max_retries
        self._openai = None

    def _make(self):
        import openai

        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=self.api_key, timeout=self.timeout,
                             max_retries=self.max_retries)

    @property
    def openai(self):
        if self._openai is None:
            self._openai = self._make()
        return self._openai

    @property
    def chat(self) -> _ClientChat:
        return _ClientChat(self)

    def _chat(self, messages, model, generation) -> Answer:
        import openai

        t0 = time.perf_counter()
        try:
            r = self.openai.chat.completions.create(model=model, messages=messages, **_split_fields(generation))
        except openai.APIError as exc:
            raise _error(exc) from None
        return answer_of(r, time.perf_counter() - t0)

    def ask(self, question: str, *, expert: str | None = None, pipeline: str | None = None, **generation) -> Answer:
        return self._chat([{"role": "user", "content": question}], _model_of(expert, pipeline), generation)

    def stream(self, messages: list[dict], *, model: str | None = None, **generation) -> Iterator[str]:
        """Yield the answer's text pieces as the server streams them."""
        import openai

        try:
            for ev in self.openai.chat.completions.create(model=_model_of(None, None, model), messages=messages,
                                                          stream=True, **_split_fields(generation)):
                piece = "".join(ch.delta.content or "" for ch in ev.choices)
                if piece:
                    yield piece
        except openai.APIError as exc:
            raise _error(exc) from None

    def _post(self, path: str, body: dict) -> dict:
        import httpx
        import openai

        try:
            return self.openai.post(path, body=body, cast_to=httpx.Response).json()
        except openai.APIError as exc:
            raise _error(exc) from None

    def route(self, queries: Iterable[str], *, expert: str | None = None,
              pipeline: str | None = None) -> list[RouteDecision]:
        data = self._post("/route", {"model": _model_of(expert, pipeline), "input": list(queries)})
        return [RouteDecision.from_dict(d) for d in data["decisions"]]

    def models(self) -> list[dict]:
        import openai

        try:
            return [m.model_dump() for m in self.openai.models.list()]
        except openai.APIError as exc:
            raise _error(exc) from None

    def close(self) -> None:
        if self._openai is not None:
            self._openai.close()
            self._openai = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient(Client):
    """Asynchronous client: the same methods, awaited (on `openai.AsyncOpenAI`)."""

    def _make(self):
        import openai

        return openai.AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key=self.api_key, timeout=self.timeout,
                                  max_retries=self.max_retries)

    async def _chat(self, messages, model, generation) -> Answer:
        import openai

        t0 = time.perf_counter()
        try:
            r = await self.openai.chat.completions.create(model=model, messages=messages,
                                                          **_split_fields(generation))
        except openai.APIError as exc:
            raise _error(exc) from None
        return answer_of(r, time.perf_counter() - t0)

    async def ask(self, question, *, expert=None, pipeline=None, **generation) -> Answer:
        return await self._chat([{"role": "user", "content": question}], _model_of(expert, pipeline), generation)

    async def stream(self, messages, *, model=None, **generation) -> AsyncIterator[str]:
        """Yield text pieces as they arrive (not after the whole answer)."""
        import openai

        try:
            events = await self.openai.chat.completions.create(model=_model_of(None, None, model), messages=messages,
                                                               stream=True, **_split_fields(generation))
            async for ev in events:
                piece = "".join(ch.delta.content or "" for ch in ev.choices)
                if piece:
                    yield piece
        except openai.APIError as exc:
            raise _error(exc) from None

    async def _post(self, path: str, body: dict) -> dict:
        import httpx
        import openai

        try:
            r = await self.openai.post(path, body=body, cast_to=httpx.Response)
        except openai.APIError as exc:
            raise _error(exc) from None
        return r.json()

    async def route(self, queries, *, expert=None, pipeline=None) -> list[RouteDecision]:
        data = await self._post("/route", {"model": _model_of(expert, pipeline), "input": list(queries)})
        return [RouteDecision.from_dict(d) for d in data["decisions"]]

    async def models(self) -> list[dict]:
        import openai

        try:
            page = await self.openai.models.list()
        except openai.APIError as exc:
            raise _error(exc) from None
        return [m.model_dump() for m in page.data]

    async def aclose(self) -> None:
        if self._openai is not None:
            await self._openai.close()
            self._openai = None

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


__all__ = ["AsyncClient", "Client", "Composer", "ServiceError", "answer_of"]
