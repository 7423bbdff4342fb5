"""composer on a real two-node Ray cluster (127.0.0.1, 1 CPU per node; tests/ray_cluster.py).

Two local llama.cpp experts (SmolLM2, each asking for a whole CPU) must land on different nodes;
`composer serve --ray-address` answers through the cluster; killing one node's raylet mid-run
fails its queries over (or fails them with a clear error): none hangs, none is lost.
"""

from __future__ import annotations

import os
import threading
import time

import httpx
import pytest

from composer.config import parse_config
from composer.core import Composer
from tests.ray_cluster import TwoNodeCluster
from tests.serve_proc import ServerProc

KEY = "sk-cluster-test"


def registry(fallback: bool = False, third: bool = False) -> str:
    fb_a = ", fallbacks: [b]" if fallback else ""
    fb_b = ", fallbacks: [a]" if fallback else ""
    c = ("\n  - {name: c, backend: llamacpp, model: embedded:smollm2-135m-instruct, context_length: 512, timeout_s: 20,"
         "\n     generation: {max_tokens: 8, temperature: 0.0}, options: {num_cpus: 1, n_threads: 1, placement_timeout_s: 40}}"
         if third else "")
    return f"""
version: 1
settings: {{default_expert: a, executor: ray, memory_budget_bytes: 4000000000}}
experts:
  - {{name: a, backend: llamacpp, model: embedded:smollm2-135m-instruct, context_length: 512, timeout_s: 20,
     generation: {{max_tokens: 8, temperature: 0.0}}, options: {{num_cpus: 1, n_threads: 1, placement_timeout_s: 40}}{fb_a}}}
  - {{name: b, backend: llamacpp, model: embedded:smollm2-135m-instruct, context_length: 512, timeout_s: 20,
     generation: {{max_tokens: 8, temperature: 0.0}}, options: {{num_cpus: 1, n_threads: 1, placement_timeout_s: 40}}{fb_b}}}
{c}
pipelines:
  - {{name: both, experts: [a, b], k: 2}}
"""


@pytest.fixture(scope="module")
def cluster():
    with TwoNodeCluster() as c:
        yield c


def test_two_experts_land_on_two_nodes_and_answer(cluster):
    nodes = cluster.node_ids()
    assert set(nodes) == {"node_a", "node_b"} and nodes["node_a"] != nodes["node_b"]
    with Composer(parse_config(registry(), check_files=False), ray_address=cluster.address) as c:
        ans = c.ask("What is 2 + 2?", pipeline="both")
        assert ans.ok and sorted(ans.experts) == ["a", "b"], ans.error
        loads = [e for e in ans.stages[0]["events"] if e["event"] == "load"]
        placed = {e["expert"]: e["node"] for e in loads}
        assert set(placed) == {"a", "b"}
        assert placed["a"] != placed["b"] and set(placed.values()) == set(nodes.values())


def test_a_full_cluster_makes_room_by_unloading_the_least_recently_used(cluster):
    """The memory budget (4 GB) has room for three experts; the cluster (1 CPU per node, each
    expert asks for 1) has room for two. The third is placed by unloading the least recently used
    expert where that frees a node, not left waiting for its placement timeout."""
    with Composer(parse_config(registry(third=True), check_files=False), ray_address=cluster.address) as c:
        assert c.ask("Say hi.", expert="a").ok
        assert c.ask("Say hi.", expert="b").ok
        node_of_a = c.executor.node_of("a")
        t0 = time.monotonic()
        ans = c.ask("Say hi.", expert="c")
        took = time.monotonic() - t0
        assert ans.ok and ans.experts == ["c"], ans.error
        events = ans.stages[0]["events"]
        room = [e for e in events if e["event"] == "unload" and e.get("reason") == "no_room_on_any_node"]
        assert [e["expert"] for e in room] == ["a"]  # the least recently used, and only it
        load = next(e for e in events if e["event"] == "load" and e["expert"] == "c")
        assert load["node"] == node_of_a
        assert c.executor.node_of("a") is None and c.executor.node_of("b") is not None
        assert took < 40, f"c waited {took:.0f}s: placement timed out instead of making room"


def test_an_unset_budget_on_a_cluster_is_the_clusters_memory(cluster):
    """Without settings.memory_budget_bytes, the budget on a cluster is the memory its nodes offer
    to Ray, not the RAM of the host the Composer happens to run on."""
    import ray

    text = registry().replace(", memory_budget_bytes: 4000000000", "")
    with Composer(parse_config(text, check_files=False), ray_address=cluster.address) as c:
        assert c.ask("Say hi.", expert="a").ok
        offered = ray.cluster_resources()["memory"]
        per_node = [n["Resources"].get("memory", 0) for n in ray.nodes() if n["Alive"]]
        assert len(per_node) == 2 and offered == pytest.approx(sum(per_node))
        assert c.executor.scheduler.budget == int(offered)


def test_serve_with_ray_address_answers_through_the_cluster(cluster, tmp_path):
    cfg = tmp_path / "experts.yaml"
    cfg.write_text(registry())
    srv = ServerProc(cfg, KEY, extra=["--ray-address", cluster.address], ready_s=240)
    try:
        srv.start()
        assert "2 node(s)" in srv.output()
        r = httpx.post(srv.base + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=180,
                       json={"model": "a", "messages": [{"role": "user", "content": "Say hi."}]})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]
    finally:
        srv.stop()


def test_losing_a_node_mid_run_fails_over_and_loses_nothing(cluster):
    with Composer(parse_config(registry(fallback=True), check_files=False), ray_address=cluster.address) as c:
        assert c.ask("warm", pipeline="both").ok  # both resident, one per node
        nodes = cluster.node_ids()
        victim_node = nodes["node_b"]
        victim = next(e for e in ("a", "b") if c.executor.node_of(e) == victim_node)
        survivor = "b" if victim == "a" else "a"
        questions = [f"Count to {i}." for i in range(6)]
        out: dict = {}
        t = threading.Thread(target=lambda: out.setdefault("answers", c.run(questions, expert=victim)), daemon=True)
        t.start()
        time.sleep(0.5)  # the batch is on the victim's actor now
        raylet = cluster.raylet_pid(worker=True)
        assert raylet is not None
        os.kill(raylet, 9)
        t.join(timeout=240)
        assert not t.is_alive(), "a query hung after its node died"
        answers = out["answers"]
        assert len(answers) == len(questions)  # none lost
        ok = [a for a in answers if a.ok]
        failed = [a for a in answers if not a.ok]
        print(f"node lost mid-run: {len(ok)} answered ({sum(survivor in a.experts for a in ok)} by the fallback "
              f"'{survivor}'), {len(failed)} failed with an error")
        for a in failed:
            assert a.error and a.call_error is not None  # a clear, typed error
        assert all(a.experts == [survivor] or victim in a.experts for a in ok)
