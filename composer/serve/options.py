"""The endpoint's knobs and its key handling (shared by the app, the launcher and the CLI)."""

import hashlib
import re
from dataclasses import dataclass, field

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
    replicas: int = 1               # ingress replicas (Ray Serve); local experts live with their owner
    metrics_public: bool = False    # /metrics without a key (for a scraper inside the cluster)
    direct_ingress: bool = False    # the one local replica listens on the port itself (no proxy hop)


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


