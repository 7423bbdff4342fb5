"""Bad input -> a 4xx OpenAI error object with a clear message before any model loads (404 for an
unknown model or route); auth -> 401; keys never leak.

One real `composer serve` (Ray Serve on 127.0.0.1) over tests/configs/service.yaml (fake experts,
so "no model loaded" is observable in /metrics), started once for the module.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from serve_proc import REPO, ServerProc

ENV_KEY = "env-key-Zq81-secret-value"
FILE_KEY = "file-key-Wx42-secret-value"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    kf = tmp_path_factory.mktemp("keys") / "keys.txt"
    kf.write_text(f"# composer keys\n{FILE_KEY}\n")
    s = ServerProc(REPO / "tests/configs/service.yaml", ENV_KEY, ["--api-key-file", str(kf), "--max-n", "3"]).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base, timeout=30) as c:
        yield c


AUTH = {"Authorization": f"Bearer {ENV_KEY}"}
MSG = [{"role": "user", "content": "hello"}]

BAD = [
    ("malformed_json", b'{"model": "echo", "messages": [', "malformed JSON"),
    ("not_an_object", b'["echo"]', "must be a JSON object"),
    ("nan", b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
     "NaN is not a JSON number"),
    ("missing_messages", {"model": "echo"}, "required field 'messages' is missing"),
    ("empty_messages", {"model": "echo", "messages": []}, "field 'messages'"),
    ("missing_model", {"messages": MSG}, "required field 'model' is missing"),
    ("deep_json", b'{"model": "echo", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
    ("deep_metadata", {"model": "echo", "messages": MSG, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": json.loads("[" * 80 + "]" * 80)}}]}, "nested too deeply"),
    ("max_tokens_above_context", {"model": "echo", "messages": MSG, "max_tokens": 5000}, "context window 1024"),
    ("max_tokens_pipeline", {"model": "team", "messages": MSG, "max_tokens": 1024}, "context window 1024"),
    ("n_too_large", {"model": "echo", "messages": MSG, "n": 4}, "n=4 is too large"),
    ("temperature_type", {"model": "echo", "messages": MSG, "temperature": "hot"}, "field 'temperature'"),
    ("temperature_range", {"model": "echo", "messages": MSG, "temperature": 9}, "field 'temperature'"),
    ("messages_type", {"model": "echo", "messages": "hello"}, "field 'messages'"),
    ("role_type", {"model": "echo", "messages": [{"role": "wizard", "content": "x"}]}, "field 'messages[0].role'"),
    ("content_type", {"model": "echo", "messages": [{"role": "user", "content": 5}]}, "field 'messages[0].content'"),
    ("part_type", {"model": "echo", "messages": [{"role": "user", "content": [{"type": "video"}]}]},
     "field 'messages[0].content[0].type'"),
    ("tools_shape", {"model": "echo", "messages": MSG, "tools": [{"type": "function"}]},
     "required field 'tools[0].function' is missing"),
    ("tool_name", {"model": "echo", "messages": MSG, "tools": [{"type": "function", "function": {"name": "a b"}}]},
     "field 'tools[0].function.name'"),
    ("tool_choice_without_tools", {"model": "echo", "messages": MSG, "tool_choice": "auto"},
     "'tool_choice' is only allowed when 'tools' are given"),
    ("tool_choice_unknown", {"model": "echo", "messages": MSG, "tools": [
        {"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "g"}}},
     "names function 'g'"),
    ("tool_message_without_id", {"model": "echo", "messages": MSG + [{"role": "tool", "content": "x"}]},
     "needs 'tool_call_id'"),
    ("tool_message_unknown_call", {"model": "echo", "messages": MSG + [
        {"role": "tool", "content": "x", "tool_call_id": "call_9"}]}, "tool call 'call_9'"),
    ("json_schema_missing", {"model": "echo", "messages": MSG, "response_format": {"type": "json_schema"}},
     "needs 'json_schema'"),
    ("response_format_type", {"model": "echo", "messages": MSG, "response_format": {"type": "yaml"}},
     "field 'response_format.type'"),
    ("top_logprobs_alone", {"model": "echo", "messages": MSG, "top_logprobs": 2}, "needs 'logprobs': true"),
    ("top_p_range", {"model": "echo", "messages": MSG, "top_p": 3}, "field 'top_p'"),
    ("router_without_router", {"model": "router-team-0.5", "messages": MSG}, "pipeline 'team' has no router"),
    ("max_tokens_type", {"model": "echo", "messages": MSG, "max_tokens": "many"}, "field 'max_tokens'"),
    ("no_user_message", {"model": "echo", "messages": [{"role": "system", "content": "x"}]}, "'user' message"),
    ("api_base", {"model": "echo", "messages": MSG, "api_base": "http://evil.example"}, "'api_base' is not allowed"),
    ("api_key", {"model": "echo", "messages": MSG, "api_key": "sk-x"}, "'api_key' is not allowed"),
    ("base_url", {"model": "echo", "messages": MSG, "base_url": "http://evil.example"}, "'base_url' is not allowed"),
    ("options", {"model": "echo", "messages": MSG, "options": {"command": "rm"}}, "'options' is not allowed"),
    ("drop_params", {"model": "echo", "messages": MSG, "drop_params": False}, "'drop_params' is not allowed"),
]
NOT_FOUND = [
    ("unknown_model", "POST", "/v1/chat/completions", {"model": "gpt-17", "messages": MSG}, "The model 'gpt-17' does not exist"),
    ("unknown_router", "POST", "/v1/chat/completions", {"model": "router-nope-0.5", "messages": MSG}, "router-nope-0.5"),
    ("completions_model", "POST", "/v1/completions", {"model": "gpt-17", "prompt": "x"}, "The model 'gpt-17'"),
    ("embeddings_model", "POST", "/v1/embeddings", {"model": "echo", "input": "x"}, "does not embed"),
    ("model_by_id", "GET", "/v1/models/gpt-17", None, "The model 'gpt-17' does not exist"),
    ("unknown_route", "GET", "/v1/nothing", None, "no route GET /v1/nothing"),
    ("unknown_post", "POST", "/v2/chat/completions", {"model": "echo"}, "no route POST /v2/chat/completions"),
]


@pytest.mark.parametrize("name,body,expect", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_400_with_a_clear_message(http, name, body, expect):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = http.post("/v1/chat/completions", headers=AUTH, **kw)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert expect in err["message"], err
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize("name,method,path,body,expect", NOT_FOUND, ids=[b[0] for b in NOT_FOUND])
def test_unknown_models_and_routes_are_404_error_objects(http, name, method, path, body, expect):
    r = http.request(method, path, headers=AUTH, json=body)
    assert r.status_code == 404, r.text
    err = r.json()["error"]
    assert expect in err["message"], err
    assert err["type"] == "invalid_request_error"


def test_wrong_method_is_405_error_object(http):
    r = http.get("/v1/chat/completions", headers=AUTH)
    assert r.status_code == 405 and "not allowed" in r.json()["error"]["message"]


COMPLETIONS_BAD = [
    ({"model": "echo"}, "required field 'prompt' is missing"),
    ({"model": "echo", "prompt": [1, 2, 3]}, "field 'prompt"),
    ({"model": "echo", "prompt": "x", "suffix": "y"}, "'suffix'"),
    ({"model": "echo", "prompt": "x", "best_of": 3}, "best_of"),
    ({"model": "echo", "prompt": ["a", "b"], "n": 2}, "too many"),
    ({"model": "echo", "prompt": "x", "logprobs": 9}, "field 'logprobs'"),
]


@pytest.mark.parametrize("body,expect", COMPLETIONS_BAD)
def test_completions_bad_input(http, body, expect):
    r = http.post("/v1/completions", headers=AUTH, json=body)
    assert r.status_code == 400, r.text
    assert expect in r.json()["error"]["message"]


@pytest.mark.parametrize("body,expect", [({"model": "all-minilm-l6-v2"}, "required field 'input' is missing"),
                                         ({"model": "all-minilm-l6-v2", "input": [[1, 2]]}, "field 'input"),
                                         ({"model": "all-minilm-l6-v2", "input": []}, "1 to 2048 texts")])
def test_embeddings_bad_input(http, body, expect):
    r = http.post("/v1/embeddings", headers=AUTH, json=body)
    assert r.status_code == 400, r.text
    assert expect in r.json()["error"]["message"]


def test_route_bad_input(http):
    r = http.post("/v1/route", headers=AUTH, json={"model": "nope", "input": "x"})
    assert r.status_code == 404 and "The model 'nope' does not exist" in r.json()["error"]["message"]
    r = http.post("/v1/route", headers=AUTH, json={"model": "echo"})
    assert r.status_code == 400 and "input" in r.json()["error"]["message"]


def test_predict_bad_input(http):
    r = http.post("/v1/predict", headers=AUTH, json={"task": "credit", "payload": {"age": 30}})
    assert r.status_code == 400 and "no specialist for task='credit'" in r.json()["error"]["message"]
    r = http.post("/v1/predict", headers=AUTH, json={"payload": {}})
    assert r.status_code == 400 and "give 'task' or 'specialist'" in r.json()["error"]["message"]
    r = http.post("/v1/predict", headers=AUTH, json={"task": "credit"})
    assert r.status_code == 400 and "required field 'payload' is missing" in r.json()["error"]["message"]


def test_no_model_was_loaded_by_bad_requests(http):
    metrics = http.get("/metrics", headers=AUTH).text
    loaded = dict(re.findall(r'composer_expert_loaded\{expert="([^"]+)"[^}]*\} ([0-9.]+)', metrics))
    assert set(loaded) == {"echo", "slow", "steady", "flaky"}, metrics[:2000]
    assert all(float(v) == 0 for v in loaded.values()), loaded
    loads = re.findall(r'composer_expert_loads_total\{[^}]*\} ([0-9.]+)', metrics)
    assert all(float(v) == 0 for v in loads), loads


@pytest.mark.parametrize("method,path", [("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
                                         ("POST", "/v1/route"), ("POST", "/v1/predict"), ("GET", "/metrics"),
                                         ("POST", "/v1/completions"), ("POST", "/v1/embeddings"),
                                         ("GET", "/v1/models/echo"), ("GET", "/openapi.json")])
@pytest.mark.parametrize("header", [None, "Bearer wrong-key", f"Basic {ENV_KEY}", "Bearer", ENV_KEY])
def test_every_route_but_probes_needs_a_key(http, method, path, header):
    headers = {"Authorization": header} if header is not None else {}
    r = http.request(method, path, headers=headers, json={"model": "echo", "messages": MSG})
    assert r.status_code == 401, (path, header, r.text)
    assert r.headers["www-authenticate"] == "Bearer"
    assert ENV_KEY not in r.text and "wrong-key" not in r.text


def test_probes_need_no_key(http):
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/health").json() == {"status": "ok"}
    r = http.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] and r.json()["ray"] and r.json()["config_loaded"]


def test_both_key_sources_work(http):
    for key in (ENV_KEY, FILE_KEY):
        r = http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": "echo", "messages": MSG})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "[echo] hello"


def test_keys_never_in_logs(server, http):
    http.get("/v1/models", headers={"Authorization": "Bearer wrong-key"})
    http.get("/v1/models", headers=AUTH)
    texts = [server.output()]
    logs = Path(server.ray_logs or "/nonexistent")
    assert logs.is_dir(), server.ray_logs
    for p in logs.rglob("*"):
        if p.is_file() and p.suffix in (".log", ".out", ".err", ".txt", ".json", ""):
            try:
                texts.append(p.read_text(errors="replace"))
            except OSError:
                continue
    assert len(texts) > 3
    for t in texts:
        assert ENV_KEY not in t and FILE_KEY not in t


def test_unknown_fields_are_ignored_and_reported(http):
    r = http.post("/v1/chat/completions", headers=AUTH,
                  json={"model": "echo", "messages": MSG, "frobnicate": 1, "vendor_x": {"a": 1}})
    assert r.status_code == 200, r.text
    assert r.headers["x-composer-ignored-fields"] == "frobnicate,vendor_x"
    assert r.json()["choices"][0]["message"]["content"] == "[echo] hello"


def test_fields_a_fake_expert_cannot_honour_are_dropped_with_a_header(http):
    r = http.post("/v1/chat/completions", headers=AUTH, json={"model": "echo", "messages": MSG, "top_p": 0.5,
                                                               "presence_penalty": 1, "user": "u"})
    assert r.status_code == 200, r.text
    assert r.headers["x-composer-dropped-params"] == "presence_penalty,top_p"  # `user` needs no warning
    assert r.headers["x-composer-experts"] == "echo"


def test_drop_params_false_refuses_what_an_expert_cannot_honour(tmp_path):
    """In-process (no server): the schema checks against a registry whose expert says drop_params: false."""
    from composer.core import Composer
    from composer.serve.plan import to_queries
    from composer.serve_schema import BadRequest, ChatRequest, validate

    cfg = tmp_path / "e.yaml"
    cfg.write_text("version: 1\nexperts:\n"
                   "  - {name: strict, backend: fake, model: m, options: {drop_params: false}}\n"
                   "  - {name: lax, backend: fake, model: m}\n")
    with Composer.from_yaml(cfg) as c:
        body = {"model": "strict", "messages": MSG, "top_p": 0.5}
        with pytest.raises(BadRequest) as e:
            to_queries(validate(body, ChatRequest), c, 4, "r")
        assert e.value.param == "top_p" and "expert 'strict' cannot honour field 'top_p'" in e.value.message
        plan = to_queries(validate({**body, "model": "lax"}, ChatRequest), c, 4, "r")
        assert plan.dropped == ["top_p"] and plan.queries[0].params == {"top_p": 0.5}
        assert c.loaded_experts() == []


def test_stream_sends_keepalives_while_an_expert_works(http):
    """`steady` takes 1.5 s per batch: the stream opens at once, then SSE comments keep it alive."""
    with http.stream("POST", "/v1/chat/completions", headers=AUTH,
                     json={"model": "steady", "messages": MSG, "stream": True}) as r:
        assert r.status_code == 200
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[0].startswith("data: ") and '"role": "assistant"' in lines[0]
    assert ": keep-alive" in lines, lines
    data = [json.loads(ln[6:]) for ln in lines if ln.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in data if c["choices"])
    assert text == "[steady] hello" and lines[-1] == "data: [DONE]"
    assert r.headers["x-composer-experts"] == "steady"


def test_what_a_litellm_provider_cannot_take_is_known_before_the_call():
    """litellm's table of each provider's OpenAI fields decides what is dropped (in-process)."""
    from composer.backends.params import unsupported
    from composer.config import ExpertSpec

    asked = {"logit_bias": {"1": 1.0}, "tools": [], "presence_penalty": 0.5, "user": "u", "top_p": 0.9}
    claude = ExpertSpec(name="c", backend="litellm", model="anthropic/claude-3-5-sonnet-20240620")
    gpt = ExpertSpec(name="g", backend="litellm", model="openai/gpt-4o-mini")
    local = ExpertSpec(name="l", backend="llamacpp", model="embedded:smollm2-135m-instruct")
    assert unsupported(claude, asked) == ["logit_bias", "presence_penalty"]
    assert unsupported(gpt, asked) == []
    assert unsupported(local, {**asked, "logprobs": True, "modalities": ["text"]}) == ["logprobs", "modalities"]
