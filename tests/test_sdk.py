"""The SDK: in-process `Composer` and HTTP `Client`/`AsyncClient` (on the official openai client)
have the same methods and agree, down to `chat.completions.create` returning OpenAI's objects.

Parity is checked on tests/configs/service.yaml (deterministic fake experts, so both paths must
give identical text); the in-process chat also runs once on the real SmolLM2."""

from __future__ import annotations

import asyncio

import pytest

from composer.errors import BadRequestError
from composer.sdk import AsyncClient, Client, Composer, ServiceError
from serve_proc import REPO, ServerProc

KEY = "sdk-key-77e0"
CFG = REPO / "tests/configs/service.yaml"


@pytest.fixture(scope="module")
def server():
    s = ServerProc(CFG, KEY).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def local():
    with Composer.from_yaml(CFG) as c:
        yield c


def test_same_answers_in_process_and_over_http(server, local):
    with Client(server.base, api_key=KEY) as cl:
        for kw in ({"expert": "echo"}, {"pipeline": "team"}, {}):
            a_local = local.ask("what is two plus two", **kw)
            a_http = cl.ask("what is two plus two", **kw)
            assert a_http.text == a_local.text == "[echo] what is two plus two"
            assert a_http.experts == a_local.experts == ["echo"]
            assert a_http.usage.completion_tokens == a_local.usage.completion_tokens
        msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
        assert cl.chat(msgs, model="echo").text == local.chat(msgs, model="echo").text == "[echo] hi"
        d_http = cl.route(["a", "b"], pipeline="team")
        d_local = local.route(["a", "b"], pipeline="team")
        assert [d.experts for d in d_http] == [d.experts for d in d_local] == [["echo"], ["echo"]]
        assert d_http[0].reason == d_local[0].reason
        assert "".join(cl.stream([{"role": "user", "content": "one two three four five six"}], model="echo")) \
            == "[echo] one two three four five six"
        fallback = cl.ask("x", expert="flaky")
        assert fallback.text == "[echo] x" and fallback.candidates[0].metadata["experts_tried"] == ["flaky", "echo"]


def test_errors_map_to_composer_errors(server, local):
    with Client(server.base, api_key=KEY) as cl:
        with pytest.raises(BadRequestError, match="The model 'nope' does not exist"):
            cl.ask("x", expert="nope")
        with pytest.raises(BadRequestError, match="'tool_choice' is only allowed"):
            cl.chat([{"role": "user", "content": "x"}], model="echo", tool_choice="auto")
    with pytest.raises(BadRequestError, match="unknown expert 'nope'"):
        local.ask("x", expert="nope")
    with pytest.raises(BadRequestError, match="The model 'nope' does not exist"):
        local.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with Client(server.base, api_key="wrong", max_retries=0) as cl:
        with pytest.raises(ServiceError) as e:
            cl.models()
        assert e.value.status == 401


def test_async_client_and_async_composer(server, local):
    async def main():
        async with AsyncClient(server.base, api_key=KEY) as cl:
            answers = await asyncio.gather(*(cl.ask(f"q{i}", expert="echo") for i in range(4)))
            routes = await cl.route(["z"], expert="echo")
            pieces = [p async for p in cl.stream([{"role": "user", "content": "hey"}], model="echo")]
            models = await cl.models()
        local_answers = await asyncio.gather(*(local.aask(f"q{i}", expert="echo") for i in range(4)))
        local_chat = await local.achat([{"role": "user", "content": "hey"}], model="echo")
        return answers, routes, pieces, models, local_answers, local_chat

    answers, routes, pieces, models, local_answers, local_chat = asyncio.run(main())
    assert [a.text for a in answers] == [a.text for a in local_answers] == [f"[echo] q{i}" for i in range(4)]
    assert routes[0].experts == ["echo"]
    assert "".join(pieces) == local_chat.text == "[echo] hey"
    assert {m["id"] for m in models} >= {"echo", "team"}


def test_in_process_chat_on_the_real_model():
    with Composer.from_yaml(REPO / "experts.yaml") as c:
        a = c.chat([{"role": "user", "content": "What is the capital of France? One word."}], model="smollm2",
                   max_tokens=12)
    assert a.ok and "paris" in a.text.lower()
    assert a.usage.completion_tokens > 0


def test_chat_completions_create_in_process_and_over_http(server, local):
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    msgs = [{"role": "user", "content": "one two three"}]
    with Client(server.base, api_key=KEY) as cl:
        r_http = cl.chat.completions.create(model="echo", messages=msgs, top_p=0.5, extra_body={"task": "chat"})
        chunks_http = list(cl.chat.completions.create(model="echo", messages=msgs, stream=True,
                                                      stream_options={"include_usage": True}))
        a = cl.chat(msgs, model="echo", task="chat")  # composer's extension travels in extra_body
    r_local = local.chat.completions.create(model="echo", messages=msgs, top_p=0.5, extra_body={"task": "chat"})
    chunks_local = list(local.chat.completions.create(model="echo", messages=msgs, stream=True,
                                                      stream_options={"include_usage": True}))
    assert isinstance(r_http, ChatCompletion) and isinstance(r_local, ChatCompletion)
    assert r_http.choices[0].message.content == r_local.choices[0].message.content == "[echo] one two three"
    assert r_http.usage.completion_tokens == r_local.usage.completion_tokens > 0
    assert r_http.model_extra["composer"]["experts"] == r_local.model_extra["composer"]["experts"] == [["echo"]]
    for chunks in (chunks_http, chunks_local):
        assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "[echo] one two three"
        assert chunks[-1].usage.completion_tokens > 0
    assert a.text == "[echo] one two three" and a.experts == ["echo"]


def test_client_is_the_openai_client(server):
    import openai

    with Client(server.base, api_key=KEY) as cl:
        assert isinstance(cl.openai, openai.OpenAI) and cl.chat.completions is cl.openai.chat.completions
    async def main():
        async with AsyncClient(server.base, api_key=KEY) as acl:
            assert isinstance(acl.openai, openai.AsyncOpenAI)
            r = await acl.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
            return r.choices[0].message.content

    assert asyncio.run(main()) == "[echo] hi"


def test_async_client_streams_before_the_answer_is_finished(server):
    """`slow` spreads its words over 30 s: the first piece must arrive long before that (the old
    SDK collected the whole answer first); leaving early closes the stream (the server cancels)."""
    import time

    words = " ".join("abcdefghijklmn")  # 14 words + "[slow]": the first arrives after ~2 s

    async def main():
        async with AsyncClient(server.base, api_key=KEY, max_retries=0) as cl:
            t0 = time.perf_counter()
            async for piece in cl.stream([{"role": "user", "content": words}], model="slow"):
                return piece, time.perf_counter() - t0

    piece, seconds = asyncio.run(main())
    assert piece == "[slow]" and seconds < 15, seconds
