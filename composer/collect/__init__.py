"""Collect per-query outcomes of your own experts: run them on a prompt set (a benchmark with
gold answers, or your JSONL graded by reference or by an LLM judge) into a resumable long
outcome table that `composer router train` and `composer eval` read. See docs/collect.md.

    from composer.collect import collect, benchmark_prompts, OutcomeStore
"""

from composer.collect.judge import Judge, parse_preference, parse_rating
from composer.collect.prompts import PromptItem, benchmark_prompts, grade, grade_reference, jsonl_prompts
from composer.collect.runner import CollectReport, collect, summarise
from composer.collect.store import OutcomeStore

__all__ = ["CollectReport", "Judge", "OutcomeStore", "PromptItem", "benchmark_prompts", "collect", "grade",
           "grade_reference", "jsonl_prompts", "parse_preference", "parse_rating", "summarise"]
