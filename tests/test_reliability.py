"""Reliability policy through the real core path (Composer.run -> Reliability -> LocalExecutor).

The fake backend is used on purpose here: it is the failure-injection tool (fail_rate, fail_on,
enforce_context, slow generation); nothing below stands in for a real model's output.
"""

from __future__ import annotations

import threading

import pytest

from composer.config import parse_config
from composer.core import Composer
from composer.reliability import Reliability
from composer.types import Query


class Clock:
    """A manual clock so cooldowns are tested without waiting (no timed assertions)."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


CONFIG = """
version: 1
settings: {default_expert: good}
experts:
  - {name: good, backend: fake, model: good}
  - {name: batchy, backend: fake, model: batchy, options: {batch_gen_s: 0.3}}
  - {name: flaky, backend: fake, model: flaky, fallbacks: [good], options: {fail_rate: 0.5, seed: 1}}
  - {name: dead, backend: fake, model: dead, fallbacks: [good], options: {fail_rate: 1.0}}
  - {name: loop_a, backend: fake, model: a, fallbacks: [loop_b], options: {fail_rate: 1.0}}
  - {name: loop_b, backend: fake, model: b, fallbacks: [loop_a], options: {fail_rate: 1.0}}
  - name: picky
    backend: fake
    model: picky
    fallbacks: [good]
    options: {fail_on: ["BAD"], fail_on_type: bad_request}
  - {name: brittle, backend: fake, model: brittle, fallbacks: [good], options: {fail_on: ["boom"]}}
  - {name: slow, backend: fake, model: slow, timeout_s: 0.2, fallbacks: [good], options: {gen_s: 30}}
  - name: small
    backend: fake
    model: small
    context_length: 64
    generation: {max_tokens: 16}
    options: {enforce_context: true}
  - name: small_fb
    backend: fake
    model: small
    context_length: 64
    fallbacks: [big]
    generation: {max_tokens: 16}
    options: {enforce_context: true}
  - name: big
    backend: fake
    model: big
    context_length: 4096
    generation: {max_tokens: 16}
    options: {enforce_context: true}
pipelines:
  - {name: doomed, experts: [dead], fallbacks: [rescue]}
  - {name: rescue, experts: [good]}
