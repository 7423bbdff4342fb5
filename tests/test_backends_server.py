"""The managed `server` backend against the real llama.cpp OpenAI-compatible server on 127.0.0.1,
and the `litellm` backend talking to that same server as a remote provider."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from composer.backends import make_backend
from composer.config import ExpertSpec, Generation
from composer.errors import ExpertLoadError
from composer.types import Query
from serve_proc import sigint_as_a_terminal_would


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


@pytest.fixture(scope="module")
def server():
    spec = ExpertSpec(name="smol-server", backend="server", model="embedded:smollm2-135m-instruct",
                      system_prompt="You are a helpful assistant. Answer briefly and accurately.",
                      context_length=512, generation=Generation(max_tokens=16, temperature=0.0), concurrency=2,
                      options={"ready_timeout_s": 120})
    b = make_backend(spec)
    b.load()
    yield b
    b.unload()


def test_server_answers_and_stops(server):
    out = server.generate([Query("What is the capital of France?", id="x"), Query("Say hi", id="y")])
    assert [c.query_id for c in out] == ["x", "y"]
    assert all(c.ok for c in out), [c.error for c in out]
    assert "paris" in out[0].text.lower()
    assert out[0].usage.completion_tokens > 0


def test_litellm_backend_reaches_the_server_as_a_provider(server, monkeypatch):
    monkeypatch.setenv("TEST_SERVER_KEY", "not-needed")
    spec = ExpertSpec(name="remote", backend="litellm", model=f"openai/{server._served_model}",
                      api_base=server.api_base, api_key_env="TEST_SERVER_KEY",
                      generation=Generation(max_tokens=8), price={"input_per_1m": 3, "output_per_1m": 6})
    b = make_backend(spec)
    assert b.remote and b.footprint == 0
    c = b.generate([Query("Say yes.")])[0]
    assert c.ok and c.text and c.usage.cost > 0


def test_litellm_backend_missing_key_env(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    spec = ExpertSpec(name="remote", backend="litellm", model="openai/x", api_key_env="NO_SUCH_KEY_VAR")
    with pytest.raises(ExpertLoadError, match="NO_SUCH_KEY_VAR"):
        make_backend(spec).load()


def test_litellm_unreachable_is_retryable_error():
    spec = ExpertSpec(name="down", backend="litellm", model="openai/x", api_base="http://127.0.0.1:9/v1",
                      timeout_s=5)
    c = make_backend(spec).generate([Query("hi")])[0]
    assert c.error and c.call_error.retryable is True


def test_unload_kills_process():
    spec = ExpertSpec(name="s2", backend="server", model="embedded:smollm2-135m-instruct",
                      context_length=256, options={"ready_timeout_s": 120})
    b = make_backend(spec)
    b.load()
    pid = b.pid
    assert pid and alive(pid)
    b.unload()
    assert not alive(pid)


def test_server_that_never_starts_is_a_clear_error():
    spec = ExpertSpec(name="bad", backend="server", model="embedded:smollm2-135m-instruct",
                      options={"command": [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
                               "ready_timeout_s": 10})
    with pytest.raises(ExpertLoadError, match="exited with code 3.*boom"):
        make_backend(spec).load()


def test_no_orphan_after_ctrl_c(tmp_path):
    """SIGINT while a managed server runs: the child server process must not survive."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from composer.backends import make_backend
        from composer.config import ExpertSpec
        b = make_backend(ExpertSpec(name="s", backend="server", model="embedded:smollm2-135m-instruct",
                                    context_length=256, options={"ready_timeout_s": 120}))
        b.load()
        print(b.pid, flush=True)
        time.sleep(120)
    """))
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                         preexec_fn=sigint_as_a_terminal_would)
    try:
        child = int(p.stdout.readline())
        assert alive(child)
        p.send_signal(signal.SIGINT)
        p.wait(timeout=30)
        import time

        deadline = time.time() + 15
        while alive(child) and time.time() < deadline:
            time.sleep(0.2)
        assert not alive(child), "server process outlived composer"
    finally:
        p.kill()


def test_cancel_closes_the_upstream_generation(server):
    import threading

    prompt = "Write a long story about a dragon, at least 300 words."
    full = server.generate([Query(prompt, id="full", max_tokens=300)])[0]
    assert full.ok and full.usage.completion_tokens > 60
    threading.Timer(0.3, server.cancel, args=(["long"],)).start()
    c = server.generate([Query(prompt, id="long", max_tokens=300)])[0]
    assert c.error and c.call_error.kind == "cancelled"
    assert c.metadata["tokens_before_cancel"] < full.usage.completion_tokens
    assert server.generate([Query("Say hi.", id="next", max_tokens=4)])[0].ok  # server still serves
