"""Property-based fuzz of the request schema against a real `composer serve` (fake experts of
tests/configs/service.yaml, so valid requests answer in milliseconds): bodies of any shape, from
near-valid chat/completions requests with wrong types in every field to arbitrary JSON and bytes,
get either a 2xx or a 4xx OpenAI error object, never a 5xx; /healthz stays healthy after.
"""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_proc import REPO, ServerProc

KEY = "fuzz-key-3c9a"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def http():
    s = ServerProc(REPO / "tests/configs/service.yaml", KEY, ["--max-n", "3"]).start()
    with httpx.Client(base_url=s.base, timeout=60) as c:
        yield c
    s.stop()


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(),
                    st.text(max_size=20))
anything = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                        max_leaves=12)


def maybe(valid):
    """Mostly a valid value for a field, sometimes anything at all."""
    return st.one_of(valid, valid, anything)


roles = st.sampled_from(["system", "user", "assistant", "developer", "tool", "function", "wizard"])
part = st.one_of(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=30)}),
                 st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.fixed_dictionaries(
                     {"url": st.text(max_size=20)})}), anything)
content = st.one_of(st.text(max_size=40), st.lists(part, max_size=3), st.none(), anything)
tool_call = st.fixed_dictionaries({"id": maybe(st.text(min_size=1, max_size=8)), "type": st.just("function"),
                                   "function": st.fixed_dictionaries({"name": maybe(st.text(max_size=8)),
                                                                      "arguments": maybe(st.text(max_size=20))})})
message = st.fixed_dictionaries({"role": roles, "content": content},
                                optional={"name": maybe(st.text(max_size=8)),
                                          "tool_calls": maybe(st.lists(tool_call, max_size=2)),
                                          "tool_call_id": maybe(st.text(max_size=8))})
tool = st.fixed_dictionaries({"type": maybe(st.just("function")), "function": st.fixed_dictionaries(
    {"name": maybe(st.from_regex(r"[a-z_]{1,10}", fullmatch=True))},
    optional={"parameters": maybe(st.just({"type": "object", "properties": {"x": {"type": "string"}}})),
              "description": st.text(max_size=10)})})
model = st.sampled_from(["echo", "team", "default", "flaky", "nope", "router-team-0.5", "router-x-1", ""])
chat_fields = {
    "max_tokens": maybe(st.integers(-5, 5000)), "max_completion_tokens": maybe(st.integers(-5, 5000)),
    "temperature": maybe(st.floats(-1, 3, allow_nan=False)), "top_p": maybe(st.floats(-1, 2, allow_nan=False)),
    "presence_penalty": maybe(st.floats(-3, 3, allow_nan=False)),
    "frequency_penalty": maybe(st.floats(-3, 3, allow_nan=False)),
    "logit_bias": maybe(st.dictionaries(st.text(max_size=5), st.floats(-100, 100, allow_nan=False), max_size=3)),
    "logprobs": maybe(st.booleans()), "top_logprobs": maybe(st.integers(-2, 30)),
    "stop": maybe(st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=4))),
    "seed": maybe(st.integers(-2**70, 2**70)), "n": maybe(st.integers(-1, 6)), "stream": maybe(st.booleans()),
    "stream_options": maybe(st.fixed_dictionaries({"include_usage": st.booleans()})),
    "user": maybe(st.text(max_size=10)), "metadata": maybe(st.dictionaries(st.text(max_size=5), st.text(max_size=5))),
    "tools": maybe(st.lists(tool, max_size=3)),
    "tool_choice": maybe(st.one_of(st.sampled_from(["none", "auto", "required"]),
                                   st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
                                       {"name": st.from_regex(r"[a-z_]{1,10}", fullmatch=True)})}))),
    "parallel_tool_calls": maybe(st.booleans()),
    "response_format": maybe(st.one_of(
        st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])}),
        st.fixed_dictionaries({"type": st.just("json_schema"), "json_schema": st.fixed_dictionaries(
            {"name": maybe(st.from_regex(r"[a-z]{1,8}", fullmatch=True)),
             "schema": maybe(st.just({"type": "object"}))})}))),
    "task": maybe(st.text(max_size=8)), "frobnicate": anything, "api_base": st.text(max_size=5),
}
chat_body = st.fixed_dictionaries({"model": maybe(model), "messages": maybe(st.lists(message, min_size=0, max_size=4))},
                                  optional=chat_fields)
# Valid requests (with unknown extra fields), so the fuzz reaches the answering paths too.
text_part = st.fixed_dictionaries({"type": st.just("text"), "text": st.text(min_size=1, max_size=30)})
user_message = st.fixed_dictionaries({"role": st.just("user"), "content": st.one_of(
    st.text(min_size=1, max_size=40), st.lists(text_part, min_size=1, max_size=2))})
