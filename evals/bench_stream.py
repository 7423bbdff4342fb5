"""Streaming benchmark: time to first token and disconnect, composer vs the expert on its own.

Side by side in one run on this machine:
1. SmolLM2-135M (llama.cpp): llama-cpp-python's own streamed first token (the same GGUF, threads
   and context) vs composer in-process (Composer.stream) vs composer over HTTP (composer serve);
   with `ray`, also composer with the expert in a Ray actor (executor: ray, tokens streamed out of
   the actor).
2. A timing-controlled OpenAI-compatible upstream (evals/fake_upstream.py; first token at
   `first_token` s): the upstream alone vs through composer serve.
3. Disconnect: a client leaves after the first chunk; how long until the upstream sees its request
   closed, and whether a concurrent request to the same expert is served.

    composer bench stream --runs 7
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

from composer.evals.bench_gateway import KEY
from composer.evals.procs import REPO, Proc
from composer.backends.server import free_port

PROMPT = "Name three colours."


def prompt(i: int) -> str:
    """A different prompt each run: llama.cpp reuses the KV cache (and logits) of a repeated
    prompt, which would make a first token free and the comparison meaningless."""
    return f"{PROMPT} (Question {i}.)"
H = {"Authorization": f"Bearer {KEY}"}


def _ttft_sse(url: str, model: str, text: str = PROMPT, max_tokens: int = 16) -> float:
    t0 = time.monotonic()
    with httpx.stream("POST", url, headers=H, timeout=120, json={
            "model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": text}]}) as r:
        seen = []
        for line in r.iter_lines():
            seen.append(line)
            if line.startswith("data:") and line.strip() != "data: [DONE]":
                obj = json.loads(line[5:])
                ch = obj.get("choices") or []
                if ch and ch[0].get("delta", {}).get("content"):
                    return time.monotonic() - t0
    print(f"no content from {url} (HTTP {r.status_code}): {' | '.join(seen)[:500]}", file=sys.stderr)
    return float("nan")


class LlamaOwn:
    """llama-cpp-python on its own: the same GGUF, threads and context as the `smollm2` expert."""

    def __init__(self):
        from llama_cpp import Llama

        from composer.backends.llamacpp import _default_threads
        from composer.config import load_config
        from composer.models import resolve_model_path

        spec = next(e for e in load_config(REPO / "experts.yaml").experts if e.name == "smollm2")
        self.llm = Llama(model_path=str(resolve_model_path(spec.model)), n_ctx=spec.context_length,
                         n_threads=int(spec.options.get("n_threads", _default_threads())), verbose=False)

    def ttft(self, i: int) -> float:
        t0 = time.monotonic()
        for chunk in self.llm.create_chat_completion(messages=[{"role": "user", "content": prompt(i)}],
                                                     max_tokens=16, temperature=0.0, top_p=1.0, stream=True):
            if chunk["choices"][0].get("delta", {}).get("content"):
                return time.monotonic() - t0
        return float("nan")

    def close(self) -> None:
        self.llm.close()


def inprocess_ttft(c, i: int) -> float:
    from composer.types import Delta, Query

    t0 = time.monotonic()
    for item in c.stream(Query(prompt(i), max_tokens=16, temperature=0.0), expert="smollm2"):
        if isinstance(item, Delta) and item.text:
            return time.monotonic() - t0
    return float("nan")


def run_benchmark(*, runs: int = 7, first_token: float = 0.2, delay: float = 2.0, ray: bool = True,
                  log=print) -> dict:
    import os

    res: dict = {"runs": runs, "cpus": os.cpu_count()}
    from composer.core import Composer

    def alternating(executor: str | None, first: int) -> tuple[list[float], list[float]]:
        """llama.cpp on its own and composer, turn about; run 0 of each pays the page-in of the
        weights and is dropped."""
        own, comp = [], []
        with Composer.from_yaml(REPO / "experts.yaml", executor=executor) as c:
            for i in range(first, first + runs + 1):
                own.append(own_llm.ttft(i))
                comp.append(inprocess_ttft(c, i))
        return own[1:], comp[1:]

    log("llama.cpp on its own vs composer in-process (alternating runs) ...")
    own_llm = LlamaOwn()
    own, inproc = alternating(None, 0)  # the registry's own executor
    own2: list[float] = []
    if ray:
        log("llama.cpp on its own vs composer with the expert in a Ray actor (alternating runs) ...")
        own_r, in_actor = alternating("ray", 200)
        res["smollm2_ray_actor"] = {"llama_cpp_own_ms": 1e3 * statistics.median(own_r),
                                    "composer_ray_actor_ms": 1e3 * statistics.median(in_actor),
                                    "ray_actor_over_own": statistics.median(in_actor) / statistics.median(own_r)}
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    up_cmd = [sys.executable, "-m", "composer.evals.fake_upstream", "--port", str(up_port), "--delay", str(delay),
              "--first-token", str(first_token), "--chunks", "10", "--lifetime", "1800"]
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    cfg = tmp / "experts.yaml"
    base_cfg = (REPO / "experts.yaml").read_text()
    cfg.write_text(base_cfg.rstrip() + "\n")  # the default registry (smollm2) ...
    extra = tmp / "remote.yaml"
    extra.write_text("version: 1\nsettings: {default_expert: up}\nexperts:\n"
                     f"  - {{name: up, backend: litellm, model: openai/fake, api_base: \"{upstream}/v1\", "
                     "api_key_env: COMPOSER_API_KEYS, timeout_s: 60}\n")
    with Proc("upstream", up_cmd, upstream + "/v1/models", key=KEY):
        port, port2 = free_port(), free_port()
        exe = str(Path(sys.executable).with_name("composer"))
        with Proc("composer-smollm2", [exe, "serve", "--config", str(REPO / "experts.yaml"), "--port", str(port)],
                  f"http://127.0.0.1:{port}/healthz", key=KEY):
            log("llama.cpp on its own vs composer over HTTP (alternating runs) ...")
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            http_smol = []
            for i in range(100, 101 + runs):
                own2.append(own_llm.ttft(i))
                http_smol.append(_ttft_sse(url, "smollm2", prompt(i)))
            own2, http_smol = own2[1:], http_smol[1:]
            own_llm.close()
        with Proc("composer-remote", [exe, "serve", "--config", str(extra), "--port", str(port2)],
                  f"http://127.0.0.1:{port2}/healthz", key=KEY):
            url2 = f"http://127.0.0.1:{port2}/v1/chat/completions"
            log("fake upstream alone vs through composer ...")
            alone, through = [], []
            for _ in range(runs + 1):  # alternate, so drift in the machine's load hits both
                alone.append(_ttft_sse(upstream + "/v1/chat/completions", "fake"))
                through.append(_ttft_sse(url2, "up"))
            alone, through = alone[1:], through[1:]
            log("disconnect after the first chunk ...")
            gaps, served = [], []
            for _ in range(max(3, runs // 2)):
                httpx.post(upstream + "/reset", timeout=5)
                with httpx.stream("POST", url2, headers=H, timeout=60, json={
                        "model": "up", "stream": True, "messages": [{"role": "user", "content": "leave"}]}) as r:
                    for line in r.iter_lines():
                        if '"content"' in line and '"content":""' not in line.replace(" ", ""):
                            break
                    left = time.time()
                box = {}
                t = threading.Thread(target=lambda: box.setdefault("r", httpx.post(url2, headers=H, timeout=60, json={
                    "model": "up", "messages": [{"role": "user", "content": "meanwhile"}]})))
                t.start()
                gap = None
                for _ in range(200):
                    calls = [c for c in httpx.get(upstream + "/stats", timeout=5).json()["calls"].values()
                             if c["disconnected"]]
                    if calls:
                        gap = calls[0]["disconnected"] - left
                        break
                    time.sleep(0.01)
                t.join(timeout=60)
                gaps.append(gap)
                served.append(box.get("r") is not None and box["r"].status_code == 200)

    def med(xs):
        xs = [x for x in xs if x is not None and x == x]
        return statistics.median(xs) if xs else None

    res["smollm2"] = {"llama_cpp_own_ms": 1e3 * med(own), "composer_inprocess_ms": 1e3 * med(inproc),
                      "composer_http_ms": 1e3 * med(http_smol)}
    res["smollm2"]["inprocess_over_own"] = med(inproc) / med(own)
    res["smollm2"]["llama_cpp_own_http_runs_ms"] = 1e3 * med(own2)
    res["smollm2"]["http_over_own"] = med(http_smol) / med(own2)
    res["upstream"] = {"first_token_s": first_token, "alone_ms": 1e3 * med(alone), "through_composer_ms": 1e3 * med(through),
                       "overhead_ms": 1e3 * (med(through) - med(alone))}
    res["disconnect"] = {"upstream_closed_after_ms": [None if g is None else round(1e3 * g, 1) for g in gaps],
                         "median_ms": None if med(gaps) is None else 1e3 * med(gaps),
                         "concurrent_request_served": all(served)}
    res["targets"] = {"upstream_overhead_ms": "<= 30", "smollm2_http_over_own": "<= 1.2",
                      "disconnect_ms": "<= 100"}
    return res


def format_report(r: dict) -> str:
    s, u, d = r["smollm2"], r["upstream"], r["disconnect"]
    return "\n".join([
        f"time to first content token, median of {r['runs']} runs ({r['cpus']} CPUs)",
        f"SmolLM2 llama.cpp on its own   {s['llama_cpp_own_ms']:8.1f} ms",
        f"SmolLM2 composer in-process    {s['composer_inprocess_ms']:8.1f} ms  ({s['inprocess_over_own']:.2f}x)",
        *([f"SmolLM2 llama.cpp on its own   {r['smollm2_ray_actor']['llama_cpp_own_ms']:8.1f} ms  (runs beside the Ray ones)",
           f"SmolLM2 composer, Ray actor    {r['smollm2_ray_actor']['composer_ray_actor_ms']:8.1f} ms  "
           f"({r['smollm2_ray_actor']['ray_actor_over_own']:.2f}x)"] if "smollm2_ray_actor" in r else []),
        f"SmolLM2 llama.cpp on its own   {s['llama_cpp_own_http_runs_ms']:8.1f} ms  (runs beside the HTTP ones)",
        f"SmolLM2 composer over HTTP     {s['composer_http_ms']:8.1f} ms  ({s['http_over_own']:.2f}x)",
        f"fake upstream on its own       {u['alone_ms']:8.1f} ms",
        f"fake upstream through composer {u['through_composer_ms']:8.1f} ms  ({u['overhead_ms']:+.1f} ms)",
        f"disconnect -> upstream closed  {d['median_ms'] if d['median_ms'] is not None else float('nan'):8.1f} ms "
        f"(runs: {d['upstream_closed_after_ms']}); concurrent request served: {d['concurrent_request_served']}",
    ])
