"""The endpoint's HTTP logic, independent of Ray Serve's decorators (composer/serve/app.py wraps it).

It calls the core's public methods only (composer.core.Composer); nothing here reaches into the
runtime, the reliability policy or the backends.
"""

import asyncio
import hmac
import math
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from composer.errors import BadRequestError, ComposerError
from composer.serve.metrics import Metrics
from composer.serve.options import ServeOptions, hash_key, scrub
from composer.serve_schema import (BadRequest, ChatRequest, PredictRequest, RouteRequest, completion_body,
                                   error_body, new_request_id, parse_body, resolve_model, role_chunk, stream_chunks, sse,
                                   to_queries)
from composer.types import Query


class Service:
    """The endpoint's logic, independent of Ray Serve's decorators (they wrap it in build_app)."""

    def __init__(self, config_path: str, key_hashes: list[str], options: ServeOptions):
        from composer.config import load_config
        from composer.core import Composer
        from composer.reliability import Reliability

        self.config_path = config_path
        self.key_hashes = list(key_hashes)
        self.options = options
        cfg = load_config(config_path)
        # experts.yaml's settings.reliability, with the command line's flags on top.
        policy = Reliability({e.name: e for e in cfg.experts},
                             **{**cfg.settings.reliability.model_dump(), **options.reliability})
        self.composer = Composer.from_yaml(config_path, reliability=policy)
        policy.get_backend = self.composer.backend
        self.composer.stream_mode(max_wait_s=options.batch_max_wait_s, max_batch=options.max_batch)
        self.pool = ThreadPoolExecutor(max_workers=options.max_inflight + 4, thread_name_prefix="composer-req")
        self.metrics = Metrics()
        self.inflight = 0
        self.draining = False
        self.started = time.time()

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
        fut.add_done_callback(lambda _f: self.composer.reliability.forget(ids))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            self.metrics.cancelled.inc()
            self.composer.reliability.cancel(ids)
            raise

    def failure(self, answers):
        """(status, message, code, retry_after) when any answer failed, else None."""
        bad = [a for a in answers if not a.ok]
        if not bad:
            return None
        a = bad[0]
        types = {c.metadata.get("error_type") for c in a.candidates}
        if types & {"bad_request", "context_overflow"}:
            return 400, a.error, "context_length_exceeded" if "context_overflow" in types else "expert_rejected", None
        wait = max(self.options.retry_after_s, math.ceil(self.composer.reliability.retry_after_s()))
        return 503, a.error, "expert_unavailable", wait

    # -- routes -----------------------------------------------------------------------------
    async def chat(self, request):
        from fastapi.responses import JSONResponse, StreamingResponse

        route, t0 = "/v1/chat/completions", time.perf_counter()
        gated = self.gate(request, route, admit=True)
        if gated is not None:
            return gated
        self.inflight += 1
        self.metrics.inflight.set(self.inflight)
        streaming = False
        try:
            req = parse_body(await request.body(), ChatRequest)
            rid = new_request_id()
            queries, expert, pipeline = to_queries(req, self.composer, self.options.max_n, rid)
            if req.stream:
                streaming = True
                include = bool(req.stream_options and req.stream_options.include_usage)
                return StreamingResponse(self._stream(rid, req.model, queries, expert, pipeline, include, t0),
                                         media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            answers = await self.run(queries, expert, pipeline)
            self.metrics.record_answers(answers)
            fail = self.failure(answers)
            if fail is not None:
                status, msg, code, wait = fail
                return self.error(status, scrub(msg), route=route, model=req.model, code=code, retry_after=wait,
                                  type_="invalid_request_error" if status == 400 else "server_error")
            self.metrics.requests.labels(route, req.model, "200").inc()
            return JSONResponse(completion_body(rid, req.model, answers))
        except BadRequest as exc:
            return self.error(exc.status, exc.message, route=route, param=exc.param, code=exc.code)
        except (BadRequestError, ValueError) as exc:
            return self.error(400, str(exc), route=route)
        finally:
            if not streaming:
                self._done(route, t0)

    def _done(self, route: str, t0: float) -> None:
        self.inflight -= 1
        self.metrics.inflight.set(self.inflight)
        self.metrics.latency.labels(route).observe(time.perf_counter() - t0)

    async def _stream(self, rid, model, queries, expert, pipeline, include_usage, t0):
        route = "/v1/chat/completions"
        created = int(time.time())
        try:
            yield role_chunk(rid, model, created)  # at once: the client sees the stream open
            answers = await self.run(queries, expert, pipeline)
            self.metrics.record_answers(answers)
            fail = self.failure(answers)
            if fail is not None:
                status, msg, code, _ = fail
                self.metrics.requests.labels(route, model, str(status)).inc()
                yield sse(error_body(scrub(msg), type_="server_error" if status >= 500 else "invalid_request_error",
                                     code=code))
                yield b"data: [DONE]\n\n"
                return
            self.metrics.requests.labels(route, model, "200").inc()
            for piece in stream_chunks(rid, model, answers, include_usage, created):
                yield piece
        finally:
            self._done(route, t0)

    async def models(self, request):
        gated = self.gate(request, "/v1/models")
        if gated is not None:
            return gated
        now = int(self.started)
        data = [{"id": n, "object": "model", "created": now, "owned_by": "composer", "kind": "pipeline",
                 "experts": list(p.experts)} for n, p in self.composer.pipelines.items()]
        data += [{"id": n, "object": "model", "created": now, "owned_by": "composer", "kind": "expert",
                  "backend": e.backend, "context_length": e.context_length} for n, e in self.composer.experts.items()]
        self.metrics.requests.labels("/v1/models", "", "200").inc()
        return {"object": "list", "data": data}

    async def route(self, request):
        route = "/v1/route"
        gated = self.gate(request, route)
        if gated is not None:
            return gated
        try:
            req = parse_body(await request.body(), RouteRequest)
            expert, pipeline, _ = resolve_model(self.composer, req.model)
            texts = req.texts()
            if not texts or not all(t.strip() for t in texts):
                raise BadRequest("give 'input' (a string or a list) or 'messages' with a user message",
                                 param="input")
            loop = asyncio.get_running_loop()
            decisions = await loop.run_in_executor(self.pool, partial(
                self.composer.route, [Query(t, task=req.task) for t in texts], expert=expert, pipeline=pipeline))
        except BadRequest as exc:
            return self.error(exc.status, exc.message, route=route, param=exc.param, code=exc.code)
        except ComposerError as exc:
            return self.error(400, str(exc), route=route)
        self.metrics.requests.labels(route, req.model, "200").inc()
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
            return self.error(exc.status, exc.message, route=route, param=exc.param, code=exc.code)
        except (ComposerError, ValueError, KeyError) as exc:
            return self.error(400, f"{type(exc).__name__}: {exc}", route=route)
        self.metrics.requests.labels(route, req.task or req.specialist or "", "200").inc()
        return {"object": "prediction", **out}

    async def metrics_text(self, request):
        from fastapi.responses import PlainTextResponse
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        gated = self.gate(request, "/metrics")
        if gated is not None:
            return gated
        health = self.composer.reliability.status()
        for name in self.composer.experts:
            b = self.composer.backend(name)
            self.metrics.loads.labels(name).set(b.load_count)
            self.metrics.loaded.labels(name).set(int(b.is_loaded))
            self.metrics.available.labels(name).set(int(health.get(name, {}).get("available", True)))
            self.metrics.stopped.labels(name).set(getattr(b, "cancelled_queries", 0))
        return PlainTextResponse(generate_latest(self.metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(self):
        return {"status": "ok"}

    async def readyz(self):
        from fastapi.responses import JSONResponse
        import ray

        body = {"config": self.config_path, "config_loaded": True, "ray": ray.is_initialized(),
                "draining": self.draining, "experts": len(self.composer.experts),
                "pipelines": len(self.composer.pipelines), "inflight": self.inflight}
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


