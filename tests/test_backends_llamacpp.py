"""The llamacpp backend with the real SmolLM2-135M-Instruct GGUF."""

from __future__ import annotations

import pytest

from composer.backends import make_backend
from composer.config import ExpertSpec, Generation
from composer.types import Query


@pytest.fixture(scope="module")
def smol():
    spec = ExpertSpec(name="smollm2", backend="llamacpp", model="embedded:smollm2-135m-instruct",
                      system_prompt="You are a helpful assistant. Answer briefly and accurately.",
                      context_length=512, generation=Generation(max_tokens=24),
                      price={"input_per_1m": 1.0, "output_per_1m": 2.0}, options={"n_threads": 2})
    b = make_backend(spec)
    yield b
    b.unload()


def test_generate_batch_real_answers(smol):
    qs = [Query("What is the capital of France?", id="a"), Query("Say hello.", id="b")]
    out = smol.generate(qs)
    assert [c.query_id for c in out] == ["a", "b"]
    assert all(c.ok and c.text for c in out)
    assert "paris" in out[0].text.lower()
    u = out[0].usage
    assert u.prompt_tokens > 5 and 0 < u.completion_tokens <= 24
    assert u.cost == pytest.approx((u.prompt_tokens * 1.0 + u.completion_tokens * 2.0) / 1e6)
    assert smol.is_loaded and smol.load_count == 1


def test_temperature_zero_is_deterministic(smol):
    q = Query("Name a colour.", max_tokens=8)
    assert smol.generate([q])[0].text == smol.generate([q])[0].text


def test_unload_frees_and_reload_works(smol):
    import gc

    smol.load()
    assert smol._llm is not None
    smol.unload()
    gc.collect()
    assert not smol.is_loaded and smol._llm is None
    assert smol.unload_count >= 1
    out = smol.generate([Query("2+2=?", max_tokens=4)])  # loads again on demand
    assert out[0].ok and smol.load_count == 2


def test_context_overflow_is_a_per_query_error(smol):
    long = "word " * 2000
    out = smol.generate([Query(long, id="big"), Query("Hi", id="ok", max_tokens=4)])
    assert out[0].error and out[0].call_error.kind == "context_overflow"
    assert out[1].ok


def test_footprint_derived_from_file(smol, smollm2_path):
    assert smol.footprint >= smollm2_path.stat().st_size


def test_missing_model_is_a_load_error(tmp_path):
    from composer.errors import ExpertLoadError

    spec = ExpertSpec(name="ghost", backend="llamacpp", model=str(tmp_path / "none.gguf"))
    with pytest.raises(ExpertLoadError, match="none.gguf"):
        make_backend(spec).load()


def test_base_model_completion_mode():
    spec = ExpertSpec(name="gemma", backend="llamacpp", model="embedded:gemma3-270m",
                      chat_format="completion", context_length=512,
                      generation=Generation(max_tokens=8, stop=["\n"]), options={"n_threads": 2})
    b = make_backend(spec)
    try:
        c = b.generate([Query("What is the capital of France?")])[0]
        assert c.ok and c.usage.completion_tokens > 0
    finally:
        b.unload()


def test_cancel_stops_a_running_generation(smol):
    import threading

    prompt = "Write a long story about a dragon, at least 300 words."
    full = smol.generate([Query(prompt, id="full", max_tokens=300)])[0]
    assert full.ok and full.usage.completion_tokens > 60
    t = threading.Timer(0.3, smol.cancel, args=(["long"],))
    t.start()
    c = smol.generate([Query(prompt, id="long", max_tokens=300)])[0]
    assert c.error and c.call_error.kind == "cancelled"
    # stopped early: fewer tokens than the same deterministic generation uncancelled
    assert c.metadata["tokens_before_cancel"] < full.usage.completion_tokens
    # a cancelled query is not generated again, and the next one is unaffected
    ok = smol.generate([Query("Say hi.", id="after", max_tokens=4)])[0]
    assert ok.ok
