"""The Ray Serve application: a FastAPI ingress deployment over composer.serve.service.Service."""

from dataclasses import asdict

from composer.serve.options import ServeOptions
from composer.serve.service import Service


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


