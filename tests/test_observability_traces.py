"""OpenTelemetry traces built from composer.events, checked with the SDK's in-memory exporter on
real Composers over the fake-backend registries (a slow load, a failing load, a flaky expert)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from composer.core import Composer
from composer.observability import attach
from composer.observability.traces import (TraceSubscriber, TracingUnavailable, provider_from_env,
                                           tracing_requested)
from composer.types import Query

CONFIGS = Path(__file__).parent / "configs"


@pytest.fixture
def memory():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def by_trace(spans) -> dict[int, list]:
    out: dict[int, list] = {}
    for s in spans:
        out.setdefault(s.context.trace_id, []).append(s)
    return out


def children(spans, parent) -> list:
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def test_one_trace_per_query_request_route_stage_call(memory):
    provider, exporter = memory
    c = Composer.from_yaml(CONFIGS / "fake.yaml")
    detach = attach(c, tracer_provider=provider)
    try:
        answers = c.run(["first question here", "second"], pipeline="both")
    finally:
        detach()  # writes the traces still open
        c.close()
    assert all(a.ok for a in answers)
    traces = by_trace(exporter.get_finished_spans())
    assert len(traces) == 2
    for spans in traces.values():
        root = [s for s in spans if s.parent is None]
        assert len(root) == 1 and root[0].name == "composer.request" and root[0].kind == SpanKind.SERVER
        root = root[0]
        assert root.attributes["gen_ai.request.model"] == "both"
        route = [s for s in children(spans, root) if s.name == "composer.route"]
        assert len(route) == 1 and list(route[0].attributes["composer.route.experts"]) == ["fast", "slow"]
        qid = route[0].attributes["composer.query_id"]
        answer = next(a for a in answers if a.query_id == qid)
        stages = [s for s in children(spans, root) if s.name.startswith("composer.stage")]
        assert stages
        calls = [s for st in stages for s in children(spans, st)]
        assert sorted(s.attributes["composer.expert"] for s in calls) == ["fast", "slow"]
        for s in calls:
            assert s.kind == SpanKind.CLIENT and s.name == "chat fake"
            assert s.attributes["gen_ai.operation.name"] == "chat" and s.attributes["gen_ai.request.model"] == "fake"
            cand = next(x for x in answer.candidates if x.expert == s.attributes["composer.expert"])
            assert s.attributes["gen_ai.usage.input_tokens"] == cand.usage.prompt_tokens > 0
            assert s.attributes["gen_ai.usage.output_tokens"] == cand.usage.completion_tokens > 0
            assert root.start_time <= s.start_time <= s.end_time <= root.end_time
        for st in stages:
            kids = children(spans, st)
            assert st.start_time == min(k.start_time for k in kids) and st.end_time == max(k.end_time for k in kids)
    slow_loads = [e for spans in traces.values() for s in spans if s.attributes.get("composer.expert") == "slow"
                  for e in s.events if e.name == "load"]
    assert slow_loads and all(e.attributes["seconds"] >= 0.05 for e in slow_loads)  # load_s: 0.05, measured


def test_failed_load_and_fallback_mark_the_spans(memory):
    provider, exporter = memory
    c = Composer.from_yaml(CONFIGS / "fake.yaml")
    sub = TraceSubscriber(provider, experts=c.experts)
    unsub = c.events.subscribe(sub)
    try:
        assert not c.ask("hello", expert="broken").ok
    finally:
        unsub()
        sub.close()
        c.close()
    spans = exporter.get_finished_spans()
    call = [s for s in spans if s.attributes.get("composer.expert") == "broken"]
    assert call and call[0].status.status_code == StatusCode.ERROR and call[0].attributes["error.type"] == "load"
    assert "load_failed" in [e.name for e in call[0].events]
    root = next(s for s in spans if s.parent is None)
    assert root.status.status_code == StatusCode.ERROR


def test_retries_and_fallbacks_are_span_events(memory):
    provider, exporter = memory
    c = Composer.from_yaml(CONFIGS / "service.yaml")  # flaky: fail_rate 1.0, fallbacks [echo]
    detach = attach(c, tracer_provider=provider)
    try:
        a = c.ask("hello there", expert="flaky")
    finally:
        detach()
        c.close()
    assert a.ok and a.experts == ["echo"]
    spans = exporter.get_finished_spans()
    root = next(s for s in spans if s.parent is None)
    names = [e.name for e in root.events]
    assert "retry" in names and "fallback" in names
    calls = [s for s in spans if s.name.startswith("chat ")]
    assert [s.attributes["composer.expert"] for s in calls].count("flaky") >= 1
    assert all(s.status.status_code == StatusCode.ERROR for s in calls if s.attributes["composer.expert"] == "flaky")
    assert [s for s in calls if s.attributes["composer.expert"] == "echo" and s.status.status_code != StatusCode.ERROR]
    assert root.status.status_code != StatusCode.ERROR  # the answer came (from the fallback)


def test_a_request_groups_its_queries_and_ends_with_the_request_event(memory):
    """The HTTP layer's contract: route events carry request_id, and its `request` event closes it."""
    provider, exporter = memory
    c = Composer.from_yaml(CONFIGS / "fake.yaml")
    sub = TraceSubscriber(provider, experts=c.experts)
    unsub = c.events.subscribe(sub)
    try:
        for qid in ("q-a", "q-b"):
            c.events.emit("route", query_id=qid, request_id="req-1", pipeline=None, experts=["fast"],
                          reason="requested expert", router="fixed")
        for qid in ("q-a", "q-b"):
            c.events.emit("attempt", query_id=qid, expert="fast", ok=True, seconds=0.01, prompt_tokens=3,
                          completion_tokens=4, cost=0.0)
        assert exporter.get_finished_spans() == ()  # still open: the request has not ended
        c.events.emit("request", request_id="req-1", route="/v1/chat/completions", model="fast", status=200,
                      seconds=0.2)
    finally:
        unsub()
        c.close()
    spans = exporter.get_finished_spans()
    assert len(by_trace(spans)) == 1
    root = next(s for s in spans if s.parent is None)
    assert root.attributes["composer.request_id"] == "req-1" and root.attributes["http.route"] == "/v1/chat/completions"
    assert root.attributes["http.response.status_code"] == 200 and root.attributes["composer.queries"] == 2
    assert (root.end_time - root.start_time) / 1e9 == pytest.approx(0.2, abs=0.05)
    assert len([s for s in spans if s.name == "chat fake"]) == 2
    assert sub.close() == 0


