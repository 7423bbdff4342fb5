"""Expert runtimes behind one contract (see base.Backend). `make_backend(spec)` picks the class."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from composer.backends.base import Backend

if TYPE_CHECKING:
    from composer.config import ExpertSpec

# Explicit registry; modules are imported lazily so `import composer` stays fast.
BACKENDS = {
    "llamacpp": "composer.backends.llamacpp:LlamaCppBackend",
    "server": "composer.backends.server:ServerBackend",
    "litellm": "composer.backends.litellm:LiteLLMBackend",
    "replay": "composer.backends.replay:ReplayBackend",
    "fake": "composer.backends.fake:FakeBackend",
}


def backend_class(kind: str) -> type[Backend]:
    try:
        target = BACKENDS[kind]
    except KeyError:
        raise ValueError(f"unknown backend '{kind}'; known: {', '.join(BACKENDS)}") from None
    mod, cls = target.split(":")
    return getattr(importlib.import_module(mod), cls)


def make_backend(spec: "ExpertSpec", base_dir: str | None = None) -> Backend:
    return backend_class(spec.backend)(spec, base_dir=base_dir)


__all__ = ["Backend", "BACKENDS", "backend_class", "make_backend"]
