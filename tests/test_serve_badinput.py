"""Bad input -> 400 with a clear message before any model loads; auth -> 401; keys never leak.

One real `composer serve` (Ray Serve on 127.0.0.1) over tests/configs/service.yaml (fake experts,
so "no model loaded" is observable in /metrics), started once for the module.
"""

from __future__ import annotations

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
    ("missing_messages", {"model": "echo"}, "required field 'messages' is missing"),
    ("empty_messages", {"model": "echo", "messages": []}, "field 'messages'"),
    ("missing_model", {"messages": MSG}, "required field 'model' is missing"),
    ("unknown_model", {"model": "gpt-17", "messages": MSG}, "unknown model 'gpt-17'"),
    ("max_tokens_above_context", {"model": "echo", "messages": MSG, "max_tokens": 5000}, "context window 1024"),
    ("max_tokens_pipeline", {"model": "team", "messages": MSG, "max_tokens": 1024}, "context window 1024"),
    ("n_too_large", {"model": "echo", "messages": MSG, "n": 4}, "n=4 is too large"),
    ("temperature_type", {"model": "echo", "messages": MSG, "temperature": "hot"}, "field 'temperature'"),
    ("temperature_range", {"model": "echo", "messages": MSG, "temperature": 9}, "field 'temperature'"),
    ("messages_type", {"model": "echo", "messages": "hello"}, "field 'messages'"),
    ("role_type", {"model": "echo", "messages": [{"role": "wizard", "content": "x"}]}, "field 'messages.0.role'"),
    ("max_tokens_type", {"model": "echo", "messages": MSG, "max_tokens": "many"}, "field 'max_tokens'"),
    ("no_user_message", {"model": "echo", "messages": [{"role": "system", "content": "x"}]}, "'user' message"),
    ("api_base", {"model": "echo", "messages": MSG, "api_base": "http://evil.example"}, "'api_base' is not allowed"),
    ("api_key", {"model": "echo", "messages": MSG, "api_key": "sk-x"}, "'api_key' is not allowed"),
    ("base_url", {"model": "echo", "messages": MSG, "base_url": "http://evil.example"}, "'base_url' is not allowed"),
    ("options", {"model": "echo", "messages": MSG, "options": {"command": "rm"}}, "'options' is not allowed"),
    ("unknown_field", {"model": "echo", "messages": MSG, "frobnicate": 1}, "unknown field 'frobnicate'"),
]


@pytest.mark.parametrize("name,body,expect", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_400_with_a_clear_message(http, name, body, expect):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = http.post("/v1/chat/completions", headers=AUTH, **kw)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert expect in err["message"], err
    assert err["type"] == "invalid_request_error"


def test_route_bad_input(http):
    r = http.post("/v1/route", headers=AUTH, json={"model": "nope", "input": "x"})
    assert r.status_code == 400 and "unknown model" in r.json()["error"]["message"]
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
    loads = dict(re.findall(r'composer_expert_loads\{expert="([^"]+)"\} ([0-9.]+)', metrics))
    assert set(loads) == {"echo", "slow", "steady", "flaky"}
    assert all(float(v) == 0 for v in loads.values()), loads


@pytest.mark.parametrize("method,path", [("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
                                         ("POST", "/v1/route"), ("POST", "/v1/predict"), ("GET", "/metrics")])
@pytest.mark.parametrize("header", [None, "Bearer wrong-key", f"Basic {ENV_KEY}", "Bearer", ENV_KEY])
def test_every_route_but_probes_needs_a_key(http, method, path, header):
    headers = {"Authorization": header} if header is not None else {}
    r = http.request(method, path, headers=headers, json={"model": "echo", "messages": MSG})
    assert r.status_code == 401, (path, header, r.text)
    assert r.headers["www-authenticate"] == "Bearer"
    assert ENV_KEY not in r.text and "wrong-key" not in r.text


def test_probes_need_no_key(http):
    assert http.get("/healthz").json() == {"status": "ok"}
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
