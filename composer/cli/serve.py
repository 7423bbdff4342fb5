"""`composer serve`: the OpenAI-compatible endpoint (Ray Serve) over the one Composer core."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from composer.cli.core_cmds import CONFIG_OPT, EXIT_CONFIG, default_config_path, fail
from composer.cli.main import app
from composer.errors import ConfigError


@app.command()
def serve(
    config: Optional[Path] = CONFIG_OPT,
    host: str = typer.Option("127.0.0.1", help="Address to bind (default: loopback only)."),
    port: int = typer.Option(8000, help="HTTP port."),
    api_key_file: Optional[Path] = typer.Option(None, "--api-key-file", help=(
        "File with API keys, one per line. Also read: env COMPOSER_API_KEYS (comma-separated).")),
    max_inflight: int = typer.Option(64, help="Requests in flight before a fast 429 with Retry-After."),
    max_n: int = typer.Option(4, help="Largest `n` a request may ask for."),
    drain_timeout: float = typer.Option(30.0, help="Seconds to wait for in-flight requests on shutdown."),
    retries: Optional[int] = typer.Option(None, help="Retries of a retryable expert error (default: experts.yaml settings.reliability, 2)."),
    cooldown_after: Optional[int] = typer.Option(None, help="Consecutive failures that send an expert to cool down."),
    cooldown_s: Optional[float] = typer.Option(None, help="Seconds an expert cools down."),
    cooldown_rate: Optional[float] = typer.Option(None, help="Share of an expert's last 20 calls that must have failed too."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help=(
        "Join this Ray cluster (e.g. 10.0.0.5:6379 or auto); default: experts.yaml settings.ray_address, "
        "else $RAY_ADDRESS, else a local Ray sized to this machine.")),
    replicas: int = typer.Option(1, "--replicas", min=1, help="Ingress replicas (Ray Serve) serving the endpoint."),
    metrics_public: bool = typer.Option(False, "--metrics-public", help="Let /metrics be scraped without an API key."),
    direct_ingress: bool = typer.Option(False, "--direct-ingress", help=(
        "One replica on a local Ray listens on --port itself (Ray Serve's direct ingress): each request "
        "skips the proxy's hop, a few ms less per request (`composer bench service`).")),
):
    """Serve /v1/chat/completions, /v1/models, /v1/route, /metrics, /healthz, /readyz."""
    from composer.config import load_config
    from composer.serve import ServeOptions, hash_key, load_api_keys, run_server

    path = config or default_config_path()
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    try:
        keys = load_api_keys(os.environ.get("COMPOSER_API_KEYS"), str(api_key_file) if api_key_file else None)
    except OSError as exc:
        fail(f"cannot read --api-key-file {api_key_file}: {exc.strerror}")
    if not keys:
        fail("no API keys: set COMPOSER_API_KEYS=key1,key2 or pass --api-key-file FILE "
             "(every route except /healthz and /readyz requires 'Authorization: Bearer <key>')")
    if direct_ingress and (replicas > 1 or ray_address or cfg.settings.ray_address or os.environ.get("RAY_ADDRESS")):
        fail("--direct-ingress serves one replica on a local Ray: it cannot be combined with --replicas > 1 or a "
             "Ray cluster (--ray-address, settings.ray_address or $RAY_ADDRESS), where the proxy spreads requests "
             "over the replicas", EXIT_CONFIG)
    opts = ServeOptions(max_inflight=max_inflight, max_n=max_n, drain_timeout_s=drain_timeout,
                        replicas=replicas, metrics_public=metrics_public, direct_ingress=direct_ingress,
                        reliability={k: v for k, v in {"max_retries": retries, "cooldown_after": cooldown_after,
                                                       "cooldown_s": cooldown_s, "cooldown_rate": cooldown_rate}.items()
                                     if v is not None})  # unset flags keep experts.yaml's settings
    code = run_server(str(Path(path).resolve()), host, port, [hash_key(k) for k in keys], opts,
                      echo=lambda m: typer.echo(m, err=False), ray_address=ray_address or cfg.settings.ray_address,
                      config=cfg)
    raise typer.Exit(code)
