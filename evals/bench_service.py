"""Service benchmark: endpoint overhead, and a fault soak, against a real `composer serve`.

1. Overhead: p50 latency through HTTP (a real `composer serve`: Ray Serve proxy -> replica ->
   Composer) minus p50 of the same request through the SDK's in-process `Composer` (same
   registry, same stream mode), on a fake expert with a fixed 200 ms generation per batch
   (fake on purpose: the generation time must be fixed). 200 sequential requests, then 200
   more from 8 concurrent clients, to the default server (through Ray Serve's proxy) and then
   to one started with `--direct-ingress` (the replica serves the port itself). Target: <= 10 ms.
2. Fault soak: >= 2,000 requests from 8 concurrent clients to three fake experts that each fail
   25 % of calls at random (retryable), falling back to each other, plus one real llama.cpp
   server expert (SmolLM2, managed by composer inside the replica) whose server process is
   SIGKILLed mid-run. Every request must end with a correct answer or a clear error (HTTP status
   plus an error message); a request that hits the client timeout counts as hung, one with no
   HTTP answer at all as lost. Injected failure share comes from the server's /metrics.

`run_benchmark()` returns a dict; `composer bench service` prints it and writes JSON.
"""

from __future__ import annotations

import os
import random
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from composer.backends.server import free_port
from composer.evals.procs import Proc

KEY = "bench-service-key"
TARGET_OVERHEAD_MS = 10.0

OVERHEAD_YAML = """
version: 1
settings: {default_expert: fixed200}
experts:
  - {name: fixed200, backend: fake, model: fixed200, options: {batch_gen_s: 0.2, footprint_bytes: 1000}}
"""

SOAK_YAML = """
version: 1
settings: {default_expert: fa}
experts:
  - {name: fa, backend: fake, model: fa, fallbacks: [fb, fc], options: {fail_rate: 0.25, seed: 1, gen_s: 0.002, footprint_bytes: 1000}}
  - {name: fb, backend: fake, model: fb, fallbacks: [fc, fa], options: {fail_rate: 0.25, seed: 2, gen_s: 0.002, footprint_bytes: 1000}}
  - {name: fc, backend: fake, model: fc, fallbacks: [fa, fb], options: {fail_rate: 0.25, seed: 3, gen_s: 0.002, footprint_bytes: 1000}}
  - name: smol-server
    backend: server
    model: embedded:smollm2-135m-instruct
    context_length: 512
    timeout_s: 20
    fallbacks: [fa, fb]
    generation: {max_tokens: 6, temperature: 0.0}
    options: {ready_timeout_s: 120}
"""


class Server(Proc):
    """A `composer serve` subprocess on 127.0.0.1 that dies with this process (ready when /readyz
    answers 200)."""

    def __init__(self, config: Path, extra: list[str] | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        exe = str(Path(sys.executable).with_name("composer"))
        super().__init__("serve", [exe, "serve", "--config", str(config), "--port", str(self.port),
                                   "--max-inflight", "64", *(extra or [])], self.base + "/readyz", key=KEY,
                         ready_s=180)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _summary(lat_s: list[float]) -> dict:
    ms = [x * 1000 for x in lat_s]
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 2), "p90_ms": round(_pct(ms, 0.9), 2),
            "p99_ms": round(_pct(ms, 0.99), 2), "mean_ms": round(statistics.fmean(ms), 2)}


def _concurrent(fn, clients: int, per_client: int) -> list[float]:
    lat: list[float] = []
    lock = threading.Lock()

    def worker(c):
        for i in range(per_client):
            t0 = time.perf_counter()
            fn(c, i)
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)

    ts = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=600)
    return lat


