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

from composer.serve.app import build_app
from composer.serve.options import ServeOptions, hash_key, load_api_keys, scrub
from composer.serve.launch import run_server
from composer.serve.metrics import Metrics
from composer.serve.service import Service

__all__ = ["Metrics", "ServeOptions", "Service", "build_app", "hash_key", "load_api_keys", "run_server", "scrub"]
