"""`composer serve`: an OpenAI-compatible endpoint as a Ray Serve app over the one Composer core.

Routes (FastAPI ingress in one Ray Serve deployment that owns a Composer in stream mode, so
requests arriving together are batched by expert through composer.stream.StreamBatcher):

- POST /v1/chat/completions  OpenAI schema; `model` is a pipeline or an expert; `stream: true`
                             answers with server-sent events; `usage` always filled in
- GET  /v1/models            pipelines and experts
- POST /v1/route             the routing decision and its reason, without generating
- POST /v1/predict           {task | specialist, payload} -> a specialist's prediction
- GET  /metrics              Prometheus text: requests, latency, tokens, cost, loads, errors per expert
- GET  /healthz, /readyz     liveness; readiness (config loaded, Ray up, not draining)

Every route but the two probes needs `Authorization: Bearer <key>`; only SHA-256 digests of the
keys reach the deployment, and no key is ever logged or echoed. Past `max_inflight` requests in
the replica the answer is a fast 429 with Retry-After; while draining, 503 with Retry-After.
A client disconnect cancels the request's queries (Reliability.cancel -> backend.cancel).
"""

import asyncio
import hashlib
import hmac
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial

from composer.errors import BadRequestError, ComposerError
from composer.serve_schema import (BadRequest, ChatRequest, PredictRequest, RouteRequest, completion_body,
                                   error_body, new_request_id, parse_body, resolve_model, role_chunk, stream_chunks, sse,
                                   to_queries)
from composer.types import Query

_SECRETISH = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|Bearer\s+\S+|api[_-]?key[=:]\s*\S+)", re.I)


