"""Voting: extract each candidate's final answer, take the majority, break ties by router score.

Answer types: "choice" (a multiple-choice letter A-J), "number" (a numeric answer, compared as a
number), "exact" (a normalised string). "auto" picks "choice" when the question lists options
"(A) ... (B) ...", else "number" when most candidates contain a number, else "exact". The same
extractors score benchmark answers in evals/benchmarks.py, so a vote and its score agree.

    >>> extract_answer("So the answer is (C).", "choice")
    'C'
    >>> extract_answer("She makes 9 * 2 = $18.\\nAnswer: 18", "number")
    '18'
"""

from __future__ import annotations

import re
from collections import defaultdict
from decimal import Decimal, InvalidOperation

from composer.aggregation.base import Aggregator, best_candidate, errors_of
from composer.aggregation.stages import Call, answer_from, run_calls, query_stage, sample_query
from composer.types import Candidate, Query, Usage

CHOICE_TASKS = {"mmlu", "mmlu_pro", "medmcqa", "arc", "choice"}
NUMBER_TASKS = {"gsm8k", "aime24", "aime", "math", "number"}
LETTERS = "ABCDEFGHIJ"

_CHOICE_PATTERNS = [
    re.compile(r"answer\s*(?:is|:)\s*:?\s*\(?\**([A-J])\b\)?", re.I),
    re.compile(r"(?:option|choice)\s*\(?([A-J])\b\)?", re.I),
    re.compile(r"\(([A-J])\)"),
    re.compile(r"^\s*\**([A-J])\s*[\).:\]]", re.M),
    re.compile(r"^\s*([A-J])\s*$", re.M),
]
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def canonical_number(s: str) -> str | None:
    """'1,234.50' -> '1234.5', '$18' -> '18', '18.0' -> '18'; None if not a number."""
    s = s.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if d == d.to_integral_value():
        return str(int(d))  # exact at any size (quantize fails past the context's 28 digits)
    return format(d.normalize(), "f")


def extract_choice(text: str) -> str | None:
    for pat in _CHOICE_PATTERNS:
        m = pat.search(text)
        if m:
            return m.group(1).upper()
    return None


def extract_number(text: str) -> str | None:
    for pat in (_BOXED, re.compile(r"####\s*([^\n]+)"), re.compile(r"answer\s*(?:is|:)\s*:?\s*([^\n]+)", re.I)):
        for m in reversed(list(pat.finditer(text))):
            nums = _NUMBER.findall(m.group(1).rsplit("=", 1)[-1])  # "answer is 24 + 12 = 36" -> 36
            if nums:
                return canonical_number(nums[0])
    nums = _NUMBER.findall(text)
    return canonical_number(nums[-1]) if nums else None


def normalise_text(s: str) -> str:
    return re.sub(r"\s+", " ", s.strip().strip("\"'`*").strip()).rstrip(".!").lower()


def extract_exact(text: str) -> str | None:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    for ln in reversed(lines):
        m = re.match(r"\s*\**final answer\**\s*:\s*(.+)|\s*\**answer\**\s*:\s*(.+)", ln, re.I)
        if m:
            return normalise_text(m.group(1) or m.group(2)) or None
    return normalise_text(lines[-1]) or None


EXTRACTORS = {"choice": extract_choice, "number": extract_number, "exact": extract_exact}


def has_options(question: str) -> bool:
    return bool(re.search(r"\(A\)", question) and re.search(r"\(B\)", question))


def answer_type_for(query: Query, texts: list[str], requested: str = "auto") -> str:
    if requested != "auto":
        if requested not in EXTRACTORS:
            raise ValueError(f"unknown answer_type '{requested}'; use auto, {', '.join(EXTRACTORS)}")
        return requested
    task = (query.task or "").lower()
    if task in CHOICE_TASKS or has_options(query.text):
        return "choice"
    if task in NUMBER_TASKS:
        return "number"
    with_numbers = sum(extract_number(t) is not None for t in texts)
    return "number" if texts and with_numbers * 2 > len(texts) else "exact"


def extract_answer(text: str, answer_type: str) -> str | None:
    return EXTRACTORS[answer_type](text)


