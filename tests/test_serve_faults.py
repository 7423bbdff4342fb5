"""The endpoint under faults, against a real `composer serve` (Ray Serve, 127.0.0.1) with fake
experts (tests/configs/service.yaml) whose delays and failures are injected on purpose:
bounded queue, client disconnect, retries/fallback/cooldown through HTTP, graceful drain.
The drain test stops the server, so it comes last."""

from __future__ import annotations

import re
import threading

import httpx
import pytest

from serve_proc import REPO, ServerProc

KEY = "faults-key-93ab"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server():
    s = ServerProc(REPO / "tests/configs/service.yaml", KEY, ["--max-inflight", "2", "--drain-timeout", "20"]).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base, timeout=60) as c:
        yield c


def metric(http, name: str, **labels) -> float:
    text = http.get("/metrics", headers=AUTH).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(rf"{name}(?:\{{(.*)\}})? ([0-9.e+-]+)$", line)
        got = [kv for kv in (m.group(1) or "").split(",") if kv and not kv.startswith("replica=")] if m else []
        if m and ",".join(sorted(got)) == want:  # every sample also carries replica="..."
            return float(m.group(2))
    return 0.0


def wait_for(pred, tries: int = 120, step: float = 0.25) -> bool:
    ev = threading.Event()
    for _ in range(tries):
        if pred():
            return True
        ev.wait(step)
    return False


def chat(model: str, text: str = "hello", **kw) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **kw}


def test_retries_then_fallback_and_cooldown_through_http(http):
    r = http.post("/v1/chat/completions", headers=AUTH, json=chat("flaky"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "[echo] hello"
    assert body["composer"]["experts_tried"] == [["flaky", "echo"]]
    assert metric(http, "composer_expert_errors_total", expert="flaky", error_type="error") == 3  # 1 + 2 retries
    assert metric(http, "composer_expert_available", expert="flaky") == 0  # cooling down after 3 failures
    r = http.post("/v1/chat/completions", headers=AUTH, json=chat("flaky", "again"))
    assert r.status_code == 200 and r.json()["composer"]["experts_tried"] == [["flaky", "echo"]]
    assert metric(http, "composer_expert_errors_total", expert="flaky", error_type="error") == 3  # skipped


def test_bounded_queue_answers_429_fast_with_retry_after(server, http):
    results = {}

    def slow_call(i):
        with httpx.Client(base_url=server.base, timeout=60) as c:
            results[i] = c.post("/v1/chat/completions", headers=AUTH, json=chat("steady", f"q{i}"))

    threads = [threading.Thread(target=slow_call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    assert wait_for(lambda: metric(http, "composer_inflight_requests") == 2, step=0.05)
    r = http.post("/v1/chat/completions", headers=AUTH, json=chat("echo"))
    assert r.status_code == 429, r.text
    assert r.headers["retry-after"] == "1"
    assert "server busy" in r.json()["error"]["message"]
    for t in threads:
        t.join(timeout=60)
    assert [results[i].status_code for i in range(2)] == [200, 200]
    assert metric(http, "composer_rejected_total", reason="overload") == 1


def test_client_disconnect_cancels_the_generation(server, http):
    before = metric(http, "composer_expert_generations_cancelled_total", expert="slow")
    with httpx.Client(base_url=server.base, timeout=1.0) as c:  # `slow` takes 30 s: we leave after 1 s
        with pytest.raises(httpx.ReadTimeout):
            c.post("/v1/chat/completions", headers=AUTH, json=chat("slow"))
    assert wait_for(lambda: metric(http, "composer_expert_generations_cancelled_total", expert="slow") == before + 1)
    assert metric(http, "composer_cancelled_total") >= 1
    # streaming: read the first event, then hang up
    with httpx.Client(base_url=server.base, timeout=60) as c:
        with c.stream("POST", "/v1/chat/completions", headers=AUTH, json=chat("slow", stream=True)) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break  # leaving the block closes the connection
    assert wait_for(lambda: metric(http, "composer_expert_generations_cancelled_total", expert="slow") == before + 2)
    assert wait_for(lambda: metric(http, "composer_inflight_requests") == 0)


def test_graceful_shutdown_drains_in_flight_requests(server, http):
    out = {}

    def in_flight():
        with httpx.Client(base_url=server.base, timeout=60) as c:
            out["r"] = c.post("/v1/chat/completions", headers=AUTH, json=chat("steady", "finish me"))

    t = threading.Thread(target=in_flight)
    t.start()
    assert wait_for(lambda: metric(http, "composer_inflight_requests") == 1, step=0.05)
    server.terminate()
    assert wait_for(lambda: http.get("/readyz").status_code == 503, step=0.05)
    late = http.post("/v1/chat/completions", headers=AUTH, json=chat("echo"))
    assert late.status_code == 503 and late.headers["retry-after"] == "1"
    t.join(timeout=60)
    assert out["r"].status_code == 200, out["r"].text
    assert out["r"].json()["choices"][0]["message"]["content"] == "[steady] finish me"
    assert server.wait(timeout=60) == 0
    assert "drained=True" in server.output()
