"""Aggregation: none, Mixture-of-Agents, Self-MoA, sequential Self-MoA, voting.

`make_aggregator(spec)` builds one from an experts.yaml AggregatorSpec. Modules load lazily.
"""

from __future__ import annotations

import importlib

from composer.aggregation.base import Aggregator, NoAggregation

AGGREGATORS = {
    "none": "composer.aggregation.base:NoAggregation",
}


def make_aggregator(kind: str = "none", expert: str | None = None, **params) -> Aggregator:
    try:
        mod, cls = AGGREGATORS[kind].split(":")
    except KeyError:
        raise ValueError(f"unknown aggregator '{kind}'; known: {', '.join(AGGREGATORS)}") from None
    return getattr(importlib.import_module(mod), cls)(expert=expert, **params)


__all__ = ["AGGREGATORS", "Aggregator", "NoAggregation", "make_aggregator"]
