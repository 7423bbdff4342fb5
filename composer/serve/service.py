"""The endpoint's HTTP logic, independent of Ray Serve's decorators (composer/serve/app.py wraps it).

It calls the core's public methods only (composer.core.Composer); nothing here reaches into the
runtime, the reliability policy or the backends. Every error is an OpenAI error object
({"error": {message, type, param, code}}); bad input of any shape is a 4xx, never a 500.
Every answer carries where it went in headers: `x-composer-experts`, `x-composer-route-reason`
(and `x-composer-dropped-params` / `x-composer-ignored-fields` when fields were not used).
"""

import asyncio
import hmac
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from composer.errors import BadRequestError, ComposerError
from composer.observability import attach
from composer.serve.bodies import ChunkWriter, completion_body, embeddings_body, error_body, text_completion_body
from composer.serve.metrics import Metrics, replica_id
from composer.serve.options import ServeOptions, hash_key, scrub
from composer.serve.streaming import sse_events
from composer.serve.plan import completion_queries, resolve_model, to_queries
from composer.serve_schema import (BadRequest, ChatRequest, CompletionRequest, EmbeddingRequest, PredictRequest,
                                   RouteRequest, new_request_id, parse_body)
from composer.types import Query

log = logging.getLogger("composer.serve")
EMBEDDING_MODELS = ("all-minilm-l6-v2", "embedded:all-minilm-l6-v2")


def header_value(text: str, limit: int = 512) -> str:
    """A string safe for an HTTP header: printable ASCII, one line, bounded."""
    clean = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text.replace("\n", " "))
    return clean[:limit]


