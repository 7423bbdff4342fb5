"""`composer serve`'s process: start (or join) Ray, run the app, drain on SIGTERM/SIGINT.

Ray: with `ray_address` (``--ray-address``, else experts.yaml's `settings.ray_address`, else
$RAY_ADDRESS) composer joins that cluster and its app runs where Ray Serve places it; without one
it starts a local Ray sized to this machine (every CPU). The same application can be deployed the
standard Ray way instead (`serve run` / `serve deploy`, KubeRay's RayService): see
composer/serve/builder.py and docs/service.md.
"""

from __future__ import annotations

import os

from composer.serve.app import build_app
from composer.serve.options import ServeOptions

# Environment the app's replicas need wherever Ray places them (a remote cluster's workers do
# not inherit this process's environment).
FORWARDED_ENV = ("HF_HUB_OFFLINE", "LITELLM_LOCAL_MODEL_COST_MAP", "COMPOSER_DATA", "COMPOSER_HOME",
                 "COMPOSER_LOG", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
                 "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "RAY_SERVE_PROXY_USE_GRPC",
                 "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP")


def forwarded_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env.update({k: v for k, v in os.environ.items() if k.startswith("OTEL_")})
    return env


def latency_defaults() -> None:
    """Latency (measured by `composer bench service`; overridable): the proxy reaches the replica
    over gRPC, and the app and the proxy's router run on their process's main event loop."""
    for k, v in (("RAY_SERVE_PROXY_USE_GRPC", "1"), ("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "0"),
                 ("RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP", "0")):
        os.environ.setdefault(k, v)


def init_ray(ray_address: str | None):
    """Join the cluster at `ray_address`, or start a local Ray sized to this machine. Returns
    True when this process started Ray (and must stop it)."""
    import ray

    env = forwarded_env()
    kw = dict(include_dashboard=False, runtime_env={"env_vars": env} if env else None, log_to_driver=False,
              logging_level="WARNING")
    address = ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kw)
        return False
    ray.init(address="local", num_cpus=os.cpu_count() or 1, object_store_memory=200 * 2**20, **kw)
    return True


def run_server(config_path: str, host: str, port: int, key_hashes: list[str], options: ServeOptions,
               echo=print, ray_address: str | None = None, config=None) -> int:
    """Start (or join) Ray and the app, block until SIGTERM/SIGINT, drain, shut down. Returns an
    exit code."""
    import signal
    import threading

    import ray
    from ray import serve

    stop = threading.Event()
    latency_defaults()
    owns = init_ray(ray_address)
    try:
        quiet = {"log_level": "WARNING", "enable_access_log": False}
        serve.start(http_options={"host": host, "port": port}, logging_config=quiet)
        handle = serve.run(build_app(config_path, key_hashes, options, config=config), name="composer", route_prefix="/",
                           blocking=False, logging_config=quiet)
        for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs its own
            signal.signal(sig, lambda *_: stop.set())
        ctx = ray.get_runtime_context()
        where = f"cluster {ray_address or os.environ.get('RAY_ADDRESS')}" if not owns else "local Ray"
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
        try:
            session = ray._private.worker._global_node.get_session_dir_path()  # noqa: SLF001 - log location
        except AttributeError:
            session = "(on the cluster's nodes)"
        echo(f"composer serve: ready on http://{host}:{port}/v1 (config {config_path}; {where}, {nodes} node(s), "
             f"{options.replicas} replica(s), job {ctx.get_job_id()}; ray logs {session})")
        while not stop.wait(0.5):
            pass
        echo("composer serve: draining in-flight requests ...")
        try:
            res = handle.drain.remote(options.drain_timeout_s).result(timeout_s=options.drain_timeout_s + 10)
        except Exception as exc:  # noqa: BLE001 - a replica lost with its node: still shut down cleanly
            res = {"drained": False, "inflight": f"unknown ({type(exc).__name__})"}
        echo(f"composer serve: drained={res['drained']} inflight={res['inflight']}; stopping")
        serve.delete("composer")
        if owns:
            serve.shutdown()
        return 0 if res["drained"] else 1
    finally:
        if owns:
            ray.shutdown()
        else:
            ray.shutdown()  # disconnect this driver; the cluster keeps running
