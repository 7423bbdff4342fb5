"""A fake OpenAI-compatible upstream for timing-controlled benchmarks and fault-injection tests.

It is NOT a model: it answers every chat completion after a fixed delay, so gateways can be
compared on the same upstream (composer vs the LiteLLM proxy) and streaming and disconnects can be
timed. A real HTTP server (uvicorn, bare ASGI), on 127.0.0.1 only:

    python -m composer.evals.fake_upstream --port 9000 --delay 0.2 --first-token 0.2 --chunks 8

- POST /v1/chat/completions: non-streamed: the answer after `delay` s; `stream: true`: SSE, the
  first content chunk after `first_token` s, then `chunks - 1` more spread over the rest of
  `delay`, then usage and [DONE]. A prompt containing "FAIL400" gets a 400, "CTX" a 400 with
  code context_length_exceeded, "FAIL503" a 503.
- GET /v1/models; GET /stats: requests, the most in flight at once, and for each request id
  (header x-request-tag, else a counter) when it started, finished, or was disconnected.
- It exits by itself after `--lifetime` seconds (default 900) and with its parent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

STATE = {"requests": 0, "inflight": 0, "max_inflight": 0, "calls": {}}
CFG = {"delay": 0.2, "first_token": None, "chunks": 8}


async def _body(receive) -> bytes:
    data = b""
    while True:
        msg = await receive()
        data += msg.get("body", b"")
        if not msg.get("more_body"):
            return data


async def _send_json(send, status: int, obj) -> None:
    raw = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]})
    await send({"type": "http.response.body", "body": raw})


def _completion(model: str, text: str, prompt_tokens: int) -> dict:
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                      "total_tokens": prompt_tokens + len(text.split())}}


def _chunk(model: str, delta: dict, finish=None, usage=None) -> bytes:
    obj = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else []}
    if usage is not None:
        obj["usage"] = usage
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def _watch_disconnect(receive, flag: asyncio.Event) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            flag.set()
            return


async def chat(scope, receive, send) -> None:
    req = json.loads(await _body(receive) or b"{}")
    headers = dict(scope.get("headers") or [])
    tag = headers.get(b"x-request-tag", b"").decode() or str(STATE["requests"])
    STATE["requests"] += 1
    model = req.get("model", "fake")
    prompt = " ".join(str(m.get("content", "")) for m in req.get("messages", []))
    if "FAIL400" in prompt:
        return await _send_json(send, 400, {"error": {"message": "bad request (injected)", "type": "invalid_request_error"}})
    if "CTX" in prompt:
        return await _send_json(send, 400, {"error": {"message": "This model's maximum context length is 16 tokens",
                                                      "type": "invalid_request_error",
                                                      "code": "context_length_exceeded"}})
    if "FAIL503" in prompt:
        return await _send_json(send, 503, {"error": {"message": "unavailable (injected)", "type": "server_error"}})
    call = STATE["calls"][tag] = {"start": time.time(), "end": None, "disconnected": None}
    STATE["inflight"] += 1
    STATE["max_inflight"] = max(STATE["max_inflight"], STATE["inflight"])
    delay, n = CFG["delay"], max(1, CFG["chunks"])
    first = CFG["first_token"] if CFG["first_token"] is not None else delay / n
    words = [f"w{i}" for i in range(n)]
    try:
        if not req.get("stream"):
            await asyncio.sleep(delay)
            await _send_json(send, 200, _completion(model, " ".join(words), max(1, len(prompt.split()))))
            return
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, gone))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        step = max(0.0, delay - first) / max(1, n - 1)
        for i, w in enumerate(words):
            try:
                await asyncio.wait_for(gone.wait(), first if i == 0 else step)
            except asyncio.TimeoutError:
                pass
            if gone.is_set():
                call["disconnected"] = time.time()
                return
            delta = {"role": "assistant", "content": w} if i == 0 else {"content": " " + w}
            await send({"type": "http.response.body", "body": _chunk(model, delta), "more_body": True})
        await send({"type": "http.response.body", "body": _chunk(model, {}, "stop"), "more_body": True})
        pt = max(1, len(prompt.split()))
        await send({"type": "http.response.body", "more_body": True,
                    "body": _chunk(model, {}, usage={"prompt_tokens": pt, "completion_tokens": n, "total_tokens": pt + n})})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        watcher.cancel()
    finally:
        STATE["inflight"] -= 1
        call["end"] = time.time()


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path, method = scope["path"], scope["method"]
    if path.endswith("/chat/completions") and method == "POST":
        return await chat(scope, receive, send)
    if path.endswith("/models"):
        return await _send_json(send, 200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
    if path == "/stats":
        return await _send_json(send, 200, STATE)
    if path == "/reset" and method == "POST":
        STATE.update(requests=0, inflight=0, max_inflight=0, calls={})
        return await _send_json(send, 200, {"ok": True})
    await _send_json(send, 404, {"error": {"message": f"no route {path}"}})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay", type=float, default=0.2)
    ap.add_argument("--first-token", type=float, default=None)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--lifetime", type=float, default=900.0)
    a = ap.parse_args(argv)
    CFG.update(delay=a.delay, first_token=a.first_token, chunks=a.chunks)
    import uvicorn

    parent = os.getppid()

    async def guard():
        t_end = time.time() + a.lifetime
        while time.time() < t_end and os.getppid() == parent:
            await asyncio.sleep(0.5)
        os._exit(0)

    config = uvicorn.Config(app, host="127.0.0.1", port=a.port, log_level="warning", access_log=False,
                            lifespan="on", backlog=2048, timeout_keep_alive=30)
    server = uvicorn.Server(config)

    async def run():
        asyncio.get_running_loop().create_task(guard())
        await server.serve()

    asyncio.run(run())


if __name__ == "__main__":
    main()
