"""/metrics and logs of a real `composer --log-format json --log-level INFO serve` (Ray Serve on
127.0.0.1, fake experts of tests/configs/service.yaml for fault injection): the runtime's events
reach the endpoint's registry, every sample carries the replica label, counts are counters, every
metric the Grafana dashboard queries is a family /metrics exports, and the replica (another
process) logs its route decisions as JSON lines."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve_proc import REPO, ServerProc
from test_metrics import LEVELS, dashboard_metrics

KEY = "metrics-key-5c1e"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server():
    s = ServerProc(REPO / "tests/configs/service.yaml", KEY,
                   global_args=["--log-format", "json", "--log-level", "INFO"]).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def scrape(server):
    with httpx.Client(base_url=server.base, timeout=60) as c:
        for model in ("echo", "flaky"):  # flaky fails every time: retries, then its fallback (echo)
            r = c.post("/v1/chat/completions", headers=AUTH,
                       json={"model": model, "messages": [{"role": "user", "content": "hello there"}]})
            assert r.status_code == 200, r.text
        r = c.post("/v1/chat/completions", headers=AUTH, json={"model": "echo", "stream": True,
                                                               "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
        yield c.get("/metrics", headers=AUTH).text


def fams(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text) if not f.name.endswith("_created")}


def value(text: str, name: str, **labels) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_runtime_events_reach_the_endpoints_metrics(scrape):
    assert value(scrape, "composer_requests_total", route="/v1/chat/completions", status="200") == 3
    assert value(scrape, "composer_route_decisions_total", pipeline="none", expert="flaky") == 1
    assert value(scrape, "composer_retries_total", expert="flaky") >= 1
    assert value(scrape, "composer_fallbacks_total", from_expert="flaky", expert="echo") == 1
    assert value(scrape, "composer_expert_loads_total", expert="echo") >= 1
    assert value(scrape, "composer_expert_load_seconds_count", expert="echo") >= 1
    assert value(scrape, "composer_batch_size_count", expert="echo") >= 1
    assert value(scrape, "composer_expert_latency_seconds_count", expert="echo", outcome="ok") >= 2


def test_replica_label_and_counters(scrape):
    f = fams(scrape)
    assert {n for n, fam in f.items() if fam.type == "gauge"} <= LEVELS
    replicas = {s.labels.get("replica") for fam in f.values() for s in fam.samples}
    assert len(replicas) == 1 and None not in replicas and "" not in replicas


def test_every_dashboard_metric_is_a_family_of_metrics(scrape):
    declared = set()
    for fam in text_string_to_metric_families(scrape):
        declared |= {fam.name, f"{fam.name}_total", f"{fam.name}_bucket", f"{fam.name}_count", f"{fam.name}_sum"}
    missing = {t: sorted(n - declared) for t, n in dashboard_metrics().items() if n - declared}
    assert not missing, missing


def replica_log_text(server) -> str:
    """What the replicas wrote to stderr: Ray keeps it in the session's worker logs."""
    logs = Path(server.ray_logs or "/nonexistent") / "logs"
    return "".join(p.read_text(errors="replace") for p in sorted(logs.glob("worker-*.err")))


def test_the_replica_logs_route_decisions_as_json(server, scrape):
    """The Composer lives in the Ray Serve replica, another process: it logs as the CLI was told
    (configure_logging hands the choice on in $COMPOSER_LOG)."""
    routes, text = [], ""
    for _ in range(40):  # stderr reaches the log file asynchronously
        text = replica_log_text(server)
        routes = [json.loads(ln) for ln in text.splitlines() if ln.startswith('{"ts": ') and '"event": "route"' in ln]
        if len(routes) >= 3:
            break
        time.sleep(0.25)
    assert sorted(r["experts"][0] for r in routes) == ["echo", "echo", "flaky"]
    assert all(r["level"] == "INFO" and r["logger"] == "composer.runtime" for r in routes)
    assert [ln for ln in text.splitlines() if '"event": "fallback"' in ln and '"from_expert": "flaky"' in ln]
    assert "hello there" not in text  # the prompt is never logged
