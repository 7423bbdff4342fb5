"""`composer serve` on the embedded default registry (experts.yaml: SmolLM2 through llama.cpp),
reached by the official `openai` client and by `litellm`, streamed and not, plus curl-style
calls to /v1/models and /v1/route. One real server process for the module."""

from __future__ import annotations

import httpx
import pytest

from serve_proc import REPO, ServerProc

KEY = "real-model-key-5d1c"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def server():
    s = ServerProc(REPO / "experts.yaml", KEY).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def oai(server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.base}/v1", api_key=KEY, max_retries=0, timeout=300)
    yield client
    client.close()


def test_openai_client_non_streaming(oai):
    r = oai.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=16, temperature=0)
    text = r.choices[0].message.content
    assert "paris" in text.lower(), text
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model == "smollm2" and r.choices[0].finish_reason in ("stop", "length")


def test_openai_client_streaming(oai):
    stream = oai.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=16, temperature=0,
                                         stream=True, stream_options={"include_usage": True})
    pieces, usage = [], None
    for ev in stream:
        if ev.choices:
            pieces.append(ev.choices[0].delta.content or "")
        if ev.usage is not None:
            usage = ev.usage
    assert len(pieces) >= 2
    assert "paris" in "".join(pieces).lower()
    assert usage is not None and usage.completion_tokens > 0


def test_openai_client_errors_are_clear(oai):
    import openai

    with pytest.raises(openai.NotFoundError) as e:
        oai.chat.completions.create(model="no-such-model", messages=QUESTION)
    assert "The model 'no-such-model' does not exist" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=4096)
    assert e.value.body["code"] == "context_length_exceeded" and e.value.body["param"] == "max_tokens"
    from openai import OpenAI

    with OpenAI(base_url=oai.base_url, api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


def test_models_lists_experts(oai):
    ids = {m.id for m in oai.models.list()}
    assert {"smollm2", "gemma3-270m", "smollm2-server"} <= ids


def test_litellm_non_streaming_and_streaming(server):
    import litellm

    kw = dict(model="openai/smollm2", api_base=f"{server.base}/v1", api_key=KEY, messages=QUESTION,
              max_tokens=16, temperature=0, num_retries=0, timeout=300)
    r = litellm.completion(**kw)
    assert "paris" in r.choices[0].message.content.lower()
    assert r.usage.completion_tokens > 0
    chunks = list(litellm.completion(stream=True, **kw))
    text = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
    assert "paris" in text.lower(), text


def test_route_endpoint_explains_without_generating(server):
    with httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        r = c.post("/v1/route", json={"model": "default", "input": ["hi", "there"]})
        assert r.status_code == 200, r.text
        ds = r.json()["decisions"]
        assert [d["experts"] for d in ds] == [["smollm2"], ["smollm2"]]
        assert ds[0]["reason"] == "registry default expert"
        m = c.get("/metrics").text
        assert [ln for ln in m.splitlines() if ln.startswith('composer_expert_loads_total{expert="gemma3-270m",replica="')
                and ln.endswith("} 0.0")]  # routing loaded nothing
        assert 'composer_tokens_total{expert="smollm2",kind="completion",replica="' in m


def test_routellm_model_names_pick_the_routed_pipeline(oai):
    """RouteLLM's `router-<pipeline>-<threshold>`: the routed pipeline with a per-request cost knob
    (the router's lam); every answer says in headers where it went."""
    raw = oai.chat.completions.with_raw_response.create(model="router-routed-0.5", messages=QUESTION, max_tokens=8)
    r = raw.parse()
    assert r.model == "router-routed-0.5" and r.choices[0].message.content
    assert raw.headers["x-composer-pipeline"] == "routed"
    assert raw.headers["x-composer-experts"] == "smollm2"  # geography: SmolLM2's declared skill
    assert raw.headers["x-composer-route-reason"].startswith("symbolic: smollm2 predicted")
    m = oai.models.retrieve("router-routed-0.5").model_extra
    assert m["resolves_to"] == "routed" and m["threshold"] == 0.5 and m["kind"] == "pipeline"
    import openai

    with pytest.raises(openai.BadRequestError, match="has no router"):
        oai.chat.completions.create(model="router-moa-0.5", messages=QUESTION)


def test_completions_send_the_prompt_as_it_is_to_a_base_model(oai):
    r = oai.completions.create(model="gemma3-270m", prompt="1, 2, 3, 4, 5,", max_tokens=6)
    assert r.choices[0].text.startswith("6, 7"), r.choices[0].text  # no "Question: ... Answer:" wrapper
    assert r.usage.completion_tokens > 0