def bench_overhead(n: int = 200, clients: int = 8, log=print) -> dict:
    from composer.sdk import Composer

    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "overhead.yaml"
        cfg.write_text(OVERHEAD_YAML)
        res: dict = {"expert": "fake fixed200 (batch_gen_s=0.2)", "n": n, "clients": clients}
        log("overhead: in-process Composer (stream mode, as in the server)")
        with Composer.from_yaml(cfg) as c:
            c.stream_mode()
            c.ask("warm up")

            def local(_c, i):
                a = c.ask(f"question {i}")
                assert a.ok, a.error

            res["inproc_sequential"] = _summary(_concurrent(local, 1, n))
            res["inproc_concurrent"] = _summary(_concurrent(local, clients, n // clients))
        for label, extra in (("http", []), ("direct", ["--direct-ingress"])):
            log(f"overhead: HTTP through composer serve {' '.join(extra) or '(Ray Serve proxy)'}")
            res.update(_http_overhead(cfg, extra, label, n, clients))
    for label in ("http", "direct"):
        for mode in ("sequential", "concurrent"):
            over = res[f"{label}_{mode}"]["p50_ms"] - res[f"inproc_{mode}"]["p50_ms"]
            key = "overhead" if label == "http" else "overhead_direct"
            res[f"{key}_{mode}_p50_ms"] = round(over, 2)
            res[f"{key}_{mode}_met"] = over <= TARGET_OVERHEAD_MS
    return res


def _http_overhead(cfg: Path, extra: list[str], label: str, n: int, clients: int) -> dict:
    """Sequential, then concurrent, latency of chat requests to a `composer serve` started with `extra`."""
    import httpx

    res = {}
    with Server(cfg, extra) as srv:
        pool = [httpx.Client(base_url=srv.base, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
                for _ in range(clients)]
        body = lambda i: {"model": "fixed200", "messages": [{"role": "user", "content": f"question {i}"}]}  # noqa: E731

        def remote(ci, i):
            r = pool[ci].post("/v1/chat/completions", json=body(i))
            assert r.status_code == 200, r.text

        for i in range(5):
            remote(0, i)
        res[f"{label}_sequential"] = _summary(_concurrent(remote, 1, n))
        res[f"{label}_concurrent"] = _summary(_concurrent(remote, clients, n // clients))
        for p in pool:
            p.close()
    return res


def _descendants(root: int) -> list[int]:
    parent: dict[int, int] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
                parent[int(p.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out, frontier = [], [root]
    while frontier:
        nxt = [c for c, pp in parent.items() if pp in frontier]
        out += nxt
        frontier = nxt
    return out


def _kill_expert_server(root: int) -> int | None:
    """SIGKILL the llama.cpp server process started under our `composer serve` (ours only)."""
    for pid in _descendants(root):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "llama_cpp.server" in cmd:
            os.kill(pid, signal.SIGKILL)
            return pid
    return None


def _metrics(http) -> dict[tuple[str, str], float]:
    out = {}
    for line in http.get("/metrics").text.splitlines():
        m = re.match(r'(composer_expert_(?:errors|answers)_total)\{(.*)\} ([0-9.e+-]+)$', line)
        if m:
            out[(m.group(1), m.group(2))] = float(m.group(3))
    return out


def bench_soak(n: int = 2000, clients: int = 8, kill_at: int = 600, timeout_s: float = 120.0, seed: int = 0,
               log=print) -> dict:
    import httpx

    experts = ["fa", "fb", "fc", "smol-server"]
    rng = random.Random(seed)
    plan = [rng.choice(experts) for _ in range(n)]
    counts = {"correct": 0, "wrong": 0, "clear_error": 0, "unclear_error": 0, "hung": 0, "lost": 0}
    statuses: dict[str, int] = {}
    errors_seen: dict[str, int] = {}
    done = [0]
    killed: dict = {}
    lock = threading.Lock()
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "soak.yaml"
        cfg.write_text(SOAK_YAML)
        with Server(cfg) as srv:
            http = httpx.Client(base_url=srv.base, headers={"Authorization": f"Bearer {KEY}"}, timeout=timeout_s)
            warm = http.post("/v1/chat/completions", json={"model": "smol-server", "messages": [
                {"role": "user", "content": "hi"}]})
            log(f"soak: server expert warm-up -> HTTP {warm.status_code}")
            next_i = [0]
            t0 = time.perf_counter()

            def worker():
                with httpx.Client(base_url=srv.base, headers={"Authorization": f"Bearer {KEY}"},
                                  timeout=timeout_s) as c:
                    while True:
                        with lock:
                            i = next_i[0]
                            next_i[0] += 1
                            if i == kill_at and not killed:
                                killed["pid"] = _kill_expert_server(srv.proc.pid)
                                killed["at_request"] = i
                                log(f"soak: killed expert server pid {killed['pid']} at request {i}")
                        if i >= n:
                            return
                        q = f"soak question {i}"
                        try:
                            r = c.post("/v1/chat/completions", json={"model": plan[i], "messages": [
                                {"role": "user", "content": q}]})
                        except httpx.TimeoutException:
                            kind = "hung"
                        except httpx.HTTPError as exc:
                            kind = "lost"
                            with lock:
                                errors_seen[type(exc).__name__] = errors_seen.get(type(exc).__name__, 0) + 1
                        else:
                            kind = _judge(r, q)
                            with lock:
                                statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
                                if kind == "clear_error":
                                    msg = re.sub(r"\d+(\.\d+)?", "N", r.json()["error"]["message"])[:160]
                                    errors_seen[msg] = errors_seen.get(msg, 0) + 1
                        with lock:
                            counts[kind] += 1
                            done[0] += 1
                            if done[0] % 500 == 0:
                                log(f"soak: {done[0]}/{n} {counts}")

            ts = [threading.Thread(target=worker) for _ in range(clients)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(timeout=3600)
            wall = time.perf_counter() - t0
            m = _metrics(http)
            http.close()
    failed = sum(v for (k, _), v in m.items() if k == "composer_expert_errors_total")
    answered = sum(v for (k, _), v in m.items() if k == "composer_expert_answers_total")
    res = {"requests": n, "clients": clients, "wall_s": round(wall, 1), "counts": counts,
           "accounted": sum(counts.values()), "http_status": statuses, "errors": dict(sorted(errors_seen.items(), key=lambda kv: -kv[1])[:12]),
           "killed": killed, "expert_calls": int(failed + answered), "expert_failures": int(failed),
           "failure_share": round(failed / max(1, failed + answered), 3),
           "per_expert": {f"{k.split('_')[2]}:{lbl}": v for (k, lbl), v in sorted(m.items())}}
    res["ok"] = (res["accounted"] == n and counts["hung"] == 0 and counts["lost"] == 0 and counts["wrong"] == 0
                 and counts["unclear_error"] == 0 and res["failure_share"] >= 0.2 and bool(killed.get("pid")))
    return res


def _judge(r, q: str) -> str:
    try:
        body = r.json()
    except ValueError:
        return "unclear_error"
    if r.status_code == 200:
        text = body["choices"][0]["message"]["content"]
        expert = body["composer"]["experts"][0][0]
        if expert == "smol-server":
            return "correct" if text.strip() else "wrong"  # a real model: any non-empty answer
        return "correct" if text == f"[{expert}] {q}" else "wrong"
    msg = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
    return "clear_error" if msg else "unclear_error"


def run_benchmark(overhead: bool = True, soak: bool = True, n: int = 200, clients: int = 8,
                  soak_n: int = 2000, kill_at: int = 600, log=print) -> dict:
    out: dict = {"targets": {"overhead_p50_ms": f"<= {TARGET_OVERHEAD_MS}",
                             "soak": "every request answered correctly or with a clear error; none hung/lost"}}
    if overhead:
        out["overhead"] = bench_overhead(n, clients, log)
    if soak:
        out["soak"] = bench_soak(soak_n, clients, kill_at, log=log)
    return out


def format_report(res: dict) -> str:
    lines = []
    o = res.get("overhead")
    if o:
        lines.append("endpoint overhead (fake expert, fixed 200 ms per batch)")
        lines.append(f"{'server':<18}{'mode':<12}{'in-process p50':>16}{'HTTP p50':>12}{'overhead':>12}{'HTTP p90':>12}"
                     "  target <= 10 ms")
        for label, key, name in (("http", "overhead", "via the proxy"), ("direct", "overhead_direct", "--direct-ingress")):
            if f"{label}_sequential" not in o:
                continue
            for mode in ("sequential", "concurrent"):
                i, h = o[f"inproc_{mode}"], o[f"{label}_{mode}"]
                met = "met" if o[f"{key}_{mode}_met"] else "MISSED"
                lines.append(f"{name:<18}{mode:<12}{i['p50_ms']:>14.1f}ms{h['p50_ms']:>10.1f}ms"
                             f"{o[f'{key}_{mode}_p50_ms']:>10.1f}ms{h['p90_ms']:>10.1f}ms  {met}")
    s = res.get("soak")
    if s:
        lines.append("")
        lines.append(f"fault soak: {s['requests']} requests, {s['clients']} clients, {s['wall_s']} s; "
                     f"injected/observed expert failure share {s['failure_share']:.1%} of {s['expert_calls']} calls; "
                     f"killed {s['killed']}")
        lines.append("  " + ", ".join(f"{k}={v}" for k, v in s["counts"].items()) + f"; accounted {s['accounted']}")
        lines.append(f"  HTTP statuses {s['http_status']}; verdict: {'PASS' if s['ok'] else 'FAIL'}")
    return "\n".join(lines)