other_message = st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "assistant"]),
                                       "content": st.text(max_size=30)})
valid_tool = st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": st.from_regex(r"[a-z_]{1,10}", fullmatch=True)},
    optional={"parameters": st.just({"type": "object", "properties": {"x": {"type": "string"}}})})})
valid_fields = {
    "max_tokens": st.integers(1, 500), "temperature": st.floats(0, 2), "top_p": st.floats(0, 1),
    "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2),
    "logit_bias": st.dictionaries(st.from_regex(r"[0-9]{1,5}", fullmatch=True), st.floats(-100, 100), max_size=3),
    "seed": st.integers(-2**31, 2**31), "n": st.integers(1, 3), "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}), "user": st.text(max_size=10),
    "metadata": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    "stop": st.one_of(st.text(min_size=1, max_size=5), st.lists(st.text(min_size=1, max_size=5), max_size=4)),
    "tools": st.lists(valid_tool, min_size=1, max_size=2), "parallel_tool_calls": st.booleans(),
    "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}, {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object"}}}]),
    "task": st.text(max_size=8), "vendor_extension": anything,
}
valid_chat = st.fixed_dictionaries({"model": st.sampled_from(["echo", "team", "default", "flaky"]),
                                    "messages": st.tuples(st.lists(other_message, max_size=2), user_message).map(
                                        lambda t: t[0] + [t[1]])}, optional=valid_fields)
completion_body = st.fixed_dictionaries({"model": maybe(model), "prompt": maybe(st.one_of(
    st.text(max_size=30), st.lists(st.text(max_size=10), max_size=3)))}, optional={
    k: chat_fields[k] for k in ("max_tokens", "temperature", "top_p", "n", "stream", "stop", "seed", "user")} | {
    "echo": maybe(st.booleans()), "logprobs": maybe(st.integers(-1, 7)), "best_of": maybe(st.integers(-1, 4)),
    "suffix": maybe(st.text(max_size=3))})


def post(http, path: str, body) -> httpx.Response:
    # json.dumps writes NaN/Infinity as Python does (not JSON): the server must refuse them with a 400
    return http.post(path, headers={**AUTH, "content-type": "application/json"}, content=json.dumps(body).encode())


SEEN: Counter = Counter()  # statuses met, so the last test can show the fuzz reached both sides


def check(r: httpx.Response) -> None:
    SEEN[r.status_code] += 1
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        err = r.json()["error"]
        assert err["message"] and err["type"] == "invalid_request_error", err
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.rstrip().endswith("data: [DONE]"), r.text[-300:]
        assert '"error"' not in r.text or '"expert_unavailable"' in r.text, r.text[-300:]


FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@FUZZ
@given(body=st.one_of(valid_chat, chat_body))
def test_chat_bodies_never_5xx(http, body):
    check(post(http, "/v1/chat/completions", body))


@FUZZ
@given(body=st.one_of(completion_body, st.fixed_dictionaries(
    {"model": st.sampled_from(["echo", "team"]), "prompt": st.text(min_size=1, max_size=20).filter(str.strip)},
    optional={k: valid_fields[k] for k in ("max_tokens", "temperature", "top_p", "stream", "stop", "seed")}
    | {"echo": st.booleans()})))
def test_completion_bodies_never_5xx(http, body):
    check(post(http, "/v1/completions", body))


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(st.binary(max_size=200), anything.map(lambda v: json.dumps(v).encode()),
                     st.integers(1, 20000).map(lambda d: b'{"model": "echo", "messages": ' + b"[" * d + b"]" * d + b"}"),
                     st.integers(1, 20000).map(lambda d: b'{"a":' * d + b"1" + b"}" * d),
                     st.sampled_from([b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], '
                                      b'"temperature": NaN}', b'{"model": "echo", "messages": [], "n": Infinity}'])),
       path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/route",
                             "/v1/predict"]))
def test_raw_bodies_never_5xx(http, raw, path):
    r = http.post(path, headers={**AUTH, "content-type": "application/json"}, content=raw)
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert r.json()["error"]["message"]


def test_server_healthy_after_fuzzing(http):
    assert SEEN[200] >= 20 and sum(v for k, v in SEEN.items() if 400 <= k < 500) >= 100, SEEN
    assert http.get("/healthz").json() == {"status": "ok"}
    r = http.post("/v1/chat/completions", headers=AUTH, json={"model": "echo", "messages": [
        {"role": "user", "content": "still here"}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "[echo] still here"
