"""composer: a multi-LLM compound routing orchestrator.

`import composer` is cheap and has no side effects; heavy parts load on first use:

    from composer import Composer
    with Composer.from_yaml("experts.yaml") as c:
        print(c.ask("What is the capital of France?").text)
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "Composer": "composer.core",
    "Query": "composer.types",
    "Answer": "composer.types",
    "Candidate": "composer.types",
    "RouteDecision": "composer.types",
    "Usage": "composer.types",
    "load_config": "composer.config",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'composer' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
