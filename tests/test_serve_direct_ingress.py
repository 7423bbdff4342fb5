"""`composer serve --direct-ingress`: the one local replica listens on the port itself (Ray Serve's
direct ingress), reached by the official `openai` client with the real SmolLM2, streamed and not;
it drains and stops on SIGTERM like the proxied server, and combinations it cannot serve are refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from composer.cli.main import app, register_commands
from serve_proc import REPO, ServerProc

KEY = "direct-ingress-key-41f0"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def listener_cmdline(port: int) -> str:
    """The command line of the process listening on 127.0.0.1:`port` (from /proc)."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].split(":")[1], 16) == port and f[3] == "0A":  # 0A: LISTEN
            inode = f[9]
    assert inode is not None, f"nothing listens on port {port}"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]" for fd in fds):
                return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    raise AssertionError(f"no process owns the listening socket of port {port}")


@pytest.fixture(scope="module")
def server():
    s = ServerProc(REPO / "experts.yaml", KEY, extra=["--direct-ingress"]).start()
    yield s
    s.stop()


def test_the_replica_serves_the_port_and_real_clients_get_answers(server):
    from openai import OpenAI

    assert "serving the port itself (direct ingress)" in server.output()
    assert "ServeReplica" in listener_cmdline(server.port)  # not Ray Serve's ProxyActor
    with OpenAI(base_url=f"{server.base}/v1", api_key=KEY, max_retries=0, timeout=300) as oai:
        r = oai.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=16, temperature=0)
        assert "paris" in r.choices[0].message.content.lower()
        pieces = [ev.choices[0].delta.content or "" for ev in
                  oai.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=16, temperature=0,
                                              stream=True) if ev.choices]
        assert len(pieces) >= 2 and "paris" in "".join(pieces).lower()
        import openai

        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=f"{server.base}/v1", api_key="wrong", max_retries=0).models.list()


def test_sigterm_drains_and_stops(server):
    server.stop()
    assert server.proc.returncode == 0, server.output()[-2000:]
    assert "drained=True" in server.output()


@pytest.mark.parametrize("args", [["--replicas", "2"], ["--ray-address", "127.0.0.1:1"]])
def test_combinations_it_cannot_serve_are_refused(args, monkeypatch):
    register_commands()
    monkeypatch.setenv("COMPOSER_API_KEYS", KEY)
    r = CliRunner().invoke(app, ["serve", "--config", str(REPO / "experts.yaml"), "--direct-ingress", *args])
    assert r.exit_code == 2
    assert "--direct-ingress serves one replica on a local Ray" in r.output
