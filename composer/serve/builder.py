"""composer's Ray Serve application for `serve run` / `serve deploy` (and KubeRay's RayService).

    serve run composer.serve.builder:app config=experts.yaml replicas=2
    # or in a Serve config file (serve deploy / RayService `serveConfigV2`):
    applications:
      - name: composer
        route_prefix: /
        import_path: composer.serve.builder:app
        args: {config: /etc/composer/experts.yaml, replicas: 2, max_inflight: 64}

The API keys come from $COMPOSER_API_KEYS (or `api_key_file` in args) on the node that builds the
app; only their SHA-256 digests reach the replicas. `composer serve` builds the same application.
"""

from __future__ import annotations

import os
from pathlib import Path

from composer.serve.app import build_app
from composer.serve.options import ServeOptions, hash_key, load_api_keys

_OPTION_KEYS = {"max_inflight": int, "max_n": int, "drain_timeout_s": float, "batch_max_wait_s": float,
                "max_batch": int, "retry_after_s": int, "replicas": int, "metrics_public": bool}


def app(args: dict):
    """The application builder Ray Serve calls with the `args` of `serve run` or a config file."""
    args = dict(args or {})
    config = args.pop("config", None) or os.environ.get("COMPOSER_CONFIG") or "experts.yaml"
    path = Path(config).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"composer: registry {path} not found (give args config=PATH or $COMPOSER_CONFIG)")
    from composer.config import load_config

    cfg = load_config(path)  # fail here, with file:line:field, not in a replica
    keys = load_api_keys(os.environ.get("COMPOSER_API_KEYS"), args.pop("api_key_file", None))
    if not keys:
        raise ValueError("composer: no API keys; set COMPOSER_API_KEYS or args api_key_file=FILE")
    unknown = sorted(set(args) - set(_OPTION_KEYS))
    if unknown:
        raise ValueError(f"composer: unknown args {unknown}; known: config, api_key_file, {', '.join(_OPTION_KEYS)}")
    opts = {}
    for k, v in args.items():
        typ = _OPTION_KEYS[k]
        opts[k] = (str(v).lower() in ("1", "true", "yes")) if typ is bool else typ(v)
    return build_app(str(path), [hash_key(k) for k in keys], ServeOptions(**opts), config=cfg)
