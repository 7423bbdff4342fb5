"""The OpenAI client matrix against a real `composer serve`: the official `openai` client (sync,
async, stream, tools, `.parse()`), LangChain `ChatOpenAI` (invoke, stream, bind_tools round trip,
with_structured_output in its three methods) and `litellm.completion`, each over two experts:

- `smollm2`: SmolLM2-135M through llama.cpp (tools and structured output by its chat handler and
  JSON-schema grammars; the model is tiny, so tool calls are forced by name where a test needs one);
- `remote`: a litellm expert (`openai/gpt-4o-mini`) on a local fake OpenAI upstream (a real HTTP
  server, tests/openai_upstream.py), which records what composer forwarded.

One server process for the module.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest
from pydantic import BaseModel

from openai_upstream import Upstream
from serve_proc import ServerProc

KEY = "clients-key-4e1b"
Q = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
MODELS = ["smollm2", "remote"]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


class Capital(BaseModel):
    country: str
    city: str


@pytest.fixture(scope="module")
def upstream():
    u = Upstream().start()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, upstream):
    os.environ["UPSTREAM_KEY"] = "sk-fake-upstream-key"
    cfg = tmp_path_factory.mktemp("clients") / "experts.yaml"
    cfg.write_text(f"""version: 1
settings: {{default_expert: smollm2}}
experts:
  - name: smollm2
    backend: llamacpp
    model: embedded:smollm2-135m-instruct
    system_prompt: You are a helpful assistant. Answer briefly and accurately.
    context_length: 2048
    generation: {{max_tokens: 48, temperature: 0.0}}
    options: {{n_threads: 2}}
  - name: smollm2-lp                     # the same model loaded with logits_all: it gives logprobs
    backend: llamacpp
    model: embedded:smollm2-135m-instruct
    context_length: 512
    generation: {{max_tokens: 8, temperature: 0.0}}
    options: {{n_threads: 2, logits_all: true}}
  - name: remote
    backend: litellm
    model: openai/gpt-4o-mini
    api_base: {upstream.base}
    api_key_env: UPSTREAM_KEY
pipelines:
  - name: remote-self-moa
    experts: [remote]
    aggregator: {{kind: self_moa, expert: remote, params: {{samples: 2, temperature: 0.7}}}}
  - name: remote-vote
    experts: [remote]
    aggregator: {{kind: vote, params: {{samples: {{remote: 2}}, temperature: 0.7}}}}