def majority(votes: list[tuple[str | None, str]], scores: dict[str, float],
             preference: list[str]) -> tuple[str | None, dict]:
    """The winning answer among (answer, expert) votes. Ties: the highest router score of a
    supporting expert, then the summed score, then the router's order of preference."""
    tally: dict[str, list[str]] = defaultdict(list)
    for ans, expert in votes:
        if ans is not None:
            tally[ans].append(expert)
    if not tally:
        return None, {"tally": {}, "tie_break": None}
    rank = {e: i for i, e in enumerate(preference)}

    def key(ans: str):
        sup = tally[ans]
        s = [scores.get(e, 0.0) for e in sup]
        return (len(sup), max(s), sum(s), -min(rank.get(e, len(rank)) for e in sup))

    ordered = sorted(tally, key=key, reverse=True)
    top = [a for a in ordered if len(tally[a]) == len(tally[ordered[0]])]
    rule = None if len(top) == 1 else ("router score" if key(top[0])[1:3] != key(top[1])[1:3] else "router order")
    return ordered[0], {"tally": {a: list(v) for a, v in tally.items()}, "tie_break": rule}


class Vote(Aggregator):
    """Majority vote over the routed experts' answers. Params: answer_type (auto|choice|number|
    exact); samples (per expert: a number, or a mapping expert -> number; default 1), drawn at
    `temperature` (default 0.7) with seeds seed, seed+1, ... (default: the query's seed, else 0)."""

    kind = "vote"
    PARAMS = frozenset({"answer_type", "samples", "temperature", "seed"})

    def run(self, queries, decisions, run_stage):
        p = self.params
        calls = []
        for qi, (q, d) in enumerate(zip(queries, decisions)):
            for e in d.experts:
                n = self.samples_for(e)
                for s in range(n):
                    sq = sample_query(q, s, p, f"vote/{e}/{s}") if n > 1 else sample_query(q, None, p, f"vote/{e}")
                    calls.append(Call(qi, e, sq, "proposer", {"sample": s}))
        cands, batch = run_calls(calls, queries, run_stage, None)
        answers = []
        for qi, (q, d) in enumerate(zip(queries, decisions)):
            mine = [c for c, call in zip(cands, calls) if call.qi == qi]
            ok = [c for c in mine if c.ok]
            atype = answer_type_for(q, [c.text for c in ok], p.get("answer_type", "auto"))
            votes = [(extract_answer(c.text, atype), c.expert) for c in ok]
            for c, (v, _) in zip(ok, votes):
                c.metadata["extracted"] = v
            winner, info = majority(votes, d.scores, d.experts)
            chosen = self._representative(ok, winner, d)
            if chosen is None and ok:  # nothing to vote on: say so and keep the preferred answer
                chosen = best_candidate(ok, d)
                info["fallback"] = f"no candidate had an extractable {atype} answer; kept the router's preferred candidate"
            stage = query_stage("proposers", "proposers", mine, batch)
            vote_stage = {"stage": "vote", "kind": "vote", "calls": 0, "experts": [], "candidates": [],
                          "usage": Usage().to_dict(), "latency_s": 0.0, "loads": 0, "unloads": 0,
                          "answer_type": atype,
                          "votes": [{"expert": c.expert, "sample": c.metadata.get("sample"), "answer": v}
                                    for c, (v, _) in zip(ok, votes)],
                          "input": [v for v, _ in votes], "output": winner, **info}
            error = None if chosen is not None else errors_of(mine)
            answers.append(answer_from(q, d, mine, chosen.text if chosen else "", [stage, vote_stage], error))
        return answers

    def samples_for(self, expert: str) -> int:
        """`samples` is one number for every expert or a mapping expert -> number (default 1)."""
        s = self.params.get("samples", 1)
        n = int(s.get(expert, 1) if isinstance(s, dict) else s)
        if n < 1:
            raise ValueError(f"vote: samples for '{expert}' must be >= 1, got {n}")
        return n

    @staticmethod
    def _representative(ok: list[Candidate], winner: str | None, d) -> Candidate | None:
        """The winning answer's candidate from the best-scored (then most preferred) expert."""
        sup = [c for c in ok if c.metadata.get("extracted") == winner and winner is not None]
        if not sup:
            return None
        rank = {e: i for i, e in enumerate(d.experts)}
        return sorted(sup, key=lambda c: (-d.scores.get(c.expert, 0.0), rank.get(c.expert, len(rank))))[0]
