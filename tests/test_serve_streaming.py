"""Token streaming and disconnects through a real `composer serve` (Ray Serve, 127.0.0.1).

The expert is a litellm expert on a timing-controlled OpenAI-compatible upstream
(evals/fake_upstream.py: first token at 0.4 s, done at 2.0 s): the first SSE content chunk must
reach the client while the upstream is still generating, and a client that leaves after the first
chunk must close the upstream request, while another request to the same expert is served.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.serve_proc import ServerProc
from tests.upstream_proc import fake_upstream

KEY = "sk-stream-test"
H = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def upstream():
    """A timing-controlled OpenAI-compatible upstream: first token at 0.4 s, done at 2.0 s."""
    with fake_upstream(delay=2.0, first_token=0.4, chunks=10) as base:
        yield base


@pytest.fixture(scope="module")
def server(upstream, tmp_path_factory):
    cfg = tmp_path_factory.mktemp("stream") / "experts.yaml"
    cfg.write_text("version: 1\nsettings: {default_expert: up}\nexperts:\n"
                   f"  - {{name: up, backend: litellm, model: openai/fake, api_base: \"{upstream}/v1\", "
                   "api_key_env: COMPOSER_API_KEYS, timeout_s: 30}\n")
    srv = ServerProc(cfg, KEY)
    srv.start()
    r = httpx.post(srv.base + "/v1/chat/completions", headers=H, timeout=60,
                   json={"model": "up", "messages": [{"role": "user", "content": "warm up"}]})
    assert r.status_code == 200, r.text
    yield srv
    srv.stop()


def content_of(line: str) -> str | None:
    if not line.startswith("data:") or line.strip() == "data: [DONE]":
        return None
    obj = json.loads(line[5:])
    return (obj.get("choices") or [{}])[0].get("delta", {}).get("content") if obj.get("choices") else None


def test_first_chunk_arrives_while_the_upstream_generates(server):
    t0 = time.monotonic()
    first_at, text = None, []
    with httpx.stream("POST", server.base + "/v1/chat/completions", headers=H, timeout=60,
                      json={"model": "up", "stream": True, "messages": [{"role": "user", "content": "stream"}]}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            c = content_of(line)
            if c:
                first_at = first_at or time.monotonic() - t0
                text.append(c)
    total = time.monotonic() - t0
    assert "".join(text).strip() == " ".join(f"w{i}" for i in range(10))
    assert first_at is not None and first_at < total - 1.0  # upstream: first at 0.4 s of 2.0 s


def test_client_leaving_closes_the_upstream_and_others_are_served(server, upstream):
    httpx.post(upstream + "/reset", timeout=5)
    with httpx.stream("POST", server.base + "/v1/chat/completions", headers=H, timeout=60,
                      json={"model": "up", "stream": True, "messages": [{"role": "user", "content": "leave"}]}) as r:
        for line in r.iter_lines():
            if content_of(line):
                break
        left = time.time()
    # the response is closed: the client is gone after its first chunk
    other: dict = {}

    def ask():
        other["r"] = httpx.post(server.base + "/v1/chat/completions", headers=H, timeout=60,
                                json={"model": "up", "messages": [{"role": "user", "content": "meanwhile"}]})

    t = threading.Thread(target=ask)
    t.start()
    calls = []
    for _ in range(100):
        calls = [c for c in httpx.get(upstream + "/stats", timeout=5).json()["calls"].values() if c["disconnected"]]
        if calls:
            break
        time.sleep(0.05)
    t.join(timeout=60)
    assert other["r"].status_code == 200, other["r"].text  # never refused because of the left call
    assert len(calls) == 1
    assert calls[0]["disconnected"] - left < 1.0  # closed long before the upstream's 2.0 s end
