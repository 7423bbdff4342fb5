"""Keep third-party libraries off the network. Called right before those libraries load.

Setting these at `import composer` time would be an import side effect (STYLE.md #2), so each
place that imports litellm, sentence-transformers or huggingface code calls `ensure_offline()`.
An explicit value already in the environment is respected.
"""

from __future__ import annotations

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def ensure_offline() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def import_litellm():
    """Import litellm with its cost map read locally and its telemetry off."""
    ensure_offline()
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return litellm
