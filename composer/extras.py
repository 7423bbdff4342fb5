"""Which optional extra of composer-moe provides a module, for a one-line "pip install" hint.

    >>> missing_extra_message(ModuleNotFoundError(name="llama_cpp"))
    "llama_cpp is not installed; run: pip install 'composer-moe[local]'"
"""

from __future__ import annotations

# top-level module -> extra (pyproject.toml [project.optional-dependencies])
EXTRA_OF = {
    "llama_cpp": "local",
    "ray": "serve",
    "fastapi": "serve",
    "starlette": "serve",
    "uvicorn": "serve",
    "prometheus_client": "serve",
    "torch_geometric": "specialists",
    "fairlearn": "specialists",
    "shap": "specialists",
    "scipy": "specialists",
    "matplotlib": "eval",
    "vllm": "vllm",
}


def extra_for(module: str | None) -> str | None:
    return EXTRA_OF.get((module or "").split(".")[0])


def missing_extra_message(exc: ModuleNotFoundError) -> str | None:
    """One line naming the pip install that provides the missing module; None if no extra does."""
    extra = extra_for(exc.name)
    if extra is None:
        return None
    return f"{exc.name.split('.')[0]} is not installed; run: pip install 'composer-moe[{extra}]'"