"""


def make(clock=None, **kw) -> Composer:
    cfg = parse_config(CONFIG, check_files=False)
    c = Composer(cfg, executor="local")
    params = dict(max_retries=2, backoff_s=0.001, backoff_max_s=0.01, cooldown_after=3, cooldown_s=30,
                  seed=0)
    if clock is not None:
        params.update(clock=clock, sleep=clock.sleep)
    params.update(kw)
    c._reliability = Reliability(c.experts, **params)
    return c


def calls(c: Composer, name: str) -> int:
    return c.backend(name).queries_seen


@pytest.fixture
def comp():
    c = make()
    yield c
    c.close()


def test_retryable_failure_is_retried_and_succeeds(comp):
    ans = comp.ask("hello there", expert="flaky")
    assert ans.ok, ans.error
    cand = ans.candidates[0]
    assert cand.expert == "flaky"
    assert cand.metadata["experts_tried"] == ["flaky"]
    assert [a["error_type"] for a in cand.metadata["attempts"]] == ["error"]
    assert calls(comp, "flaky") == 2  # first draw fails (seed 1), the retry succeeds


def test_retries_are_bounded_then_fallback_answers(comp):
    ans = comp.ask("hello", expert="dead")
    assert ans.ok and ans.text == "[good] hello"
    assert calls(comp, "dead") == 3  # 1 call + max_retries=2
    assert ans.candidates[0].metadata["experts_tried"] == ["dead", "good"]
    assert ans.experts == ["good"]


def test_bad_request_is_never_retried_nor_sent_elsewhere(comp):
    ans = comp.ask("a BAD request", expert="picky")
    assert not ans.ok and "injected failure" in ans.error
    assert calls(comp, "picky") == 1
    assert calls(comp, "good") == 0


def test_non_retryable_error_goes_to_fallback_without_retry(comp):
    ans = comp.ask("boom now", expert="brittle")
    assert ans.ok and ans.candidates[0].expert == "good"
    assert calls(comp, "brittle") == 1


def test_fallback_cycle_is_bounded(comp):
    ans = comp.ask("anything", expert="loop_a")
    assert not ans.ok
    assert "fallbacks exhausted" in ans.error
    assert ans.candidates[0].metadata["experts_tried"] == ["loop_a", "loop_b"]
    assert calls(comp, "loop_a") == 3 and calls(comp, "loop_b") == 3


def test_timeout_moves_on_and_cancels_the_slow_generation(comp):
    ans = comp.ask("take your time", expert="slow")
    assert ans.ok and ans.candidates[0].expert == "good"
    attempts = ans.candidates[0].metadata["attempts"]
    # a timeout is retryable: 1 try + 2 retries on `slow`, then the fallback answered
    assert [(a["expert"], a["error_type"]) for a in attempts] == [("slow", "timeout")] * 3
    # every timed-out generation was stopped at once (not abandoned), so nothing is left running
    assert comp.backend("slow").cancelled_queries == 3
    # three failures in a row cool it down (the policy); it is never held "busy" by a stopped call
    assert "cooling down" in comp.reliability.unavailable_reason("slow")


def test_cooldown_after_n_failures_and_comes_back_by_itself():
    clock = Clock()
    c = make(clock, cooldown_after=2, cooldown_s=30)
    try:
        for i in range(2):
            assert c.ask(f"boom {i}", expert="brittle").candidates[0].expert == "good"
        assert calls(c, "brittle") == 2
        assert "cooling down" in c.reliability.unavailable_reason("brittle")
        ans = c.ask("a fine question", expert="brittle")
        assert ans.ok and ans.candidates[0].expert == "good"
        assert calls(c, "brittle") == 2  # skipped while cooling down
        assert ans.candidates[0].metadata["attempts"][0]["skipped"] is True
        clock.t += 31  # the cooldown expires: no one resets it by hand
        ans = c.ask("a fine question again", expert="brittle")
        assert ans.ok and ans.candidates[0].expert == "brittle"
        assert calls(c, "brittle") == 3
        assert c.reliability.status()["brittle"]["cooldowns"] == 1
    finally:
        c.close()


def test_context_overflow_goes_to_a_larger_context_expert(comp):
    long_prompt = " ".join(["word"] * 100)  # 100 + 16 > 64 tokens
    ans = comp.ask(long_prompt, expert="small")
    assert ans.ok, ans.error
    # no fallback named: the smallest window larger than 64 (2048; ties by name) takes it
    smallest_larger = min(n for n, e in comp.experts.items() if e.context_length == 2048)
    assert ans.candidates[0].expert == smallest_larger
    assert calls(comp, "small") == 1  # not retried
    assert ans.candidates[0].metadata["attempts"][0]["error_type"] == "context_overflow"
    # a named fallback with a larger window is preferred
    ans = comp.ask(long_prompt, expert="small_fb")
    assert ans.ok and ans.candidates[0].expert == "big"
    assert ans.candidates[0].metadata["experts_tried"] == ["small_fb", "big"]


def test_context_overflow_without_larger_expert_is_a_clear_error(comp):
    ans = comp.ask(" ".join(["word"] * 5000), expert="big")
    assert not ans.ok and "context window" in ans.error
    assert calls(comp, "big") == 1


def test_pipeline_fallback_reaches_the_other_pipelines_experts(comp):
    ans = comp.ask("hi", pipeline="doomed")
    assert ans.ok and ans.text == "[good] hi"
    assert ans.candidates[0].metadata["experts_tried"] == ["dead", "good"]


def test_cancelled_query_gets_no_attempt(comp):
    q = Query("never mind", id="cancel-me")
    comp.reliability.cancel([q.id])
    ans = comp.run([q], expert="good")[0]
    assert not ans.ok and "cancelled" in ans.error
    assert calls(comp, "good") == 0


def test_cancel_during_generation_stops_the_backend():
    c = make(max_retries=0)
    try:
        q = Query("long job", id="job-1")
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("a", c.run([q], expert="slow")[0]))
        # make the slow expert's timeout long enough that only the cancel can end the call
        slow = c.backend("slow")
        slow.spec = slow.spec.model_copy(update={"timeout_s": 600})
        t.start()
        for _ in range(400):
            if c.backend("slow").queries_seen:
                break
            threading.Event().wait(0.01)
        c.cancel([q.id])
        t.join(timeout=60)
        assert not t.is_alive()
        ans = out["a"]
        assert not ans.ok and "cancelled" in ans.error
        for _ in range(200):
            if c.backend("slow").cancelled_queries:
                break
            threading.Event().wait(0.05)
        assert c.backend("slow").cancelled_queries == 1
        assert calls(c, "good") == 0  # a cancelled query is not sent to a fallback
    finally:
        c.close()


def test_backoff_grows_exponentially_with_jitter():
    r = Reliability({}, backoff_s=0.1, backoff_max_s=1.0, seed=3)
    for attempt, base in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (6, 1.0)]:
        d = r.backoff(attempt)
        assert base / 2 <= d <= base
    assert len({round(r.backoff(1), 9) for _ in range(10)}) > 1  # jittered


def test_chain_is_breadth_first_bounded_and_acyclic():
    cfg = parse_config(CONFIG, check_files=False)
    experts = {e.name: e for e in cfg.experts}
    r = Reliability(experts, max_fallbacks=3)
    assert r.chain_of("loop_a") == ["loop_b"]
    assert r.chain_of("good") == []
    pipes = {p.name: p for p in cfg.pipelines}
    assert r.pipeline_chain(pipes["doomed"], pipes) == ["good"]


def test_stream_mode_batches_concurrent_runs_and_keeps_the_policy():
    c = make()
    try:
        c.stream_mode(max_wait_s=0.5)
        answers: dict[int, object] = {}

        def one(i):
            answers[i] = c.ask(f"question {i}", expert="dead" if i % 2 else "batchy")

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(answers) == 8 and all(a.ok for a in answers.values())
        assert {i: a.candidates[0].expert for i, a in answers.items()} == \
            {i: "good" if i % 2 else "batchy" for i in range(8)}
        assert c._batcher.stats()["served"] >= 8
        b = c.backend("batchy")  # a batch takes 0.3 s: the requests arriving meanwhile share one
        assert b.queries_seen == 4 and b.generate_calls < 4
    finally:
        c.close()


def test_a_streak_in_a_mostly_healthy_expert_does_not_cool_it_down():
    clock = Clock()
    r = Reliability({}, cooldown_after=3, cooldown_rate=0.6, window=20, cooldown_s=10, clock=clock)
    for _ in range(17):
        r.record("x", True)
    for _ in range(3):
        r.record("x", False)  # 3 in a row, but 3 of the last 20 calls: a flaky expert stays
    assert r.unavailable_reason("x") is None
    for _ in range(9):
        r.record("x", False)  # now 12 of the last 20 failed: it is down
    assert "cooling down" in r.unavailable_reason("x")
    clock.t += 11
    assert r.unavailable_reason("x") is None  # back by itself, on trial
    r.record("x", False)
    assert "cooling down" in r.unavailable_reason("x")  # still failing: straight back
