"""Gateway benchmark: composer serve vs the LiteLLM proxy on the same fake OpenAI upstream.

One run, this machine, the same upstream (evals/fake_upstream.py: a fixed `delay` per answer,
streamed in chunks with the first after `first_token`; a timing-controlled server, not a model)
behind each gateway, and closed-loop clients: each of `c` clients sends its next request as soon as
the previous one is answered, for `seconds` (bounded: at most `max_requests` per level). Printed
and written per gateway and concurrency: p50, p95, requests/s, p50 overhead over the upstream
alone, and, streaming, the time to the first content token.

    composer bench gateway --levels 1,8,32,64 --seconds 8
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from composer.backends.server import free_port
from composer.evals.procs import REPO, Proc

KEY = "sk-bench-gateway"
TARGETS = {"rps_at_64_vs_proxy": ">= 1.0", "rps_at_64_vs_upstream": ">= 0.6",
           "overhead_p50_c1_ms": "<= 10", "overhead_p50_c64_ms": "<= 50", "ttft_c8_over_upstream_ms": "<= 30"}


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))] if xs else float("nan")


async def _closed_loop(url: str, model: str, clients: int, seconds: float, max_requests: int,
                       stream: bool) -> dict:
    lat, ttft, errors = [], [], 0
    sent = 0
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": model, "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 16}
    if stream:
        body["stream"] = True
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        t_end = time.monotonic() + seconds

        async def client():
            nonlocal sent, errors
            while time.monotonic() < t_end and sent < max_requests:
                sent += 1
                t0 = time.monotonic()
                try:
                    if not stream:
                        r = await http.post(url, json=body, headers=headers)
                        ok = r.status_code == 200
                    else:
                        first = None
                        async with http.stream("POST", url, json=body, headers=headers) as r:
                            ok = r.status_code == 200
                            async for line in r.aiter_lines():
                                if first is None and line.startswith("data:") and '"content"' in line \
                                        and '"content":""' not in line.replace(" ", "") \
                                        and '"content":null' not in line.replace(" ", ""):
                                    first = time.monotonic() - t0
                        if first is not None:
                            ttft.append(first)
                except httpx.HTTPError:
                    ok = False
                if ok:
                    lat.append(time.monotonic() - t0)
                else:
                    errors += 1

        t_start = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.monotonic() - t_start
    return {"clients": clients, "requests": len(lat), "errors": errors, "wall_s": wall,
            "rps": len(lat) / wall if wall else 0.0, "p50_ms": 1e3 * _pct(lat, 0.5), "p95_ms": 1e3 * _pct(lat, 0.95),
            "ttft_p50_ms": 1e3 * _pct(ttft, 0.5) if ttft else None}


def measure(url: str, model: str, levels: list[int], seconds: float, max_requests: int, stream_clients: int,
            log=print) -> dict:
    out = {"levels": []}
    # warm-up (imports, connections, first-call setup in the gateway): until two answers in a
    # row come back in under a second, at most 60 s
    t_end, quick = time.monotonic() + 60, 0
    while time.monotonic() < t_end and quick < 2:
        r = asyncio.run(_closed_loop(url, model, 1, 5.0, 1, False))
        quick = quick + 1 if r["requests"] and r["p50_ms"] < 1000 else 0
    for c in levels:
        r = asyncio.run(_closed_loop(url, model, c, seconds, max_requests, False))
        log(f"  c={c}: p50 {r['p50_ms']:.0f} ms, {r['rps']:.1f} req/s, errors {r['errors']}")
        out["levels"].append(r)
    asyncio.run(_closed_loop(url, model, 2, 1.0, 6, True))
    out["stream"] = asyncio.run(_closed_loop(url, model, stream_clients, seconds, max_requests, True))
    log(f"  stream c={stream_clients}: ttft p50 {out['stream']['ttft_p50_ms']:.0f} ms")
    return out


def run_benchmark(*, levels=(1, 8, 32, 64), seconds: float = 8.0, delay: float = 0.2, first_token: float = 0.05,
                  max_requests: int = 4000, stream_clients: int = 8, proxy: bool = True, log=print) -> dict:
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    res = {"setup": {"upstream_delay_s": delay, "first_token_s": first_token, "seconds_per_level": seconds,
                     "levels": list(levels), "cpus": os.cpu_count()}, "targets": TARGETS, "gateways": {}}
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    up_cmd = [sys.executable, "-m", "composer.evals.fake_upstream", "--port", str(up_port), "--delay", str(delay),
              "--first-token", str(first_token), "--chunks", "8", "--lifetime", "3600"]
    with Proc("upstream", up_cmd, upstream + "/v1/models", key=KEY):
        log("upstream alone ...")
        res["gateways"]["upstream"] = measure(upstream + "/v1/chat/completions", "fake", list(levels), seconds,
                                              max_requests, stream_clients, log)
        cfg = tmp / "experts.yaml"
        cfg.write_text("version: 1\nsettings: {default_expert: up}\nexperts:\n"
                       f"  - {{name: up, backend: litellm, model: openai/fake, api_base: \"{upstream}/v1\", "
                       "api_key_env: COMPOSER_API_KEYS, timeout_s: 60}\n")
        port = free_port()
        cmd = [str(Path(sys.executable).with_name("composer")), "serve", "--config", str(cfg), "--port", str(port),
               "--max-inflight", "256"]
        with Proc("composer", cmd, f"http://127.0.0.1:{port}/healthz", key=KEY):
            log("composer serve ...")
            res["gateways"]["composer"] = measure(f"http://127.0.0.1:{port}/v1/chat/completions", "up", list(levels),
                                                  seconds, max_requests, stream_clients, log)
        if proxy:
            pcfg = tmp / "proxy.yaml"
            pcfg.write_text("model_list:\n  - model_name: up\n    litellm_params:\n      model: openai/fake\n"
                            f"      api_base: {upstream}/v1\n      api_key: {KEY}\n"
                            "litellm_settings:\n  num_retries: 0\n  request_timeout: 60\n")
            pport = free_port()
            pcmd = [str(Path(sys.executable).with_name("litellm")), "--config", str(pcfg), "--port", str(pport),
                    "--host", "127.0.0.1", "--num_workers", "1"]
            with Proc("litellm-proxy", pcmd, f"http://127.0.0.1:{pport}/health/liveliness", key=KEY):
                log("LiteLLM proxy ...")
                res["gateways"]["litellm_proxy"] = measure(f"http://127.0.0.1:{pport}/v1/chat/completions", "up",
                                                           list(levels), seconds, max_requests, stream_clients, log)
    res["summary"] = summarize(res)
    return res


def summarize(res: dict) -> dict:
    g = res["gateways"]
    up = {r["clients"]: r for r in g["upstream"]["levels"]}
    out = {}
    for name, m in g.items():
        rows = {}
        for r in m["levels"]:
            c = r["clients"]
            rows[c] = {"rps": round(r["rps"], 1), "p50_ms": round(r["p50_ms"], 1), "p95_ms": round(r["p95_ms"], 1),
                       "overhead_p50_ms": round(r["p50_ms"] - up[c]["p50_ms"], 1),
                       "rps_vs_upstream": round(r["rps"] / up[c]["rps"], 3) if up[c]["rps"] else None,
                       "errors": r["errors"]}
        st = m.get("stream") or {}
        out[name] = {"levels": rows, "stream_ttft_p50_ms": st.get("ttft_p50_ms"),
                     "ttft_over_upstream_ms": (st["ttft_p50_ms"] - g["upstream"]["stream"]["ttft_p50_ms"])
                     if st.get("ttft_p50_ms") is not None else None}
    if "composer" in out and "litellm_proxy" in out:
        top = max(r["clients"] for r in g["composer"]["levels"])
        p = out["litellm_proxy"]["levels"][top]["rps"]
        out["composer_vs_proxy_rps_at_top"] = round(out["composer"]["levels"][top]["rps"] / p, 3) if p else None
    return out


def format_report(res: dict) -> str:
    s = res["summary"]
    lines = [f"same fake upstream ({res['setup']['upstream_delay_s'] * 1e3:.0f} ms per answer, first token "
             f"{res['setup']['first_token_s'] * 1e3:.0f} ms), closed-loop clients, {res['setup']['cpus']} CPUs",
             f"{'gateway':<15}{'c':>4}{'p50 ms':>9}{'p95 ms':>9}{'req/s':>8}{'overhead':>10}{'x upstream':>11}{'err':>5}"]
    for name, m in s.items():
        if not isinstance(m, dict) or "levels" not in m:
            continue
        for c, r in m["levels"].items():
            lines.append(f"{name:<15}{c:>4}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{r['rps']:>8.1f}"
                         f"{r['overhead_p50_ms']:>10.1f}{r['rps_vs_upstream'] or 0:>11.2f}{r['errors']:>5}")
    lines.append("")
    for name, m in s.items():
        if isinstance(m, dict) and m.get("stream_ttft_p50_ms") is not None:
            lines.append(f"stream ttft p50 {name:<15}{m['stream_ttft_p50_ms']:>8.1f} ms"
                         f" ({m['ttft_over_upstream_ms']:+.1f} ms over the upstream)")
    if s.get("composer_vs_proxy_rps_at_top") is not None:
        lines.append(f"composer / LiteLLM proxy req/s at the top level: {s['composer_vs_proxy_rps_at_top']:.2f}")
    return "\n".join(lines)


def main(out: Path, **kw) -> dict:
    res = run_benchmark(**kw)
    print(format_report(res))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    return res
