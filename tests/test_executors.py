"""LocalExecutor and RayExecutor: same answers with the real SmolLM2/Gemma models, swap
accounting, faults (failed load, over budget, crashed actor, unplaceable actor) and Ctrl-C.

The fake backend appears only for fault injection (load failures, slow calls to crash or
interrupt); answers are compared on the real llama.cpp models. Ray runs once per session with
num_cpus=2 and is always shut down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from composer.backends import make_backend
from composer.config import parse_config
from composer.executors import LocalExecutor
from composer.scheduler import Scheduler, WorkItem
from composer.types import Query
from serve_proc import sigint_as_a_terminal_would

REPO = Path(__file__).resolve().parents[1]

REAL = """
version: 1
experts:
  - {name: smollm2, backend: llamacpp, model: "embedded:smollm2-135m-instruct", context_length: 512,
     generation: {max_tokens: 8, temperature: 0.0}, options: {n_threads: 1}}
  - {name: gemma, backend: llamacpp, model: "embedded:gemma3-270m", chat_format: completion,
     context_length: 512, generation: {max_tokens: 8, temperature: 0.0, stop: ["\\n"]},
     options: {n_threads: 1}}
  - {name: missing, backend: llamacpp, model: /nonexistent/model.gguf, footprint_bytes: 1000}
  - {name: broken, backend: fake, model: fake, options: {fail_load: true}}
  - {name: slow, backend: fake, model: fake, footprint_bytes: 1000000, options: {gen_s: 0.3}}
  - {name: quick, backend: fake, model: fake, footprint_bytes: 1000000}
  - {name: gpu-only, backend: fake, model: fake, options: {num_gpus: 1}}
  - {name: greedy, backend: fake, model: fake, footprint_bytes: 1000000, options: {num_cpus: 2}}
  - {name: wordy, backend: fake, model: fake, footprint_bytes: 1000000,
     options: {gen_s: 4.0, first_token_s: 0.05, reply: "one two three four five six seven eight nine ten"}}
"""


@pytest.fixture(scope="module")
def cfg():
    return parse_config(REAL, check_files=False)  # "missing" must fail at load time, not here


def spec_of(cfg):
    specs = {e.name: e for e in cfg.experts}
    return specs.__getitem__


def local_executor(cfg, budget):
    backends = {e.name: make_backend(e) for e in cfg.experts}
    fp = {n: b.footprint for n, b in backends.items()}
    return LocalExecutor(backends.__getitem__, Scheduler(fp, budget)), backends, fp


def questions(n, prefix="q"):
    texts = ["What is 2+2?", "Name a colour.", "Capital of France?", "Say hello."]
    return [Query(texts[i % len(texts)], id=f"{prefix}{i}", max_tokens=6) for i in range(n)]


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def ray_executor(cfg, fp, budget, **kw):
    from composer.ray_executor import RayExecutor

    return RayExecutor(spec_of(cfg), Scheduler(fp, budget), **kw)


def test_local_and_ray_give_the_same_answers(cfg, ray_session):
    local, backends, fp = local_executor(cfg, None)
    budget = max(fp["smollm2"], fp["gemma"])  # one model at a time: every switch is a swap
    local.scheduler.memory_budget = budget
    qs = questions(2)
    work = [WorkItem(q, e) for q in qs for e in ("smollm2", "gemma")]
    ray_ex = ray_executor(cfg, fp, budget)
    try:
        a = local.run_stage(work)
        b = ray_ex.run_stage(work)
        pids = ray_ex.actor_pids()
    finally:
        local.close()
        ray_ex.close()
    assert all(c.ok for c in a.candidates + b.candidates), [c.error for c in a.candidates + b.candidates]
    assert [c.text for c in a.candidates] == [c.text for c in b.candidates]
    assert any(c.text for c in a.candidates)
    for res in (a, b):
        assert res.loads == res.plan.lower_bound == 2  # one load per expert
        swaps = [e for e in res.events if e["event"] in ("load", "unload")]  # attempts are events too
        assert [e["event"] for e in swaps] == ["load", "unload", "load"]
        assert all(e["seconds"] > 0 for e in swaps)
        assert res.peak_bytes <= budget
    assert set(pids) == {"gemma"} and pids["gemma"] != os.getpid()  # the model lived in an actor
    assert ray_ex.actor_pids() == {}  # close() stopped it


@pytest.mark.parametrize("kind", ["local", "ray"])
def test_failed_load_and_over_budget_fail_only_their_queries(cfg, kind, request):
    local, _, fp = local_executor(cfg, 10**9)
    fp = {**fp, "quick": 10**10}  # larger than the whole budget
    if kind == "ray":
        request.getfixturevalue("ray_session")
        ex = ray_executor(cfg, fp, 10**9)
    else:
        ex = local
        ex.scheduler.footprints = fp
    qs = questions(3)
    work = [WorkItem(q, e) for q in qs for e in ("missing", "broken", "smollm2", "quick")]
    try:
        res = ex.run_stage(work)
    finally:
        ex.close()
    by = {}
    for w, c in zip(work, res.candidates):
        by.setdefault(w.expert, []).append(c)
    assert all(c.ok for c in by["smollm2"])
    assert all("missing" in c.error and "not found" in c.error for c in by["missing"])
    assert all("broken" in c.error and "injected load failure" in c.error for c in by["broken"])
    assert all("memory budget" in c.error and "quick" in c.error for c in by["quick"])
    failed_loads = [e for e in res.events if e["event"] == "load_failed"]
    assert sorted(e["expert"] for e in failed_loads) == ["broken", "missing"]
    assert res.loads == 1


class _MeetingHandler(BaseHTTPRequestHandler):
    """An OpenAI-style endpoint whose calls answer only once `parties` calls are in flight
    together: calls run one after another would break the barrier and come back as HTTP 500."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        try:
            self.server.barrier.wait()
            status = 200
        except threading.BrokenBarrierError:
            status = 500
        text = "met " + body["messages"][-1]["content"]
        data = json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": text}}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data.encode())

    def log_message(self, *args):
        pass