def test_endpoint_query_ids_join_their_request_without_request_id_on_routes(memory):
    """Routes that carry no request_id: the endpoint's query ids `<request_id>-<n>` say whose they are."""
    provider, exporter = memory
    c = Composer.from_yaml(CONFIGS / "fake.yaml")
    sub = TraceSubscriber(provider, experts=c.experts)
    unsub = c.events.subscribe(sub)
    try:
        answers = c.run([Query("one", id="chatcmpl-77-0"), Query("two", id="chatcmpl-77-1")], expert="fast")
        assert all(a.ok for a in answers) and exporter.get_finished_spans() == ()
        c.events.emit("request", request_id="chatcmpl-77", route="/v1/chat/completions", model="fast", status=200,
                      seconds=0.5)
    finally:
        unsub()
        sub.close()
        c.close()
    spans = exporter.get_finished_spans()
    assert len(by_trace(spans)) == 1
    root = next(s for s in spans if s.parent is None)
    assert root.attributes["composer.queries"] == 2
    assert sorted(s.attributes["composer.query_id"] for s in spans if s.name == "composer.route") == [
        "chatcmpl-77-0", "chatcmpl-77-1"]


def test_an_idle_trace_is_written_without_further_events(memory):
    provider, exporter = memory
    c = Composer.from_yaml(CONFIGS / "fake.yaml")
    sub = TraceSubscriber(provider, experts=c.experts, idle_s=0.2)
    unsub = c.events.subscribe(sub)
    try:
        assert c.ask("hello", expert="fast").ok
        deadline = time.monotonic() + 10
        while not exporter.get_finished_spans() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [s.name for s in exporter.get_finished_spans() if s.parent is None] == ["composer.request"]
    finally:
        unsub()
        sub.close()
        c.close()


