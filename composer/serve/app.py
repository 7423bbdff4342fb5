"""The Ray Serve application: a FastAPI ingress deployment over composer.serve.service.Service.

Unknown paths (404), wrong methods (405) and anything unexpected (500) are answered with OpenAI
error objects too; the OpenAPI schema is served at /openapi.json behind the key.
"""

from dataclasses import asdict

from composer.serve.options import ServeOptions
from composer.serve.service import Service


def openapi_schema() -> dict:
    """OpenAPI 3.1 document of the endpoint, request bodies from composer/serve_schema.py."""
    from pydantic.json_schema import models_json_schema

    from composer.serve_schema import (ChatRequest, CompletionRequest, EmbeddingRequest, PredictRequest,
                                       RouteRequest)

    models = [ChatRequest, CompletionRequest, EmbeddingRequest, RouteRequest, PredictRequest]
    refs, defs = models_json_schema([(m, "validation") for m in models],
                                    ref_template="#/components/schemas/{model}")
    error = {"description": "OpenAI error object", "content": {"application/json": {"schema": {
        "type": "object", "properties": {"error": {"type": "object", "properties": {
            "message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": ["string", "null"]},
            "code": {"type": ["string", "null"]}}}}}}}}

    def post(model, summary):
        return {"post": {"summary": summary, "security": [{"bearer": []}],
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": refs[(model, "validation")]}}},
                         "responses": {"200": {"description": "OK"}, "400": error, "401": error, "404": error,
                                       "429": error, "503": error}}}

    def get(summary, secured=True):
        op = {"summary": summary, "responses": {"200": {"description": "OK"}}}
        if secured:
            op["security"] = [{"bearer": []}]
            op["responses"]["401"] = error
        return {"get": op}

    model_get = get("One model: kind, context length, price")
    model_get["get"]["parameters"] = [{"name": "model_id", "in": "path", "required": True,
                                       "schema": {"type": "string"}}]
    model_get["get"]["responses"]["404"] = error
    return {
        "openapi": "3.1.0",
        "info": {"title": "composer", "version": "1", "description": "OpenAI-compatible multi-LLM router"},
        "paths": {
            "/v1/chat/completions": post(ChatRequest, "Chat completion (stream: server-sent events)"),
            "/v1/completions": post(CompletionRequest, "Text completion"),
            "/v1/embeddings": post(EmbeddingRequest, "Embeddings (the routers' sentence embedder)"),
            "/v1/route": post(RouteRequest, "The routing decision, without generating"),
            "/v1/predict": post(PredictRequest, "A specialist's prediction"),
            "/v1/models": get("Pipelines, experts and the embedding model"),
            "/v1/models/{model_id}": model_get,
            "/metrics": get("Prometheus metrics"),
            "/health": get("Liveness", secured=False),
            "/healthz": get("Liveness", secured=False),
            "/readyz": get("Readiness", secured=False),
        },
        "components": {"schemas": defs.get("$defs", {}),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def add_error_handlers(api) -> None:
    """OpenAI error objects for what FastAPI would answer itself (404, 405, 500)."""
    import logging

    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    from composer.serve.bodies import error_body

    @api.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        if exc.status_code == 404:
            msg = f"no route {request.method} {request.url.path}; see /openapi.json"
        elif exc.status_code == 405:
            msg = f"method {request.method} is not allowed on {request.url.path}"
        else:
            msg = str(exc.detail)
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(msg, type_=type_, code=str(exc.status_code)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @api.exception_handler(Exception)
    async def unexpected(request, exc: Exception):
        logging.getLogger("composer.serve").exception("unexpected error on %s", request.url.path)
        return JSONResponse(error_body(f"internal error ({type(exc).__name__}); see the server log",
                                       type_="server_error", code="internal_error"), status_code=500)


def build_app(config_path: str, key_hashes: list[str], options: ServeOptions | None = None, config=None):
    """The Ray Serve application (bind it with serve.run). `config`: the registry already parsed
    from `config_path` by the caller (so the launcher reads it once; each replica reads it once)."""
    from fastapi import FastAPI, Request
    from ray import serve

    options = options or ServeOptions()
    api = FastAPI(title="composer", docs_url=None, redoc_url=None, openapi_url=None)
    add_error_handlers(api)
    schema = openapi_schema()

    @serve.deployment(name="composer", num_replicas=max(1, options.replicas), ray_actor_options={"num_cpus": 0},
                      max_ongoing_requests=options.max_inflight * 2 + 8, max_queued_requests=options.max_inflight,
                      graceful_shutdown_timeout_s=options.drain_timeout_s, graceful_shutdown_wait_loop_s=0.5)
    @serve.ingress(api)
    class ComposerDeployment(Service):
        def __init__(self, config_path: str, key_hashes: list[str], options: dict, expert_host=None):
            Service.__init__(self, config_path, key_hashes, ServeOptions(**options))
            if expert_host is not None:
                self.composer.use_expert_host(expert_host)

        @api.post("/v1/chat/completions")
        async def chat_route(self, request: Request):
            return await self.chat(request)

        @api.post("/v1/completions")
        async def completions_route(self, request: Request):
            return await self.completions(request)

        @api.post("/v1/embeddings")
        async def embeddings_route(self, request: Request):
            return await self.embeddings(request)

        @api.get("/v1/models")
        async def models_route(self, request: Request):
            return await self.models(request)

        @api.get("/v1/models/{model_id:path}")
        async def model_route(self, request: Request, model_id: str):
            return await self.model(request, model_id)

        @api.post("/v1/route")
        async def route_route(self, request: Request):
            return await self.route(request)

        @api.post("/v1/predict")
        async def predict_route(self, request: Request):
            return await self.predict(request)

        @api.post("/v1/feedback")
        async def feedback_route(self, request: Request):
            return await self.feedback(request)

        @api.get("/openapi.json")
        async def openapi_route(self, request: Request):
            return await self.openapi(request, schema)

        @api.get("/metrics")
        async def metrics_route(self, request: Request):
            return await self.metrics_text(request)

        @api.get("/health")
        async def health_route(self):
            return await self.healthz()

        @api.get("/healthz")
        async def healthz_route(self):
            return await self.healthz()

        @api.get("/readyz")
        async def readyz_route(self):
            return await self.readyz()

        def __del__(self):
            self.close()

    host = None
    if options.replicas > 1 and _has_local_experts(config if config is not None else config_path):
        from composer.serve.host import ExpertHostImpl

        # One owner of the local experts for all replicas (loads, budget and batching as with one).
        ExpertHost = serve.deployment(name="composer-experts", num_replicas=1, ray_actor_options={"num_cpus": 0},
                                      max_ongoing_requests=options.max_inflight * options.replicas * 2 + 8)(
            ExpertHostImpl)
        host = ExpertHost.bind(config_path, asdict(options))
    return ComposerDeployment.bind(config_path, key_hashes, asdict(options), host)


def _has_local_experts(config) -> bool:
    from composer.config import load_config

    cfg = load_config(config) if isinstance(config, str) else config
    return any(not e.is_remote for e in cfg.experts)