@dataclass
class ServeOptions:
    """Knobs of the endpoint (the CLI's flags)."""

    max_inflight: int = 64          # requests in the replica at once; more get 429 + Retry-After
    max_n: int = 4                  # largest `n` accepted
    drain_timeout_s: float = 30.0   # graceful shutdown waits this long for in-flight requests
    batch_max_wait_s: float = 0.5   # StreamBatcher starvation bound
    max_batch: int = 32
    retry_after_s: int = 1
    reliability: dict = field(default_factory=dict)  # Reliability keyword arguments


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def load_api_keys(env_value: str | None, key_file: str | None) -> list[str]:
    """Keys from COMPOSER_API_KEYS (comma-separated) and/or a file (one per line, # comments)."""
    keys = [k.strip() for k in (env_value or "").split(",") if k.strip()]
    if key_file:
        with open(key_file, encoding="utf-8") as f:
            keys += [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    return keys


def scrub(text: str) -> str:
    """Remove anything that looks like a credential from a message bound for a client or a log."""
    return _SECRETISH.sub("[redacted]", text or "")


class Metrics:
    """Prometheus metrics in a registry of their own (no module globals)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("composer_requests", "HTTP requests", ["route", "model", "status"], registry=r)
        self.latency = Histogram("composer_request_latency_seconds", "Request latency", ["route"], registry=r,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120))
        self.tokens = Counter("composer_tokens", "Tokens per expert", ["expert", "kind"], registry=r)
        self.cost = Counter("composer_cost_usd", "Cost in USD per expert", ["expert"], registry=r)
        self.errors = Counter("composer_expert_errors", "Failed expert attempts", ["expert", "error_type"], registry=r)
        self.answers = Counter("composer_expert_answers", "Answers per expert", ["expert"], registry=r)
        self.rejected = Counter("composer_rejected", "Requests refused before running", ["reason"], registry=r)
        self.cancelled = Counter("composer_cancelled", "Requests cancelled by client disconnect", registry=r)
        self.inflight = Gauge("composer_inflight_requests", "Requests in the replica now", registry=r)
        self.loads = Gauge("composer_expert_loads", "Loads of each expert so far", ["expert"], registry=r)
        self.loaded = Gauge("composer_expert_loaded", "1 if the expert is loaded", ["expert"], registry=r)
        self.stopped = Gauge("composer_expert_generations_cancelled",
                             "Generations the backend stopped on cancel (backends with cancel())", ["expert"],
                             registry=r)
        self.available = Gauge("composer_expert_available", "0 while cooling down or busy", ["expert"], registry=r)

    def record_answers(self, answers) -> None:
        for a in answers:
            for c in a.candidates:
                for att in c.metadata.get("attempts", []):
                    if not att.get("skipped"):
                        self.errors.labels(att["expert"], att.get("error_type") or "error").inc()
                if c.ok:
                    self.answers.labels(c.expert).inc()
                    self.tokens.labels(c.expert, "prompt").inc(c.usage.prompt_tokens)
                    self.tokens.labels(c.expert, "completion").inc(c.usage.completion_tokens)
                    self.cost.labels(c.expert).inc(c.usage.cost)


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


def build_app(config_path: str, key_hashes: list[str], options: ServeOptions | None = None):
    """The Ray Serve application (bind it with serve.run)."""
    from fastapi import FastAPI, Request
    from ray import serve

    options = options or ServeOptions()
    api = FastAPI(title="composer", docs_url=None, redoc_url=None, openapi_url=None)

    @serve.deployment(name="composer", num_replicas=1, ray_actor_options={"num_cpus": 0},
                      max_ongoing_requests=options.max_inflight * 2 + 8, max_queued_requests=options.max_inflight,
                      graceful_shutdown_timeout_s=options.drain_timeout_s, graceful_shutdown_wait_loop_s=0.5)
    @serve.ingress(api)
    class ComposerDeployment(Service):
        def __init__(self, config_path: str, key_hashes: list[str], options: dict):
            Service.__init__(self, config_path, key_hashes, ServeOptions(**options))

        @api.post("/v1/chat/completions")
        async def chat_route(self, request: Request):
            return await self.chat(request)

        @api.get("/v1/models")
        async def models_route(self, request: Request):
            return await self.models(request)

        @api.post("/v1/route")
        async def route_route(self, request: Request):
            return await self.route(request)

        @api.post("/v1/predict")
        async def predict_route(self, request: Request):
            return await self.predict(request)

        @api.get("/metrics")
        async def metrics_route(self, request: Request):
            return await self.metrics_text(request)

        @api.get("/healthz")
        async def healthz_route(self):
            return await self.healthz()

        @api.get("/readyz")
        async def readyz_route(self):
            return await self.readyz()

        def __del__(self):
            self.close()

    return ComposerDeployment.bind(config_path, key_hashes, asdict(options))


def run_server(config_path: str, host: str, port: int, key_hashes: list[str], options: ServeOptions,
               echo=print) -> int:
    """Start Ray and the app, block until SIGTERM/SIGINT, drain, shut down. Returns an exit code."""
    import os
    import signal
    import threading

    import ray
    from ray import serve

    stop = threading.Event()
    # Latency (measured by `composer bench service`; overridable): the proxy reaches the replica
    # over gRPC, and the app and the proxy's router run on their process's main event loop.
    for k, v in (("RAY_SERVE_PROXY_USE_GRPC", "1"), ("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "0"),
                 ("RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP", "0")):
        os.environ.setdefault(k, v)
    env = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "LITELLM_LOCAL_MODEL_COST_MAP", "COMPOSER_DATA",
                                      "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
                                      "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "RAY_SERVE_PROXY_USE_GRPC",
                                      "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP") if k in os.environ}
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20,
             runtime_env={"env_vars": env} if env else None, log_to_driver=False,
             logging_level="WARNING")
    try:
        quiet = {"log_level": "WARNING", "enable_access_log": False}
        serve.start(http_options={"host": host, "port": port}, logging_config=quiet)
        handle = serve.run(build_app(config_path, key_hashes, options), name="composer", route_prefix="/",
                           blocking=False, logging_config=quiet)
        for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs its own
            signal.signal(sig, lambda *_: stop.set())
        session = ray._private.worker._global_node.get_session_dir_path()  # noqa: SLF001 - log location
        echo(f"composer serve: ready on http://{host}:{port}/v1 (config {config_path}; ray logs {session})")
        while not stop.wait(0.5):
            pass
        echo("composer serve: draining in-flight requests ...")
        res = handle.drain.remote(options.drain_timeout_s).result(timeout_s=options.drain_timeout_s + 10)
        echo(f"composer serve: drained={res['drained']} inflight={res['inflight']}; stopping")
        serve.shutdown()
        return 0 if res["drained"] else 1
    finally:
        ray.shutdown()
