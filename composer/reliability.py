"""Moved: the failure policy lives in composer/runtime/policy.py (this name stays importable)."""

from composer.runtime.policy import ExpertHealth, Item, Reliability

__all__ = ["ExpertHealth", "Item", "Reliability"]