def test_remote_groups_overlap_up_to_their_concurrency(monkeypatch):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _MeetingHandler)
    httpd.barrier = threading.Barrier(3, timeout=60)  # r1 x2 (concurrency 2) + r2 x1, all at once
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    monkeypatch.setenv("MEETING_KEY", "not-needed")
    cfg = parse_config(f"""
version: 1
experts:
  - {{name: r1, backend: litellm, model: openai/stub, api_base: "{base}", api_key_env: MEETING_KEY,
     concurrency: 2, options: {{}}}}
  - {{name: r2, backend: litellm, model: openai/stub, api_base: "{base}", api_key_env: MEETING_KEY}}
  - {{name: quick, backend: fake, model: fake, footprint_bytes: 1000}}
""")
    backends = {e.name: make_backend(e) for e in cfg.experts}
    sched = Scheduler({n: b.footprint for n, b in backends.items()}, 10**6,
                      frozenset(n for n, b in backends.items() if b.remote))
    ex = LocalExecutor(backends.__getitem__, sched)
    qs = questions(3)
    work = [WorkItem(qs[0], "r1"), WorkItem(qs[1], "quick"), WorkItem(qs[1], "r1"), WorkItem(qs[2], "r2")]
    try:
        res = ex.run_stage(work)
        resident = list(ex.resident)
    finally:
        ex.close()
        httpd.shutdown()
    assert all(c.ok for c in res.candidates), [c.error for c in res.candidates]
    assert [c.text.startswith("met") for c in res.candidates] == [True, False, True, True]
    assert res.loads == 1 and [e["expert"] for e in res.events if e["event"] == "load"] == ["quick"]
    assert sorted(e["expert"] for e in res.events if e["event"] == "connect") == ["r1", "r2"]
    assert resident == ["quick"]  # remote experts hold no memory