def test_off_by_default_and_chosen_by_otel_env():
    assert not tracing_requested({}) and provider_from_env({}) is None
    assert provider_from_env({"OTEL_TRACES_EXPORTER": "none"}) is None
    assert provider_from_env({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}) is None
    assert tracing_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    p = provider_from_env({"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "my-composer"})
    assert p is not None
    p.shutdown()
    with pytest.raises(TracingUnavailable, match="pip install"):
        provider_from_env({"OTEL_TRACES_EXPORTER": "no-such-exporter"})


def test_console_exporter_from_env_writes_the_trace(tmp_path):
    """A process with OTEL_TRACES_EXPORTER=console prints its spans (the exporter binds stdout at
    import, so this runs as its own process, as the CLI would)."""
    script = tmp_path / "traced.py"
    script.write_text(
        "from composer.core import Composer\n"
        "from composer.observability import attach\n"
        f"c = Composer.from_yaml({str(CONFIGS / 'fake.yaml')!r})\n"
        "attach(c)\n"
        "assert c.ask('hello', expert='fast').ok\n"
        "c.close()\n")  # no detach: the exit hook writes the open trace and flushes the exporter
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "composer-test",
           "PYTHONPATH": os.pathsep.join([str(CONFIGS.parents[1]), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert '"name": "composer.request"' in out.stdout and '"name": "chat fake"' in out.stdout
    assert '"gen_ai.request.model": "fake"' in out.stdout and '"service.name": "composer-test"' in out.stdout


MOA = """version: 1
settings: {default_expert: a}
experts:
  - {name: a, backend: fake, model: fake-a, options: {footprint_bytes: 1000, reply: "Paris is the answer"}}
  - {name: b, backend: fake, model: fake-b, options: {footprint_bytes: 1000, reply: "It is Paris"}}
  - {name: agg, backend: fake, model: fake-agg, options: {footprint_bytes: 1000, reply: "Paris"}}
pipelines:
  - {name: moa, experts: [a, b], k: 2, aggregator: {kind: moa, expert: agg}}
"""


def test_aggregation_stages_are_spans_in_order(memory, tmp_path):
    """Mixture-of-Agents over fake experts: proposers in one stage, the aggregator in the next."""
    provider, exporter = memory
    (tmp_path / "moa.yaml").write_text(MOA)
    c = Composer.from_yaml(tmp_path / "moa.yaml")
    detach = attach(c, tracer_provider=provider)
    try:
        a = c.ask("What is the capital of France?", pipeline="moa")
    finally:
        detach()
        c.close()
    assert a.ok and a.text == "Paris"
    spans = exporter.get_finished_spans()
    assert len(by_trace(spans)) == 1
    root = next(s for s in spans if s.parent is None)
    stages = sorted((s for s in children(spans, root) if s.name.startswith("composer.stage")), key=lambda s: s.start_time)
    assert [s.attributes["composer.stage"] for s in stages] == [st["stage"] for st in a.stages]
    assert sorted(s.attributes["gen_ai.request.model"] for s in children(spans, stages[0])) == ["fake-a", "fake-b"]
    assert [s.attributes["gen_ai.request.model"] for s in children(spans, stages[1])] == ["fake-agg"]
    assert stages[0].end_time <= stages[1].start_time
    assert all(s.attributes["composer.query_id"] == a.query_id for s in stages)


def test_otlp_http_export_to_a_local_collector(tmp_path):
    """OTEL_TRACES_EXPORTER=otlp + OTEL_EXPORTER_OTLP_ENDPOINT: the spans reach an OTLP/HTTP
    collector (a real HTTP server on 127.0.0.1 decoding the protobuf export requests)."""
    import http.server
    import threading

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                          ExportTraceServiceResponse)

    got: list = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            got.append((self.path, req))
            out = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    script = tmp_path / "traced.py"
    script.write_text(
        "from composer.core import Composer\n"
        "from composer.observability import attach\n"
        f"c = Composer.from_yaml({str(CONFIGS / 'fake.yaml')!r})\n"
        "attach(c)\n"
        "assert all(a.ok for a in c.run(['hello', 'there'], pipeline='both'))\n"
        "c.close()\n")
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{srv.server_port}",
           "PYTHONPATH": os.pathsep.join([str(CONFIGS.parents[1]), os.environ.get("PYTHONPATH", "")])}
    try:
        out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    finally:
        srv.shutdown()
    assert out.returncode == 0, out.stderr
    assert got and {p for p, _ in got} == {"/v1/traces"}
    spans = [s for _, req in got for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    service = {a.value.string_value for _, req in got for rs in req.resource_spans for a in rs.resource.attributes
               if a.key == "service.name"}
    assert service == {"composer"}
    assert sorted(s.name for s in spans if not s.parent_span_id) == ["composer.request", "composer.request"]
    calls = [s for s in spans if s.name == "chat fake"]
    assert len(calls) == 4
    attrs = {a.key: a.value for a in calls[0].attributes}
    assert attrs["gen_ai.request.model"].string_value == "fake" and attrs["gen_ai.usage.output_tokens"].int_value > 0
