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


def direct_ingress(port: int) -> None:
    """Ray Serve's direct ingress, for one replica on a local Ray: the replica itself listens on
    `port`, so a request skips the proxy's hop to the replica and its second call to fetch the body
    (measured by `composer bench service`). Its port range is that one port; it is handed back at
    once when the replica stops (no quarantine: nothing else on this machine shares the range) and
    the replica stops without a load balancer's deregistration wait. Set before Ray starts, so its
    controller and the replica read it."""
    for k, v in (("RAY_SERVE_ENABLE_DIRECT_INGRESS", "1"), ("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", str(port)),
                 ("RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT", str(port + 1)),
                 ("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "0"), ("RAY_SERVE_PORT_QUARANTINE_S", "0")):
        os.environ[k] = v


def wait_free(host: str, port: int, timeout_s: float, echo=print) -> bool:
    """True once `host:port` can be bound the way the replica's server binds it. Ray gives the
    replica one try per port and then blocks the port, so the port must be free first: a port
    another process listens on fails at once; one held only by the last server's closed
    connections (TIME_WAIT, up to a minute after a restart) is waited for, up to `timeout_s`."""
    import socket
    import time

    deadline = time.monotonic() + timeout_s
    told = False
    while True:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
                return True
            except OSError:
                pass
        if wait_listening(host, port, 0.01) or time.monotonic() >= deadline:
            return False
        if not told:
            echo(f"composer serve: waiting for {host}:{port} to be released by the last server's connections ...")
            told = True
        time.sleep(0.5)


def wait_listening(host: str, port: int, timeout_s: float) -> bool:
    """True once `host:port` accepts a TCP connection (bounded by `timeout_s`)."""
    import socket
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host if host not in ("0.0.0.0", "::") else "127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


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
    exit code. With `options.direct_ingress` (one replica, local Ray: the CLI checks) the replica
    serves `port` itself and Ray Serve's proxy moves to a free loopback port."""
    import signal
    import threading

    import ray
    from ray import serve

    stop = threading.Event()
    latency_defaults()
    proxy_host, proxy_port = host, port
    if options.direct_ingress:
        from composer.backends.server import free_port

        if not wait_free(host, port, 90, echo):
            echo(f"composer serve: {host}:{port} is in use by another process; stop it or pick another --port")
            return 1
        direct_ingress(port)
        proxy_host, proxy_port = "127.0.0.1", free_port()
    owns = init_ray(ray_address)
    try:
        quiet = {"log_level": "WARNING", "enable_access_log": False}
        serve.start(http_options={"host": proxy_host, "port": proxy_port}, logging_config=quiet)
        try:
            handle = serve.run(build_app(config_path, key_hashes, options, config=config), name="composer",
                               route_prefix="/", blocking=False, logging_config=quiet)
        except RuntimeError as exc:
            if not options.direct_ingress:
                raise
            echo(f"composer serve: the replica could not start serving {host}:{port} (direct ingress): {exc}; "
                 "the replica's log under Ray's session logs/serve/ says why (a port taken meanwhile?)")
            serve.shutdown()
            return 1
        if options.direct_ingress and not wait_listening(host, port, 60):
            echo(f"composer serve: the replica did not start listening on {host}:{port} within 60 s "
                 "(direct ingress); is the port taken?")
            serve.shutdown()
            return 1
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
             f"{options.replicas} replica(s){' serving the port itself (direct ingress)' if options.direct_ingress else ''}, "
             f"job {ctx.get_job_id()}; ray logs {session})")
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