def test_unplaceable_actor_is_an_error_not_a_hang(cfg, ray_session):
    _, _, fp = local_executor(cfg, None)
    ex = ray_executor(cfg, fp, 10**10, placement_timeout_s=3)
    from composer.ray_executor import ExpertActor

    # someone else's work on the cluster: an actor holding CPUs that this executor cannot unload
    hog = ray_session.remote(num_cpus=1.5)(ExpertActor).remote(spec_of(cfg)("quick"), None)
    try:
        never = ex.run_stage([WorkItem(Query("x", id="a"), "gpu-only")])
        first = ex.run_stage([WorkItem(Query("x", id="b"), "quick")])  # holds 0.5 of 2 CPUs
        assert ray_session.get(hog.ready.remote(), timeout=30)[0] > 0  # holds the other 1.5
        # wants all 2 CPUs: unloading "quick" would free 0.5 only, so nothing is unloaded
        busy = ex.run_stage([WorkItem(Query("y", id="c"), "greedy")])
        assert "quick" in ex.resident
        ray_session.kill(hog)
        for _ in range(100):  # Ray returns a killed actor's CPUs a moment later
            if ray_session.available_resources().get("CPU", 0) >= 1.5:
                break
            time.sleep(0.1)
        # the hog gone, unloading "quick" makes room: greedy is placed at once
        room = ex.run_stage([WorkItem(Query("z", id="d"), "greedy")])
    finally:
        ray_session.kill(hog)
        ex.close()
    assert "never be placed" in never.candidates[0].error and "GPU=1" in never.candidates[0].error
    assert first.candidates[0].ok
    err = busy.candidates[0].error
    assert "greedy" in err and "could not be placed within 3s" in err
    assert room.candidates[0].ok, room.candidates[0].error
    unloads = [e for e in room.events if e["event"] == "unload"]
    assert [(e["expert"], e.get("reason")) for e in unloads] == [("quick", "no_room_on_any_node")]
    assert ex.actor_pids() == {}


