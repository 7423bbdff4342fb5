"""The endpoint's Prometheus metrics (composer/serve/metrics.py) fed by composer.events from real
Composers over the fake-backend registries (fault injection: slow and failing loads, a flaky
expert with a fallback, a 30 s generation that is cancelled), and the Grafana dashboard's every
panel checked against what the registry really exports."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from composer.core import Composer
from composer.serve.metrics import Metrics
from composer.types import Query

CONFIGS = Path(__file__).parent / "configs"
DASHBOARD = Path(__file__).resolve().parents[1] / "dashboards" / "composer-grafana.json"
LEVELS = {"composer_inflight_requests", "composer_expert_loaded", "composer_expert_available",
          "composer_batch_queue_depth"}  # the only gauges: levels, not counts


def value(text: str, name: str, **labels) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def exercise(metrics: Metrics) -> None:
    """Real runs that produce every kind of event the runtime emits."""
    with Composer.from_yaml(CONFIGS / "fake.yaml", memory_budget=1500) as c:  # one expert resident: unloads
        c.events.subscribe(metrics.observe)
        c.stream_mode(max_wait_s=0.05)
        answers = c.run(["one question", "two questions", "three"], pipeline="both") + [c.ask("four", expert="broken")]
        assert [a.ok for a in answers] == [True, True, True, False]  # the last: load_failed
        metrics.record_answers(answers)  # as the endpoint does with each request's answers
        pieces = list(c.stream("five words in this question", expert="slow"))  # first_token
        assert pieces[-1].ok
        metrics.refresh(c)
    with Composer.from_yaml(CONFIGS / "service.yaml") as c:
        c.events.subscribe(metrics.observe)
        assert c.ask("hello there", expert="flaky").experts == ["echo"]  # retries, then the fallback
        q = Query("a long generation")
        done = threading.Thread(target=c.run, args=([q],), kwargs={"expert": "slow"})
        done.start()
        time.sleep(0.5)
        c.cancel([q.id])  # the 30 s generation stops
        done.join(timeout=20)
        assert not done.is_alive()
        metrics.refresh(c)


@pytest.fixture(scope="module")
def scraped():
    m = Metrics(replica="replica-7")
    exercise(m)
    return m, generate_latest(m.registry).decode()


def test_events_become_counters_and_histograms(scraped):
    _, text = scraped
    assert value(text, "composer_route_decisions_total", pipeline="both", expert="fast", router="fixed") == 3
    assert value(text, "composer_route_decisions_total", pipeline="none", expert="flaky") == 1
    assert value(text, "composer_expert_load_seconds_count", expert="slow") >= 1
    assert value(text, "composer_expert_load_seconds_sum", expert="slow") >= 0.05  # load_s: 0.05, measured
    assert value(text, "composer_expert_loads_total", expert="slow") == value(
        text, "composer_expert_load_seconds_count", expert="slow")
    assert value(text, "composer_expert_load_failures_total", expert="broken") >= 1
    assert value(text, "composer_expert_errors_total", expert="broken", error_type="load") >= 1
    assert value(text, "composer_expert_errors_total", expert="flaky", error_type="error") >= 1
    assert value(text, "composer_retries_total", expert="flaky") >= 1
    assert value(text, "composer_fallbacks_total", from_expert="flaky", expert="echo") == 1
    assert value(text, "composer_expert_answers_total", expert="fast") == 3
    assert value(text, "composer_answers_total", status="ok") == 3 and value(text, "composer_answers_total", status="error") == 1
    assert value(text, "composer_tokens_total", expert="fast", kind="completion") > 0
    assert value(text, "composer_time_to_first_token_seconds_count", expert="slow") >= 1
    assert value(text, "composer_expert_latency_seconds_count", expert="fast", outcome="ok") == 3
    assert sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "composer_query_cancels_total") >= 1
    assert value(text, "composer_expert_unloads_total", expert="fast") >= 1
    assert value(text, "composer_batch_size_count", expert="fast") >= 1
    assert value(text, "composer_batch_wait_seconds_count", expert="fast") >= 1
    assert value(text, "composer_expert_generations_cancelled_total", expert="slow") >= 1


def test_counts_are_counters_and_every_sample_has_the_replica(scraped):
    _, text = scraped
    fams = [f for f in text_string_to_metric_families(text) if not f.name.endswith("_created")]
    assert {f.name for f in fams if f.type == "gauge"} <= LEVELS
    assert {f.type for f in fams} <= {"counter", "histogram", "gauge"}
    samples = [s for f in fams for s in f.samples]
    assert samples and all(s.labels.get("replica") == "replica-7" for s in samples)
    for s in samples:  # no query id, prompt or key ever becomes a label
        assert not any(re.match(r"q-[0-9a-f]{6,}", v) or "question" in v for v in s.labels.values()), s


def test_refresh_exposes_every_expert_before_its_first_load():
    m = Metrics()  # no replica: plain labels
    with Composer.from_yaml(CONFIGS / "service.yaml") as c:
        m.refresh(c)
        text = generate_latest(m.registry).decode()
        for e in ("echo", "slow", "steady", "flaky"):
            assert f'composer_expert_loads_total{{expert="{e}"}} 0.0' in text
            assert f'composer_expert_loaded{{expert="{e}"}} 0.0' in text
            assert f'composer_expert_available{{expert="{e}"}} 1.0' in text


def test_service_attributes_keep_working():
    """composer/serve/service.py feeds these directly."""
    m = Metrics(replica="r")
    m.requests.labels("/v1/chat/completions", "team", "200").inc()
    m.latency.labels("/v1/chat/completions").observe(0.2)
    m.rejected.labels("overload").inc()
    m.cancelled.inc()
    m.inflight.set(3)
    text = generate_latest(m.registry).decode()
    assert value(text, "composer_requests_total", route="/v1/chat/completions", status="200", replica="r") == 1
    assert value(text, "composer_rejected_total", reason="overload") == 1
    assert value(text, "composer_inflight_requests", replica="r") == 3


def dashboard_metrics() -> dict[str, set[str]]:
    """Panel title -> the metric names its PromQL queries."""
    dash = json.loads(DASHBOARD.read_text())
    out = {}
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        exprs = [t["expr"] for t in p["targets"]]
        assert exprs, f"panel {p['title']!r} has no query"
        names = set()
        for e in exprs:
            e = re.sub(r'"[^"]*"', '""', e)  # label values are not metric names
            e = re.sub(r"\b(sum|min|max|avg|by|rate|histogram_quantile|le)\b", " ", e)
            names |= set(re.findall(r"\b(composer_[a-z0-9_]+)\b", e))
        assert names, f"panel {p['title']!r} queries no composer metric"
        out[p["title"]] = names
    return out


def test_every_dashboard_panel_queries_an_exported_metric(scraped):
    m, text = scraped
    # what service.py does per HTTP request, so that this scrape holds the endpoint's own series too
    m.requests.labels("/v1/chat/completions", "both", "200").inc()
    m.latency.labels("/v1/chat/completions").observe(0.1)
    m.rejected.labels("overload").inc()
    text = generate_latest(m.registry).decode()
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    panels = dashboard_metrics()
    assert len(panels) >= 20
    missing = {t: sorted(n - exported) for t, n in panels.items() if n - exported}
    assert not missing, f"panels query metrics /metrics does not export: {missing}"
    dash = json.loads(DASHBOARD.read_text())
    assert [v["name"] for v in dash["templating"]["list"]] == ["datasource", "replica"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
