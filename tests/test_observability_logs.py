"""The `composer` logger fed by composer.events: real Composers over the fake-backend registries
(fault injection: a slow load, a failing load, a flaky expert with a fallback) and one run of the
real SmolLM2 expert from experts.yaml."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import pytest

from composer.core import Composer
from composer.observability import attach, configure_logging
from composer.observability.logs import configure

CONFIGS = Path(__file__).parent / "configs"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def logbuf():
    buf = io.StringIO()
    yield buf
    configure("text", "WARNING")  # leave the logger quiet for other tests


def lines(buf) -> list[dict]:
    return [json.loads(ln) for ln in buf.getvalue().splitlines() if ln.strip()]


def test_json_lines_for_routes_loads_and_failures(logbuf):
    configure("json", "INFO", stream=logbuf)
    c = Composer.from_yaml(CONFIGS / "fake.yaml")
    detach = attach(c)
    try:
        assert all(a.ok for a in c.run(["first question", "second question"], pipeline="both"))
        assert not c.ask("third question", expert="broken").ok
    finally:
        detach()
        c.close()
    recs = lines(logbuf)  # every line parses as one JSON object
    assert recs and all({"ts", "level", "logger", "msg", "event"} <= set(r) for r in recs if r["logger"] == "composer.runtime")
    routes = [r for r in recs if r.get("event") == "route"]
    assert len(routes) == 3
    assert routes[0]["experts"] == ["fast", "slow"] and routes[0]["pipeline"] == "both"
    assert routes[0]["reason"] == "pipeline 'both' uses fixed experts" and routes[0]["level"] == "INFO"
    assert routes[2]["experts"] == ["broken"] and routes[2]["reason"] == "requested expert"
    loads = [r for r in recs if r.get("event") == "load" and r["expert"] == "slow"]
    assert loads and all(r["level"] == "INFO" and r["seconds"] >= 0.05 for r in loads)  # load_s: 0.05, measured
    assert "load expert=slow seconds=0.05" in loads[0]["msg"]
    failed = [r for r in recs if r.get("event") == "load_failed"]
    assert failed and failed[0]["level"] == "WARNING" and failed[0]["expert"] == "broken"
    assert "injected load failure" in failed[0]["error"]
    bad = [r for r in recs if r.get("event") == "attempt" and not r["ok"]]
    assert bad and all(r["level"] == "WARNING" and r["expert"] == "broken" for r in bad)
    assert not [r for r in recs if r.get("event") == "attempt" and r["ok"]]  # DEBUG, below INFO


def test_retries_and_fallback_are_logged(logbuf):
    configure("text", "INFO", stream=logbuf)
    c = Composer.from_yaml(CONFIGS / "service.yaml")  # flaky: fail_rate 1.0, fallbacks [echo]
    detach = attach(c)
    try:
        a = c.ask("hello there", expert="flaky")
    finally:
        detach()
        c.close()
    assert a.ok and a.experts == ["echo"]
    text = logbuf.getvalue()
    assert "retry query_id=" in text and "expert=flaky" in text
    assert "fallback query_id=" in text and "from_expert=flaky expert=echo" in text
    assert text.count("attempt failed") >= 1 and " WARNING composer.runtime: attempt failed" in text


def test_keys_never_and_prompts_only_with_log_prompts(logbuf):
    c = Composer.from_yaml(CONFIGS / "fake.yaml")
    detach = attach(c)
    key, prompt = "sk-live-0123456789abcdef", "my very private question"
    try:
        for allow in (False, True):
            configure("json", "INFO", stream=logbuf, log_prompts=allow)
            # an event as a backend error would carry it: the user's prompt and a key in the message
            c.events.emit("load_failed", expert="fast", seconds=0.1, prompt=prompt, api_key=key,
                          error=f"upstream said: invalid api_key={key} (Authorization: Bearer {key})")
            logging.getLogger("composer.backends").warning("retrying with %s", key,
                                                          extra={"composer": {"messages": [prompt]}})
    finally:
        detach()
        c.close()
    withheld, shown = lines(logbuf)[:2], lines(logbuf)[2:]
    assert key not in logbuf.getvalue() and "0123456789abcdef" not in logbuf.getvalue()
    assert "[redacted]" in withheld[0]["error"] and "[redacted]" in withheld[1]["msg"]
    assert prompt not in json.dumps(withheld) and "api_key" not in withheld[0]
    assert shown[0]["prompt"] == prompt and shown[1]["messages"] == [prompt] and "api_key" not in shown[0]


def test_configure_logging_replaces_its_handler(monkeypatch):
    monkeypatch.delenv("COMPOSER_LOG", raising=False)  # configure_logging exports it; undone after
    configure_logging("json", "DEBUG")
    assert json.loads(os.environ["COMPOSER_LOG"]) == {"fmt": "json", "level": "DEBUG", "log_prompts": False}
    configure_logging("text", "INFO")
    logger = logging.getLogger("composer")
    ours = [h for h in logger.handlers if getattr(h, "_composer_handler", False)]
    assert len(ours) == 1 and logger.level == logging.INFO
    with pytest.raises(ValueError, match="'text' or 'json'"):
        configure_logging("yaml")
    configure("text", "WARNING")


def test_real_smollm2_route_and_load_lines(logbuf):
    configure("text", "INFO", stream=logbuf)
    c = Composer.from_yaml(REPO / "experts.yaml")
    detach = attach(c)
    try:
        a = c.ask("What is the capital of France?", expert="smollm2", max_tokens=8)
    finally:
        detach()
        c.close()
    assert a.ok, a.error
    text = logbuf.getvalue()
    assert "INFO composer.runtime: route query_id=" in text and "experts=smollm2 router=fixed reason='requested expert'" in text
    load = [ln for ln in text.splitlines() if "composer.runtime: load expert=smollm2 seconds=" in ln]
    assert load and float(load[0].rsplit("seconds=", 1)[1].split()[0]) > 0  # a real load takes time
    assert "What is the capital" not in text and a.text not in text  # no prompt, no completion