def test_crashed_actor_is_restarted_once_and_nothing_is_lost(cfg, ray_session):
    _, _, fp = local_executor(cfg, None)
    ex = ray_executor(cfg, fp, 10**10)
    qs = questions(8)
    try:
        # Between stages: ray.kill the resident actor; the next stage restarts it.
        ex.run_stage([WorkItem(qs[0], "quick")])
        handle, _ = ex._actors["quick"]
        ray_session.kill(handle)
        after_kill = ex.run_stage([WorkItem(q, "quick") for q in qs])

        # Mid-run: SIGKILL the actor's process while its slow batch is in flight.
        killed = []

        def killer():
            # Wait until the batch call is out (not merely the actor started: a kill during its
            # load is a load failure, not the mid-run crash this test is about).
            while "slow" not in ex._inflight or "slow" not in ex.actor_pids():
                time.sleep(0.01)
            time.sleep(0.2)
            pid = ex.actor_pids()["slow"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

        t = threading.Thread(target=killer)
        t.start()
        mid = ex.run_stage([WorkItem(q, "slow") for q in qs])
        t.join()
    finally:
        ex.close()
    for res in (after_kill, mid):
        assert all(c.ok for c in res.candidates), [c.error for c in res.candidates]
        assert [c.query_id for c in res.candidates] == [q.id for q in qs]
        assert sum(e["event"] == "crash" for e in res.events) == 1
        assert any(e["event"] == "load" and e.get("restart") for e in res.events)
    assert killed and mid.events[0]["event"] == "load"


def test_a_second_crash_fails_the_batch_with_a_clear_error(cfg, ray_session):
    _, _, fp = local_executor(cfg, None)
    ex = ray_executor(cfg, fp, 10**10)
    seen = []

    def killer():  # kill the first actor and then its replacement
        while len(seen) < 2:
            pid = ex.actor_pids().get("slow")
            if pid is not None and pid not in seen:
                os.kill(pid, signal.SIGKILL)
                seen.append(pid)
            time.sleep(0.01)

    t = threading.Thread(target=killer)
    t.start()
    try:
        res = ex.run_stage([WorkItem(q, "slow") for q in questions(8)])
    finally:
        t.join()
        ex.close()
    assert all("crashed again after a restart" in c.error and "slow" in c.error for c in res.candidates)
    assert sum(e["event"] == "crash" for e in res.events) == 2


def test_a_ray_actor_streams_tokens_as_they_are_generated(cfg, ray_session):
    """`executor: ray` on the product path (Composer.stream): SmolLM2's tokens leave its actor
    while it generates, not as one piece at the end."""
    from composer.core import Composer
    from composer.types import Answer, Delta

    c = Composer(cfg, executor="ray")
    t0, arrivals = time.perf_counter(), []
    try:
        for item in c.stream(Query("Write a short poem about the sea.", id="poem", max_tokens=32),
                             expert="smollm2"):
            arrivals.append((time.perf_counter() - t0, item))
        pids = c.executor.actor_pids()
    finally:
        c.close()
    answer = arrivals[-1][1]
    deltas = [(t, d) for t, d in arrivals[:-1] if isinstance(d, Delta)]
    assert isinstance(answer, Answer) and answer.ok, answer.error
    assert pids["smollm2"] != os.getpid()  # generated in an actor
    assert "".join(d.text for _, d in deltas) == answer.text
    assert len(deltas) >= 4, [d.text for _, d in deltas]  # one piece per token, not one per answer
    # they arrived over the generation: separate messages, not one burst after it
    gaps = [b - a for (a, _), (b, _) in zip(deltas, deltas[1:])]
    assert sum(g > 0.003 for g in gaps) >= 2, gaps


def test_a_crash_after_streaming_began_fails_clearly_and_is_not_retried(cfg, ray_session):
    """A retry would stream the answer's start a second time: the request ends with a clear error."""
    from composer.core import Composer
    from composer.types import Answer, Delta

    c = Composer(cfg, executor="ray")
    items, killed = [], []
    try:
        for item in c.stream(Query("anything", id="w1", max_tokens=16), expert="wordy"):
            items.append(item)
            if isinstance(item, Delta) and not killed:
                killed.append(c.executor.actor_pids()["wordy"])
                os.kill(killed[0], signal.SIGKILL)
        crashes, restarts = c.events.count("crash", expert="wordy"), c.events.count("load", restart=True)
    finally:
        c.close()
    answer = items[-1]
    assert isinstance(answer, Answer) and not answer.ok
    assert "crashed after part of the answer was streamed" in answer.error, answer.error
    streamed = "".join(d.text for d in items if isinstance(d, Delta))
    assert streamed and "one two three four five six seven eight nine ten".startswith(streamed)
    assert (crashes, restarts) == (1, 0)  # seen, and not retried


CHILD = textwrap.dedent("""
    import sys
    from composer.backends import make_backend
    from composer.config import parse_config
    from composer.executors import LocalExecutor
    from composer.scheduler import Scheduler, WorkItem
    from composer.types import Query

    cfg = parse_config('''
    version: 1
    experts:
      - {name: srv, backend: server, model: "embedded:smollm2-135m-instruct", context_length: 256,
         generation: {max_tokens: 2}}
      - {name: slow, backend: fake, model: fake, footprint_bytes: 1000, options: {gen_s: 120}}
    ''')
    kind = sys.argv[1]
    specs = {e.name: e for e in cfg.experts}
    backends = {n: make_backend(s) for n, s in specs.items()}
    sched = Scheduler({n: b.footprint for n, b in backends.items()}, 10**11)
    if kind == "ray":
        import ray
        ray.init(address=sys.argv[2], log_to_driver=False)
        from composer.ray_executor import RayExecutor
        ex = RayExecutor(specs.__getitem__, sched)
    else:
        ex = LocalExecutor(backends.__getitem__, sched)
    try:
        first = ex.run_stage([WorkItem(Query("hi", id="a"), "srv")])
        assert first.candidates[0].ok, first.candidates[0].error
        if kind == "ray":
            handle, actor_pid = ex._actors["srv"]
            server_pid = ray.get(handle.server_pid.remote(), timeout=30)
        else:
            actor_pid, server_pid = 0, backends["srv"].pid
        print("READY", actor_pid, server_pid, flush=True)
        ex.run_stage([WorkItem(Query("wait", id="b"), "slow")])  # interrupted here
    finally:
        ex.close()
        print("CLOSED", flush=True)
""")


def gone(pid: int, within_s: float = 30.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie waiting for its parent counts as stopped
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("kind", ["local", "ray"])
def test_ctrl_c_stops_every_actor_and_server(kind, request):
    args = [sys.executable, "-c", CHILD, kind]
    if kind == "ray":
        ray = request.getfixturevalue("ray_session")
        args.append(ray.get_runtime_context().gcs_address)
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_as_a_terminal_would)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY"), line + proc.stderr.read()[-2000:]
        _, actor_pid, server_pid = line.split()
        actor_pid, server_pid = int(actor_pid), int(server_pid)
        cmdline = Path(f"/proc/{server_pid}/cmdline").read_bytes()
        assert b"llama_cpp.server" in cmdline
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "CLOSED" in out and "KeyboardInterrupt" in err
    assert proc.returncode != 0
    assert gone(server_pid), f"llama_cpp.server {server_pid} survived Ctrl-C"
    if kind == "ray":
        assert gone(actor_pid), f"actor process {actor_pid} survived Ctrl-C"