class Service:
    """The endpoint's logic, independent of Ray Serve's decorators (they wrap it in build_app)."""

    def __init__(self, config_path: str, key_hashes: list[str], options: ServeOptions):
        from composer.core import Composer

        self.config_path = config_path
        self.key_hashes = list(key_hashes)
        self.options = options
        # experts.yaml's settings.reliability, with the command line's flags on top; read once.
        self.composer = Composer.from_yaml(config_path, reliability_overrides=options.reliability)
        self.composer.stream_mode(max_wait_s=options.batch_max_wait_s, max_batch=options.max_batch)
        self.pool = ThreadPoolExecutor(max_workers=options.max_inflight + 4, thread_name_prefix="composer-req")
        self.metrics = Metrics(replica=replica_id())
        # logs (as the CLI's --log-* say, via $COMPOSER_LOG), traces (OTEL_*), this replica's metrics
        attach(self.composer, metrics=self.metrics)
        self.inflight = 0
        self.draining = False
        self.started = time.time()
        self._embedder = None

    # -- plumbing ---------------------------------------------------------------------------
    def authorized(self, request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return False
        digest = hash_key(key.strip())
        return any(hmac.compare_digest(digest, h) for h in self.key_hashes)

    def error(self, status: int, message: str, *, route: str, model: str = "", param=None, code=None,
              type_: str = "invalid_request_error", retry_after: int | None = None):
        from fastapi.responses import JSONResponse

        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        if status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        self.metrics.requests.labels(route, model, str(status)).inc()
        return JSONResponse(error_body(message, type_=type_, param=param, code=code),
                            status_code=status, headers=headers)

    def bad(self, exc: BadRequest, route: str):
        type_ = "invalid_request_error" if exc.status < 500 else "server_error"
        return self.error(exc.status, exc.message, route=route, param=exc.param, code=exc.code, type_=type_)

    def gate(self, request, route: str, admit: bool = False):
        """Auth, drain and (with `admit`) queue-limit checks; a response to send at once, or None."""
        if not self.authorized(request):
            return self.error(401, "missing or invalid API key; send 'Authorization: Bearer <key>'",
                              route=route, type_="authentication_error", code="invalid_api_key")
        if self.draining:
            self.metrics.rejected.labels("draining").inc()
            return self.error(503, "server is shutting down; retry on another instance", route=route,
                              type_="server_error", code="draining", retry_after=self.options.retry_after_s)
        if admit and self.inflight >= self.options.max_inflight:
            self.metrics.rejected.labels("overload").inc()
            return self.error(429, f"server busy ({self.inflight} requests in flight, limit "
                              f"{self.options.max_inflight}); retry later", route=route,
                              type_="rate_limit_error", code="overloaded", retry_after=self.options.retry_after_s)
        return None

    async def run(self, queries: list[Query], expert, pipeline):
        """composer.run in a worker thread; a cancelled await (client gone) cancels the queries."""
        loop = asyncio.get_running_loop()
        ids = [q.id for q in queries]
        fut = loop.run_in_executor(self.pool, partial(self.composer.run, queries, expert=expert, pipeline=pipeline))
        fut.add_done_callback(lambda _f: self.composer.forget(ids))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            self.metrics.cancelled.inc()
            self.composer.cancel(ids)
            raise

    def failure(self, answers):
        """(status, message, code, retry_after) when any answer failed, else None."""
        bad = [a for a in answers if not a.ok]
        if not bad:
            return None
        a = bad[0]
        kinds = {c.call_error.kind for c in a.candidates if c.call_error is not None}
        if a.call_error is not None:
            kinds.add(a.call_error.kind)
        if kinds & {"bad_request", "context_overflow"}:
            return 400, scrub(a.error), "context_length_exceeded" if "context_overflow" in kinds else "expert_rejected", None
        wait = max(self.options.retry_after_s, math.ceil(self.composer.retry_after_s()))
        return 503, scrub(a.error), "expert_unavailable", wait

    def route_headers(self, plan, answers=None, decisions=None) -> dict:
        if answers is not None:
            experts = list(dict.fromkeys(e for a in answers for e in a.experts))
            reasons = [a.route.reason for a in answers if a.route is not None]
        else:
            experts = list(dict.fromkeys(e for d in decisions or [] for e in d.experts))
            reasons = [d.reason for d in decisions or []]
        h = {"x-composer-experts": header_value(",".join(experts)),
             "x-composer-route-reason": header_value(reasons[0] if reasons else "")}
        if plan.target.pipeline:
            h["x-composer-pipeline"] = header_value(plan.target.pipeline)
        if plan.dropped:
            h["x-composer-dropped-params"] = header_value(",".join(plan.dropped))
            log.warning("request fields dropped (an expert cannot honour them): %s", ", ".join(plan.dropped))
        if plan.ignored:
            h["x-composer-ignored-fields"] = header_value(",".join(plan.ignored))
            log.warning("unknown request fields ignored: %s", ", ".join(plan.ignored)[:300])
        return h

    async def _generate(self, request, route: str, rid: str, req, plan, body_of, text_completion=False,
                        prefixes=None):
        """Answer a planned request: JSON, or server-sent events when `stream` is set."""
        from fastapi.responses import JSONResponse, StreamingResponse

        t = plan.target
        label = t.pipeline or t.expert or "default"  # a registry name: bounded metric labels
        if req.stream:
            loop = asyncio.get_running_loop()
            # routed once: the headers and the streamed runs use the same decisions
            decisions = await loop.run_in_executor(self.pool, partial(
                self.composer.route, plan.queries, expert=t.expert, pipeline=t.pipeline))
            include = bool(req.stream_options and req.stream_options.include_usage)
            writer = ChunkWriter(rid, req.model, text_completion=text_completion)

            def on_answers(answers):
                self.metrics.record_answers(answers)
                fail = self.failure(answers)
                self.metrics.requests.labels(route, label, str(fail[0]) if fail else "200").inc()
                if fail is None and len(answers) == len(plan.queries):
                    self.log_completion(rid, req.model, plan.queries, answers)

            events = sse_events(self.composer, plan, writer, include_usage=include, failure=self.failure,
                                on_answers=on_answers, prefixes=prefixes, decisions=decisions)
            return StreamingResponse(self._counted(events, route), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                              **self.route_headers(plan, decisions=decisions)})
        answers = await self.run(plan.queries, t.expert, t.pipeline)
        self.metrics.record_answers(answers)
        fail = self.failure(answers)
        if fail is not None:
            status, msg, code, wait = fail
            return self.error(status, msg, route=route, model=label, code=code, retry_after=wait,
                              type_="invalid_request_error" if status == 400 else "server_error")
        self.metrics.requests.labels(route, label, "200").inc()
        await asyncio.get_running_loop().run_in_executor(self.pool, partial(self.log_completion, rid, req.model, plan.queries, answers))
        return JSONResponse(body_of(answers), headers=self.route_headers(plan, answers=answers))

    async def _counted(self, events, route: str):
        """The stream's events; the request stays in flight until the last one (or a disconnect)."""
        t0 = time.perf_counter()
        try:
            async for ev in events:
                yield ev
        except asyncio.CancelledError:
            self.metrics.cancelled.inc()
            raise
        finally:
            await events.aclose()
            self._done(route, t0)

    async def _admitted(self, request, route: str, handler):
        """Gate, count in flight, turn every refusal into an OpenAI error object."""
        gated = self.gate(request, route, admit=True)
        if gated is not None:
            return gated
        self.inflight += 1
        self.metrics.inflight.set(self.inflight)
        t0, streaming = time.perf_counter(), False
        try:
            resp = await handler(await request.body())
            streaming = resp.media_type == "text/event-stream"
            return resp
        except BadRequest as exc:
            return self.bad(exc, route)
        except (BadRequestError, ValueError) as exc:
            return self.error(400, scrub(str(exc)), route=route)
        except ComposerError as exc:
            return self.error(400, scrub(str(exc)), route=route, code="routing_error")
        finally:
            if not streaming:
                self._done(route, t0)

    def _done(self, route: str, t0: float) -> None:
        self.inflight -= 1
        self.metrics.inflight.set(self.inflight)
        self.metrics.latency.labels(route).observe(time.perf_counter() - t0)

    # -- generation routes ------------------------------------------------------------------
    async def chat(self, request):
        route = "/v1/chat/completions"

        async def handle(raw: bytes):
            req = parse_body(raw, ChatRequest)
            rid = new_request_id()
            plan = to_queries(req, self.composer, self.options.max_n, rid)
            return await self._generate(request, route, rid, req, plan,
                                        lambda answers: completion_body(rid, req.model, answers))

        return await self._admitted(request, route, handle)

    async def completions(self, request):
        route = "/v1/completions"

        async def handle(raw: bytes):
            req = parse_body(raw, CompletionRequest)
            rid = new_request_id("cmpl")
            plan = completion_queries(req, self.composer, self.options.max_n, rid)
            prompts = req.prompts()
            prefixes = [prompts[i // req.n] for i in range(len(plan.queries))] if req.echo else None
            return await self._generate(
                request, route, rid, req, plan,
                lambda answers: text_completion_body(rid, req.model, answers, prompts, req.n, req.echo),
                text_completion=True, prefixes=prefixes)

        return await self._admitted(request, route, handle)

    async def embeddings(self, request):
        route = "/v1/embeddings"

        async def handle(raw: bytes):
            from fastapi.responses import JSONResponse

            req = parse_body(raw, EmbeddingRequest)
            if req.model not in EMBEDDING_MODELS:
                raise BadRequest(f"The model '{req.model}' does not exist or does not embed; embedding models: "
                                 f"{', '.join(EMBEDDING_MODELS)}", param="model", status=404, code="model_not_found")
            texts = req.texts()
            if not texts or len(texts) > 2048:
                raise BadRequest("'input' needs 1 to 2048 texts", param="input")
            for i, t in enumerate(texts):
                if not t:
                    raise BadRequest(f"input[{i}] is empty", param=f"input[{i}]")
            loop = asyncio.get_running_loop()
            vectors, tokens = await loop.run_in_executor(self.pool, partial(self._embed, texts))
            if req.dimensions is not None and req.dimensions != vectors.shape[1]:
                raise BadRequest(f"model '{req.model}' has {vectors.shape[1]} dimensions; 'dimensions' can only "
                                 f"be {vectors.shape[1]}", param="dimensions")
            self.metrics.requests.labels(route, req.model, "200").inc()
            return JSONResponse(embeddings_body(req.model, vectors, tokens, req.encoding_format))

        return await self._admitted(request, route, handle)

    def _embed(self, texts: list[str]):
        """The routers' sentence embedder (routers/embed.py): vectors and the tokens read."""
        from composer.routers.embed import DEFAULT_EMBEDDING, Embedder

        if self._embedder is None:
            self._embedder = Embedder(DEFAULT_EMBEDDING, cache=False).load()
        vectors = self._embedder.encode(texts, use_cache=False)
        tok = getattr(getattr(self._embedder, "_st", None), "tokenizer", None)
        tokens = sum(len(tok(t)["input_ids"]) for t in texts) if tok is not None else sum(len(t.split()) for t in texts)
        return vectors, tokens

    # -- registry routes --------------------------------------------------------------------
    def model_entries(self) -> list[dict]:
        from composer.backends.model_info import describe

        now = int(self.started)
        base = {"object": "model", "created": now, "owned_by": "composer"}
        specs = self.composer.experts
        data = []
        for n, p in self.composer.pipelines.items():
            pool = list(p.experts or specs)
            infos = [describe(specs[e]) for e in pool]
            data.append({"id": n, **base, "kind": "pipeline", "experts": pool, "router": p.router,
                         "aggregator": p.aggregator.kind,
                         "context_length": max(i["context_length"] for i in infos)})
        for n, e in specs.items():
            data.append({"id": n, **base, "kind": "expert", "backend": e.backend, **describe(e)})
        data.append({"id": EMBEDDING_MODELS[0], **base, "kind": "embedding", "aliases": list(EMBEDDING_MODELS[1:])})
        return data

    async def models(self, request):
        gated = self.gate(request, "/v1/models")
        if gated is not None:
            return gated
        self.metrics.requests.labels("/v1/models", "", "200").inc()
        return {"object": "list", "data": self.model_entries()}

    async def model(self, request, model_id: str):
        route = "/v1/models/{id}"
        gated = self.gate(request, route)
        if gated is not None:
            return gated
        entries = {m["id"]: m for m in self.model_entries()}
        entry = entries.get(model_id) or (entries[EMBEDDING_MODELS[0]] if model_id in EMBEDDING_MODELS else None)
        if entry is None:
            try:
                t = resolve_model(self.composer, model_id)  # `default`, router-<pipeline>-<threshold>
            except BadRequest as exc:
                return self.bad(exc, route)
            name = t.pipeline or t.expert or t.experts[0]
            entry = {**entries[name], "id": model_id, "resolves_to": name}
            if t.threshold is not None:
                entry["threshold"] = t.threshold
        self.metrics.requests.labels(route, "", "200").inc()
        return entry

    async def route(self, request):
        route = "/v1/route"
        gated = self.gate(request, route)
        if gated is not None:
            return gated
        try:
            req = parse_body(await request.body(), RouteRequest)
            t = resolve_model(self.composer, req.model)
            texts = req.texts()
            if not texts or not all(x.strip() for x in texts):
                raise BadRequest("give 'input' (a string or a list) or 'messages' with a user message",
                                 param="input")
            meta = {"threshold": t.threshold} if t.threshold is not None else {}
            loop = asyncio.get_running_loop()
            decisions = await loop.run_in_executor(self.pool, partial(
                self.composer.route, [Query(x, task=req.task, metadata=dict(meta)) for x in texts],
                expert=t.expert, pipeline=t.pipeline))
        except BadRequest as exc:
            return self.bad(exc, route)
        except ComposerError as exc:
            return self.error(400, scrub(str(exc)), route=route)
        self.metrics.requests.labels(route, t.pipeline or t.expert or "default", "200").inc()
        return {"object": "route", "model": req.model, "decisions": [d.to_dict() for d in decisions]}

    async def predict(self, request):
        route = "/v1/predict"
        gated = self.gate(request, route)
        if gated is not None:
            return gated
        try:
            req = parse_body(await request.body(), PredictRequest)
            if req.task is None and req.specialist is None:
                raise BadRequest("give 'task' or 'specialist'", param="task")
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(self.pool, partial(self.composer.predict, req.payload,
                                                                task=req.task, specialist=req.specialist))
        except BadRequest as exc:
            return self.bad(exc, route)
        except (ComposerError, ValueError, KeyError, TypeError, IndexError) as exc:
            return self.error(400, scrub(f"{type(exc).__name__}: {exc}"), route=route)
        self.metrics.requests.labels(route, req.task or req.specialist or "", "200").inc()
        return {"object": "prediction", **out}

    # -- feedback (composer/feedback.py) ------------------------------------------------------
    def log_completion(self, rid: str, model: str, queries, answers) -> None:
        """Log a returned completion (route, experts, prompt, cost) so POST /v1/feedback can score
        it later, across restarts. A failed write is logged and does not fail the answer."""
        try:
            self.composer.responses.log_response(rid, model, queries, answers)
        except Exception:  # noqa: BLE001 - e.g. a full disk: the answer still goes out, the log says why
            log.exception("could not log response %s for feedback", rid)

    async def feedback(self, request):
        """POST /v1/feedback {"id": <a past response id>, "score": 0..1, "choice"?, "comment"?}."""
        from composer.feedback import FeedbackError, parse_body as parse_feedback

        route = "/v1/feedback"
        gated = self.gate(request, route)
        if gated is not None:
            return gated
        try:
            args = parse_feedback(await request.body())
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(self.pool, partial(self.composer.feedback, **args))
        except FeedbackError as exc:
            return self.error(exc.status, scrub(str(exc)), route=route, param=exc.param, code=exc.code,
                              type_="not_found_error" if exc.status == 404 else "invalid_request_error")
        self.metrics.requests.labels(route, "", "200").inc()
        return {"object": "feedback", **out}

    async def openapi(self, request, schema: dict):
        gated = self.gate(request, "/openapi.json")
        return gated if gated is not None else schema

    async def metrics_text(self, request):
        from fastapi.responses import PlainTextResponse
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        gated = None if self.options.metrics_public else self.gate(request, "/metrics")
        if gated is not None:
            return gated
        self.metrics.refresh(self.composer)
        return PlainTextResponse(generate_latest(self.metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(self):
        return {"status": "ok"}

    async def readyz(self):
        from fastapi.responses import JSONResponse
        import ray

        body = {"config": self.config_path, "config_loaded": True, "ray": ray.is_initialized(),
                "draining": self.draining, "experts": len(self.composer.experts),
                "pipelines": len(self.composer.pipelines), "inflight": self.inflight,
                "replica": self.metrics.replica if hasattr(self.metrics, "replica") else None,
                "local_experts": await asyncio.to_thread(self.composer.local_stats)}
        ok = body["ray"] and not self.draining
        return JSONResponse({"ready": ok, **body}, status_code=200 if ok else 503)

    async def drain(self, timeout_s: float) -> dict:
        """Stop admitting, then wait (bounded) for in-flight requests to finish."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        while self.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return {"drained": self.inflight == 0, "inflight": self.inflight}

    def close(self) -> None:
        self.composer.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
