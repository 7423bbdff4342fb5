"""A local fake OpenAI *upstream* for tests of the remote-expert path (a real HTTP server on 127.0.0.1).

composer reaches it through a `litellm` expert (`model: openai/gpt-4o-mini`, `api_base` here), the
way it reaches any OpenAI-compatible provider. It is a fake for the provider only: it answers by
rule so tests can check what composer forwarded: every request body is kept in `requests`.

Rules: a named or required `tool_choice` (or `auto` when the last message is not a tool result)
calls a tool with arguments built from its JSON schema; a `tool` message is answered in text;
`response_format` json_schema/json_object gets JSON matching the schema; otherwise the reply is
"[upstream] <last user text>". `logprobs`, `n`, `stream` and `stream_options.include_usage` are
honoured. Content parts of other types (image_url) are counted in the reply.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from composer.backends.server import free_port


def instance(schema: dict, defs: dict | None = None):
    """A small value valid for a JSON schema (objects, arrays, enums, $ref, anyOf)."""
    defs = defs if defs is not None else schema.get("$defs", schema.get("definitions", {}))
    if "$ref" in schema:
        return instance(defs[schema["$ref"].split("/")[-1]], defs)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return instance(next(s for s in schema[key] if s.get("type") != "null"), defs)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next(k for k in kind if k != "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: instance(v, defs) for k, v in props.items()}
    if kind == "array":
        return [instance(schema.get("items", {"type": "string"}), defs)]
    return {"string": "Paris", "integer": 3, "number": 1.5, "boolean": True, "null": None}[kind]


def _text(content) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    return content or ""


def reply(body: dict) -> tuple[str | None, list[dict] | None]:
    """(content, tool_calls) for a chat request."""
    msgs = body["messages"]
    last = msgs[-1]
    tools = body.get("tools") or []
    choice = body.get("tool_choice", "auto")
    if tools and last["role"] != "tool" and choice != "none":
        if isinstance(choice, dict):
            fn = next(t["function"] for t in tools if t["function"]["name"] == choice["function"]["name"])
        else:
            fn = tools[0]["function"]
        args = instance(fn.get("parameters") or {"type": "object"})
        return None, [{"id": "call_up_1", "type": "function",
                       "function": {"name": fn["name"], "arguments": json.dumps(args)}}]
    if last["role"] == "tool":
        return f"The tool said: {_text(last['content'])}", None
    rf = body.get("response_format") or {}
    if rf.get("type") == "json_schema":
        return json.dumps(instance(rf["json_schema"]["schema"])), None
    if rf.get("type") == "json_object":
        return json.dumps({"answer": "Paris"}), None
    user = [m for m in msgs if m["role"] == "user"][-1]
    others = [p["type"] for p in user["content"] if p.get("type") != "text"] if isinstance(user["content"], list) else []
    extra = f" (+{len(others)} {','.join(others)})" if others else ""
    return f"[upstream] {_text(user['content'])}{extra}", None


def _logprobs(text: str, top: int) -> dict:
    toks = [t + " " for t in (text or "").split(" ")]
    return {"content": [{"token": t, "logprob": -0.1 * (i + 1), "bytes": list(t.encode()),
                         "top_logprobs": [{"token": t, "logprob": -0.1 * (i + 1), "bytes": list(t.encode())},
                                          {"token": "x", "logprob": -5.0, "bytes": [120]}][:top]}
                        for i, t in enumerate(toks)]}


class Upstream:
    def __init__(self):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/v1"
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                with upstream._lock:
                    upstream.requests.append(body)
                if not self.path.endswith("/chat/completions"):
                    self.send_response(404)
                    self.end_headers()
                    return
                content, calls = reply(body)
                if body.get("stream"):
                    self._stream(body, content, calls)
                else:
                    self._json(body, content, calls)

            def _usage(self, body, content, calls):
                pt = sum(len(_text(m.get("content")).split()) for m in body["messages"]) + 1
                ct = len((content or json.dumps(calls)).split())
                return {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}

            def _json(self, body, content, calls):
                n = int(body.get("n") or 1)
                lp = _logprobs(content, int(body.get("top_logprobs") or 0)) if body.get("logprobs") else None
                out = {"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": body["model"],
                       "choices": [{"index": i, "finish_reason": "tool_calls" if calls else "stop", "logprobs": lp,
                                    "message": {"role": "assistant", "content": content, "tool_calls": calls}}
                                   for i in range(n)],
                       "usage": self._usage(body, content, calls)}
                data = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, body, content, calls):
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()

                def send(choices, **extra):
                    ev = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1,
                          "model": body["model"], "choices": choices, **extra}
                    self.wfile.write(f"data: {json.dumps(ev)}\n\n".encode())
                    self.wfile.flush()

                send([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
                if calls:
                    c = calls[0]
                    args = c["function"]["arguments"]
                    send([{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": c["id"], "type": "function",
                                                                 "function": {"name": c["function"]["name"],
                                                                              "arguments": args[:len(args) // 2]}}]},
                           "finish_reason": None}])
                    send([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {
                        "arguments": args[len(args) // 2:]}}]}, "finish_reason": None}])
                else:
                    words = content.split(" ")
                    for i, w in enumerate(words):
                        send([{"index": 0, "delta": {"content": w + (" " if i < len(words) - 1 else "")},
                               "finish_reason": None}])
                send([{"index": 0, "delta": {}, "finish_reason": "tool_calls" if calls else "stop"}])
                if (body.get("stream_options") or {}).get("include_usage"):
                    send([], usage=self._usage(body, content, calls))
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-upstream", daemon=True)

    def start(self) -> "Upstream":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def last(self) -> dict:
        with self._lock:
            return self.requests[-1]