""")
    s = ServerProc(cfg, KEY).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def oai(server):
    from openai import OpenAI

    c = OpenAI(base_url=f"{server.base}/v1", api_key=KEY, max_retries=0, timeout=300)
    yield c
    c.close()


def chat_llm(server, model, **kw):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model=model, base_url=f"{server.base}/v1", api_key=KEY, max_retries=0, timeout=300,
                      temperature=0, max_tokens=48, **kw)


# -- openai: plain, stream, usage ------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_openai_plain_and_stream_with_usage(oai, upstream, model):
    raw = oai.chat.completions.with_raw_response.create(model=model, messages=Q, max_tokens=16)
    r = raw.parse()
    assert r.choices[0].message.content and r.usage.completion_tokens > 0
    assert raw.headers["x-composer-experts"] == model
    assert raw.headers["x-composer-route-reason"] == "requested expert"
    if model == "remote":
        sent = upstream.last()
        assert "temperature" not in sent and "top_p" not in sent, sent  # only what the client set
        assert r.choices[0].message.content == "[upstream] " + Q[0]["content"]
    else:
        assert "paris" in r.choices[0].message.content.lower()
    pieces, usage = [], None
    for ev in oai.chat.completions.create(model=model, messages=Q, max_tokens=16, stream=True,
                                          stream_options={"include_usage": True}):
        if ev.choices:
            pieces.append(ev.choices[0].delta.content or "")
        usage = ev.usage or usage
    assert "".join(pieces).strip() == r.choices[0].message.content.strip()
    assert usage is not None and usage.completion_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_openai_sampling_fields_are_accepted_and_forwarded(oai, upstream, model):
    r = oai.chat.completions.create(model=model, messages=Q, max_tokens=8, top_p=0.9, presence_penalty=0.5,
                                    frequency_penalty=0.1, seed=7, user="u-1", logit_bias={"42": -1},
                                    metadata={"k": "v"})
    assert r.choices[0].message.content
    if model == "remote":
        sent = upstream.last()
        assert sent["top_p"] == 0.9 and sent["presence_penalty"] == 0.5 and sent["seed"] == 7
        assert sent["user"] == "u-1" and sent["logit_bias"] == {"42": -1}
        assert "metadata" not in sent and "temperature" not in sent


# -- tools -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_openai_tools(oai, model):
    r = oai.chat.completions.create(model=model, max_tokens=48, tools=[WEATHER],
                                    tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                    messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls", ch
    call = ch.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    args = json.loads(call.function.arguments)  # the llama.cpp grammar makes it valid JSON
    assert isinstance(args.get("city"), str)
    # the round trip: the assistant's tool call and the tool's result go back in
    follow = oai.chat.completions.create(model=model, max_tokens=24, tools=[WEATHER], messages=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}])
    assert follow.choices[0].finish_reason in ("stop", "length")
    assert follow.choices[0].message.content
    if model == "remote":
        assert follow.choices[0].message.content == "The tool said: sunny, 21 C"


@pytest.mark.parametrize("model", MODELS)
def test_openai_tools_streamed(oai, model):
    calls, finish = {}, None
    # "required" with one tool is that tool (llama.cpp forces it by grammar)
    for ev in oai.chat.completions.create(model=model, stream=True, tools=[WEATHER], tool_choice="required",
                                          max_tokens=48, messages=[{"role": "user", "content": "Weather in Oslo?"}]):
        for ch in ev.choices:
            for tc in ch.delta.tool_calls or []:
                c = calls.setdefault(tc.index, {"id": tc.id, "name": "", "arguments": ""})
                c["name"] += (tc.function.name or "") if tc.function else ""
                c["arguments"] += (tc.function.arguments or "") if tc.function else ""
            finish = ch.finish_reason or finish
    assert finish == "tool_calls"
    assert calls[0]["name"] == "get_weather" and calls[0]["id"]
    args = json.loads(calls[0]["arguments"])
    assert args == {"city": "Paris"} if model == "remote" else isinstance(args["city"], str)


def test_a_pipelines_final_aggregator_honours_tools_and_formats(oai, upstream):
    n0 = len(upstream.requests)
    raw = oai.chat.completions.with_raw_response.create(model="remote-self-moa", tools=[WEATHER],
                                                        messages=[{"role": "user", "content": "Weather in Rome?"}])
    r = raw.parse()
    assert raw.headers["x-composer-pipeline"] == "remote-self-moa"
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert len(upstream.requests) - n0 == 3  # 2 samples + the aggregator, each given the tools
    r = oai.chat.completions.parse(model="remote-self-moa", response_format=Capital, messages=[
        {"role": "user", "content": "The capital of France, as JSON."}])
    assert r.choices[0].message.parsed == Capital(country="Paris", city="Paris")


def test_vote_pipeline_refuses_tools(oai):
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="remote-vote", messages=Q, tools=[WEATHER])
    assert "cannot honour 'tools'" in str(e.value)


# -- structured output -----------------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_openai_json_object_and_parse(oai, model):
    r = oai.chat.completions.create(model=model, max_tokens=40, response_format={"type": "json_object"},
                                    messages=[{"role": "user", "content": "Give the capital of France as JSON."}])
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    parsed = oai.chat.completions.parse(model=model, max_tokens=60, response_format=Capital, messages=[
        {"role": "user", "content": "The capital of France, as JSON with country and city."}])
    cap = parsed.choices[0].message.parsed
    assert isinstance(cap, Capital) and cap.city


@pytest.mark.parametrize("model", [*MODELS, "smollm2-lp"])
def test_openai_logprobs(oai, model):
    raw = oai.chat.completions.with_raw_response.create(model=model, messages=Q, max_tokens=8, logprobs=True,
                                                        top_logprobs=2)
    r = raw.parse()
    if model != "smollm2":
        lp = r.choices[0].logprobs.content
        assert lp and len(lp[0].top_logprobs) == 2 and lp[0].logprob <= 0
        assert "x-composer-dropped-params" not in raw.headers
        streamed = [ev.choices[0].logprobs for ev in oai.chat.completions.create(
            model=model, messages=Q, max_tokens=8, logprobs=True, top_logprobs=2, stream=True)
            if ev.choices and ev.choices[0].logprobs]
        if model == "smollm2-lp":  # llama.cpp streams a logprob with each token
            assert [t.token for s in streamed for t in s.content] == [t.token for t in lp]
    else:  # llama.cpp gives logprobs only when loaded with logits_all: dropped, and said so
        assert r.choices[0].logprobs is None
        assert "logprobs" in raw.headers["x-composer-dropped-params"]


# -- async -----------------------------------------------------------------------------------------

def test_openai_async_client(server):
    import asyncio

    from openai import AsyncOpenAI

    async def main():
        async with AsyncOpenAI(base_url=f"{server.base}/v1", api_key=KEY, max_retries=0) as c:
            plain = await asyncio.gather(*(c.chat.completions.create(model="remote", messages=[
                {"role": "user", "content": f"q{i}"}]) for i in range(3)))
            pieces = [ev.choices[0].delta.content or "" async for ev in await c.chat.completions.create(
                model="smollm2", messages=Q, max_tokens=12, stream=True) if ev.choices]
            return plain, pieces

    plain, pieces = asyncio.run(main())
    assert [p.choices[0].message.content for p in plain] == [f"[upstream] q{i}" for i in range(3)]
    assert "paris" in "".join(pieces).lower()


# -- LangChain -------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_langchain_invoke_and_stream(server, model):
    llm = chat_llm(server, model)
    msg = llm.invoke("What is the capital of France? Answer in one word.")
    assert msg.content
    text = "".join(chunk.content for chunk in llm.stream("What is the capital of France? Answer in one word."))
    assert text.strip() == msg.content.strip()


@pytest.mark.parametrize("model", MODELS)
def test_langchain_bind_tools_round_trip(server, model):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """Weather in a city."""
        return f"sunny in {city}"

    llm = chat_llm(server, model)
    forced = llm.bind_tools([get_weather], tool_choice="get_weather")
    history = [HumanMessage("What is the weather in Paris?")]
    ai = forced.invoke(history)
    assert ai.tool_calls and ai.tool_calls[0]["name"] == "get_weather"
    result = get_weather.invoke(ai.tool_calls[0]["args"])
    history += [ai, ToolMessage(result, tool_call_id=ai.tool_calls[0]["id"])]
    final = llm.bind_tools([get_weather]).invoke(history)
    assert final.content and not final.tool_calls


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", ["default", "json_schema", "function_calling", "json_mode"])
def test_langchain_with_structured_output(server, model, method):
    llm = chat_llm(server, model)
    prompt = "The capital of France, as JSON with keys country and city."
    if method == "default":  # langchain-openai's default method
        out = llm.with_structured_output(Capital).invoke(prompt)
        assert isinstance(out, Capital) and out.city
    elif method == "json_mode":  # JSON mode constrains to JSON, not to a schema: ask for a dict
        out = llm.with_structured_output(Capital.model_json_schema(), method="json_mode").invoke(prompt)
        assert isinstance(out, dict)
    else:
        out = llm.with_structured_output(Capital, method=method).invoke(prompt)
        assert isinstance(out, Capital) and out.city


# -- litellm ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_litellm_completion(server, model):
    import litellm

    kw = dict(model=f"openai/{model}", api_base=f"{server.base}/v1", api_key=KEY, messages=Q, max_tokens=16,
              num_retries=0, timeout=300)
    r = litellm.completion(**kw)
    assert r.choices[0].message.content and r.usage.completion_tokens > 0
    text = "".join((c.choices[0].delta.content or "") for c in litellm.completion(stream=True, **kw) if c.choices)
    assert text.strip() == r.choices[0].message.content.strip()


# -- more routes -----------------------------------------------------------------------------------

def test_models_show_context_and_price_from_litellm_map(oai):
    m = oai.models.retrieve("remote")
    extra = m.model_extra
    assert extra["context_length"] == 128000 and extra["context_length_source"] == "litellm model map"
    assert extra["price"]["input_per_1m"] > 0 and extra["price"]["source"] == "litellm model map"
    assert oai.models.retrieve("smollm2").model_extra["context_length"] == 2048
    r = oai.chat.completions.create(model="remote", messages=Q, max_tokens=4096)  # fits 128k now
    assert r.choices[0].message.content


def test_unknown_model_is_404(oai):
    import openai

    with pytest.raises(openai.NotFoundError) as e:
        oai.chat.completions.create(model="gpt-17", messages=Q)
    assert e.value.body["code"] == "model_not_found" and "gpt-17" in e.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("gpt-17")


@pytest.mark.parametrize("model", MODELS)
def test_completions_plain_and_stream(oai, model):
    r = oai.completions.create(model=model, prompt="The capital of France is", max_tokens=8)
    assert r.object == "text_completion" and r.choices[0].text and r.usage.completion_tokens > 0
    text = "".join(c.choices[0].text for c in oai.completions.create(model=model, prompt="The capital of France is",
                                                                    max_tokens=8, stream=True) if c.choices)
    assert text.strip() == r.choices[0].text.strip()


def test_embeddings(oai):
    r = oai.embeddings.create(model="all-minilm-l6-v2", input=["Paris is in France", "Bread is baked"])
    assert [len(d.embedding) for d in r.data] == [384, 384] and r.usage.prompt_tokens > 0
    import numpy as np

    a, b = (np.array(d.embedding) for d in r.data)
    assert abs(np.linalg.norm(a) - 1) < 1e-3  # normalised sentence embeddings
    b64 = oai.embeddings.create(model="all-minilm-l6-v2", input="Paris is in France", encoding_format="float")
    assert np.allclose(b64.data[0].embedding, a, atol=1e-5)


def test_images_pass_to_remote_and_are_refused_by_text_only_experts(oai):
    import openai

    msg = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    r = oai.chat.completions.create(model="remote", messages=msg)
    assert r.choices[0].message.content == "[upstream] What is this? (+1 image_url)"
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="smollm2", messages=msg)
    assert e.value.body["param"] == "messages[0].content[1]"


def test_openapi_schema_behind_the_key(server):
    with httpx.Client(base_url=server.base, timeout=30) as h:
        assert h.get("/openapi.json").status_code == 401
        doc = h.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models/{model_id}"} <= set(doc["paths"])
        assert "tools" in doc["components"]["schemas"]["ChatRequest"]["properties"]
        assert h.get("/health").json() == {"status": "ok"}
