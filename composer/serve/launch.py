"""`composer serve`'s process: start (or join) Ray, run the app, drain on SIGTERM/SIGINT."""

from composer.serve.app import build_app
from composer.serve.options import ServeOptions


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
