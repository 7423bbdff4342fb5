"""`composer serve --replicas 2`: two ingress replicas share one owner of the local experts.

A real `composer serve` (Ray Serve on 127.0.0.1) over the embedded SmolLM2: concurrent requests
are spread over both replicas, every one is answered, streaming works through the host, and the
model is loaded once (the lower bound), not once per replica.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.serve_proc import ServerProc

KEY = "sk-replicas-test"
H = {"Authorization": f"Bearer {KEY}"}

REGISTRY = """
version: 1
settings: {default_expert: smollm2}
experts:
  - name: smollm2
    backend: llamacpp
    model: embedded:smollm2-135m-instruct
    context_length: 512
    generation: {max_tokens: 8, temperature: 0.0}
    options: {n_threads: 1}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("replicas") / "experts.yaml"
    cfg.write_text(REGISTRY)
    srv = ServerProc(cfg, KEY, extra=["--replicas", "2"], ready_s=300)
    srv.start()
    yield srv
    srv.stop()


def ask(srv, i: int) -> httpx.Response:
    return httpx.post(srv.base + "/v1/chat/completions", headers=H, timeout=240,
                      json={"model": "smollm2", "messages": [{"role": "user", "content": f"Say the number {i}."}]})


def test_two_replicas_answer_and_load_the_model_once(server):
    assert "2 replica(s)" in server.output()
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda i: ask(server, i), range(12)))
    assert [r.status_code for r in responses] == [200] * 12, [r.text for r in responses if r.status_code != 200]
    replicas, owners = set(), []
    for _ in range(5):  # each probe reaches one replica; concurrent probes spread over both (bounded)
        with ThreadPoolExecutor(8) as pool:
            bodies = list(pool.map(lambda _i: httpx.get(server.base + "/readyz", timeout=60).json(), range(16)))
        replicas |= {b["replica"] for b in bodies}
        owners += [b["local_experts"] for b in bodies]
        if len(replicas) == 2:
            break
    assert len(replicas) == 2
    for o in owners:
        assert o["owner"] == "expert-host" and o["loads"] == {"smollm2": 1}


def test_streaming_through_the_host(server):
    with httpx.stream("POST", server.base + "/v1/chat/completions", headers=H, timeout=240,
                      json={"model": "smollm2", "stream": True,
                            "messages": [{"role": "user", "content": "Name two colours."}]}) as r:
        assert r.status_code == 200
        chunks = [json.loads(line[5:]) for line in r.iter_lines()
                  if line.startswith("data:") and line.strip() != "data: [DONE]"]
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks if c.get("choices")]
    assert len([p for p in pieces if p]) >= 2
