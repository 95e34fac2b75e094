"""04-observability: spans, the duration histogram and correlated logs, in memory and across real processes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx2
import pytest
from mcp import Client, MCPError
from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.util.types import AttributeValue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.logs import configure_logging
from shared.otlp import InPlaceOTLPSpanExporter, encode_spans_in_place
from shared.telemetry import DURATION_BUCKETS, LogSpanExporter, build_span_exporter
from tests.harness import (
    INITIALIZE,
    INITIALIZED,
    REPO,
    ServerProcess,
    http_client,
    inspector_cli,
    load_server,
    request_line,
    run_server,
    serve_app,
    server_env,
    tool_call_line,
)

FOLDER = "04-observability"
SERVER = REPO / FOLDER / "server.py"
server = load_server(FOLDER)

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="session")
def otel_providers() -> tuple[InMemorySpanExporter, InMemoryMetricReader]:
    """One tracer and one meter provider for the whole test process: OpenTelemetry lets each be set once."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(tracer_provider)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return spans, reader


@pytest.fixture
def spans(otel_providers: tuple[InMemorySpanExporter, InMemoryMetricReader]) -> Iterator[InMemorySpanExporter]:
    otel_providers[0].clear()
    yield otel_providers[0]


@pytest.fixture
def reader(otel_providers: tuple[InMemorySpanExporter, InMemoryMetricReader]) -> InMemoryMetricReader:
    return otel_providers[1]


def server_span(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = [s for s in spans.get_finished_spans() if s.name == name and s.kind is trace.SpanKind.SERVER]
    assert found, f"no server span {name!r} in {[s.name for s in spans.get_finished_spans()]}"
    return found[-1]


def duration_points(reader: InMemoryMetricReader) -> list[HistogramDataPoint]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "mcp.server.operation.duration"
        for point in metric.data.data_points
        if isinstance(point, HistogramDataPoint)
    ]


def point_for(reader: InMemoryMetricReader, **attributes: str) -> HistogramDataPoint:
    wanted = {k.replace("__", "."): v for k, v in attributes.items()}
    found = [p for p in duration_points(reader) if wanted.items() <= dict(p.attributes or {}).items()]
    assert found, f"no histogram point with {wanted}"
    return found[-1]


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    yield stream
    configure_logging("warning", "json", stream=io.StringIO())


# --- traces ---------------------------------------------------------------------------------


async def test_tools_call_span_follows_the_convention_and_continues_the_callers_trace(
    spans: InMemorySpanExporter,
) -> None:
    async with Client(server.mcp, mode="legacy") as client:  # legacy in-memory mode sends client spans
        await client.call_tool("add_numbers", {"num1": 1, "num2": 2})
    span = server_span(spans, "tools/call add_numbers")
    attributes = dict(span.attributes or {})
    assert {
        "mcp.method.name": "tools/call",
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "add_numbers",
        "mcp.protocol.version": "2025-11-25",
        "network.transport": "pipe",
    }.items() <= attributes.items()
    assert attributes["jsonrpc.request.id"]
    sender = next(s for s in spans.get_finished_spans() if s.name == "MCP send tools/call add_numbers")
    assert span.parent is not None and sender.context is not None and span.context is not None
    assert (span.parent.span_id, span.context.trace_id) == (sender.context.span_id, sender.context.trace_id)


async def test_tools_list_span(spans: InMemorySpanExporter) -> None:
    async with Client(server.mcp) as client:
        await client.list_tools()
    attributes = dict(server_span(spans, "tools/list").attributes or {})
    assert attributes["mcp.method.name"] == "tools/list"
    assert "gen_ai.operation.name" not in attributes


async def test_three_kinds_of_failure_look_different(
    spans: InMemorySpanExporter, reader: InMemoryMetricReader, json_log: io.StringIO
) -> None:
    async with Client(server.mcp) as client:
        failed = await client.call_tool("divide_numbers", {"dividend": 1, "divisor": 0})
        crashed = await client.call_tool("simulate_crash", {})
        with pytest.raises(MCPError) as unknown:
            await client.call_tool("no_such_tool", {})
        with pytest.raises(MCPError) as invalid:
            # Past the client's own checks, as a buggy client would send it.
            await client.session._dispatcher.send_raw_request("tools/call", {"name": "add_numbers", "arguments": 7})
    assert failed.is_error and crashed.is_error
    assert (unknown.value.error.code, unknown.value.error.message) == (-32602, "Unknown tool: no_such_tool")
    assert invalid.value.error.code == -32602

    tool_error = server_span(spans, "tools/call divide_numbers")
    crash = server_span(spans, "tools/call simulate_crash")
    refused = server_span(spans, "tools/call no_such_tool")
    malformed = server_span(spans, "tools/call add_numbers")
    for span in (tool_error, crash, refused, malformed):
        assert span.status.status_code is StatusCode.ERROR
    assert (tool_error.attributes or {})["error.type"] == "tool_error" and tool_error.events == ()
    assert (crash.attributes or {})["error.type"] == "tool_error"
    assert [(e.name, (e.attributes or {})["exception.type"]) for e in crash.events] == [
        ("exception", "mcp.server.mcpserver.exceptions.UnexpectedToolError")
    ]
    assert (refused.attributes or {})["rpc.response.status_code"] == "-32602"
    assert refused.status.description == "Unknown tool: no_such_tool"
    assert malformed.status.description == "Invalid request parameters"

    point_for(reader, mcp__method__name="tools/call", gen_ai__tool__name="divide_numbers", error__type="tool_error")
    point_for(reader, gen_ai__tool__name="simulate_crash", error__type="tool_error")
    refused_points = [p for p in duration_points(reader) if (p.attributes or {}).get("error.type") == "-32602"]
    assert refused_points, "protocol errors are measured too"
    # A name the caller made up never becomes a metric label.
    assert all("no_such_tool" not in dict(p.attributes or {}).values() for p in duration_points(reader))


async def test_duration_histogram(reader: InMemoryMetricReader) -> None:
    async with Client(server.mcp) as client:
        await client.call_tool("echo_message", {"message": "measure me"})
    point = point_for(reader, gen_ai__tool__name="echo_message")
    assert tuple(point.explicit_bounds) == DURATION_BUCKETS
    assert point.count >= 1 and point.sum > 0
    assert dict(point.attributes or {}).keys() == {
        "mcp.method.name",
        "mcp.protocol.version",
        "network.transport",
        "gen_ai.operation.name",
        "gen_ai.tool.name",
    }


async def test_log_lines_carry_the_trace_of_their_request(spans: InMemorySpanExporter, json_log: io.StringIO) -> None:
    async with Client(server.mcp) as client:
        await client.call_tool("simulate_crash", {})
    span = server_span(spans, "tools/call simulate_crash")
    assert span.context is not None
    trace_id = format(span.context.trace_id, "032x")
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    summary = next(line for line in lines if line["event"] == "request" and line.get("name") == "simulate_crash")
    crash_log = next(line for line in lines if line["event"].startswith("Tool 'simulate_crash' raised"))
    assert summary["trace_id"] == crash_log["trace_id"] == trace_id
    assert (summary["method"], summary["outcome"], summary["level"]) == ("tools/call", "tool_error", "warning")
    assert summary["ms"] > 0 and summary["rpc_id"]
    # The cause and its traceback are in the log (and on the span), not in the result the model reads.
    assert "RuntimeError" in [entry["exc_type"] for entry in crash_log["exception"]]


async def test_arguments_and_results_are_not_recorded_unless_asked(
    spans: InMemorySpanExporter, json_log: io.StringIO
) -> None:
    sentinel = "sentinel-personal-data-4711"
    async with Client(server.mcp) as client:
        await client.call_tool("echo_message", {"message": sentinel})
        server.telemetry.record_payloads = True
        try:
            await client.call_tool("add_numbers", {"num1": 4711, "num2": 0})
        finally:
            server.telemetry.record_payloads = False
    recorded = json.dumps([dict(s.attributes or {}) for s in spans.get_finished_spans()])
    assert sentinel not in recorded and sentinel not in json_log.getvalue()
    opted_in = dict(server_span(spans, "tools/call add_numbers").attributes or {})
    assert json.loads(str(opted_in["gen_ai.tool.call.arguments"])) == {"num1": 4711, "num2": 0}
    assert "4711" in str(opted_in["gen_ai.tool.call.result"])


def test_exporter_is_chosen_by_the_standard_variables() -> None:
    assert isinstance(build_span_exporter({}), LogSpanExporter)
    assert build_span_exporter({"OTEL_TRACES_EXPORTER": "none"}) is None
    otlp = build_span_exporter({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert isinstance(otlp, OTLPSpanExporter)  # the library's, with shared/otlp.py's encoder


def test_spans_encode_in_place_to_exactly_the_message_the_library_builds() -> None:
    """Resource and scopes, a remote parent with trace state, links, events, an exception, every value type."""
    finished = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "encoding", "replicas": 3}))
    provider.add_span_processor(SimpleSpanProcessor(finished))
    server = provider.get_tracer("server", "1.0", schema_url="https://example.test/schema", attributes={"x": True})
    other = provider.get_tracer("other")
    caller = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1), trace_state=TraceState([("k", "v")]))
    values: dict[str, AttributeValue] = {"s": "x", "i": 3, "f": 1.5, "b": False, "strings": ["a", "b"], "ints": [1, 2]}
    parent = trace.set_span_in_context(trace.NonRecordingSpan(caller))
    with server.start_as_current_span(
        "tools/call divide", kind=SpanKind.SERVER, context=parent, attributes=values, links=[Link(caller, {"n": 1})]
    ) as span:
        span.add_event("progress", {"done": "1"})
        span.record_exception(ZeroDivisionError("division by zero"))
        span.set_status(Status(StatusCode.ERROR, "cannot divide by zero"))
        with other.start_as_current_span("child", kind=SpanKind.CLIENT):
            pass
    with server.start_as_current_span("plain"):
        pass

    spans = finished.get_finished_spans()
    ours, library = encode_spans_in_place(spans), encode_spans(spans)
    assert ours == library
    assert ours.SerializeToString(deterministic=True) == library.SerializeToString(deterministic=True)


# --- real processes -------------------------------------------------------------------------


def test_client_and_server_share_one_trace_over_stdio_and_http() -> None:
    with ServerProcess(FOLDER) as proc:
        done = subprocess.run(
            [sys.executable, str(REPO / FOLDER / "client.py"), proc.url],
            capture_output=True,
            text=True,
            timeout=60,
            env=server_env(),
            check=False,
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["stdio", "http"]
    for line in lines:
        assert line.endswith("agent turn > MCP send tools/call add_numbers > tools/call add_numbers (in the server)")


async def test_spans_print_as_log_lines_by_default_and_metrics_are_scraped() -> None:
    with ServerProcess(FOLDER) as proc:
        async with http_client(proc.url) as client:
            await client.call_tool("add_numbers", {"num1": 1, "num2": 1})
            recent = await client.read_resource("telemetry://recent-spans")
        scraped = httpx2.get(proc.base_url + "/metrics").text
        proc.stop()
    names = [span["name"] for span in json.loads(recent.contents[0].text)]  # type: ignore[union-attr]
    assert "tools/call add_numbers" in names
    buckets = [
        line for line in scraped.splitlines() if line.startswith("mcp_server_operation_duration_seconds_bucket{")
    ]
    ours = [line for line in buckets if 'gen_ai_tool_name="add_numbers"' in line and 'network_transport="tcp"' in line]
    assert len(ours) == len(DURATION_BUCKETS) + 1  # one series per bucket, plus +Inf
    span_lines = [e for e in proc.events() if e["event"] == "span tools/call add_numbers"]
    assert span_lines and span_lines[0]["kind"] == "SERVER" and len(span_lines[0]["trace_id"]) == 32


async def test_http_spans_carry_transport_and_the_legacy_session_id() -> None:
    with ServerProcess(FOLDER) as proc:
        async with http_client(proc.url, mode="legacy") as client:
            await client.call_tool("echo_message", {"message": "in a session"})
            recent = await client.read_resource("telemetry://recent-spans")
    spans = json.loads(recent.contents[0].text)  # type: ignore[union-attr]
    call = next(span for span in spans if span["name"] == "tools/call echo_message")
    attributes = call["attributes"]
    assert (attributes["network.transport"], attributes["network.protocol.name"]) == ("tcp", "http")
    assert attributes["client.address"] == "127.0.0.1"
    assert len(attributes["mcp.session.id"]) >= 16


class OtlpReceiver:
    """A minimal OTLP/HTTP receiver: decodes the protobuf payloads the exporters POST."""

    def __init__(self) -> None:
        self.span_names: list[str] = []
        self.metric_names: list[str] = []
        self.app = Starlette(
            routes=[
                Route("/v1/traces", self.traces, methods=["POST"]),
                Route("/v1/metrics", self.metrics, methods=["POST"]),
            ]
        )

    async def traces(self, request: Request) -> Response:
        payload = ExportTraceServiceRequest.FromString(await request.body())
        self.span_names += [s.name for r in payload.resource_spans for ss in r.scope_spans for s in ss.spans]
        return Response(b"", media_type="application/x-protobuf")

    async def metrics(self, request: Request) -> Response:
        payload = ExportMetricsServiceRequest.FromString(await request.body())
        self.metric_names += [m.name for r in payload.resource_metrics for sm in r.scope_metrics for m in sm.metrics]
        return Response(b"", media_type="application/x-protobuf")


@pytest.fixture
async def otlp() -> AsyncIterator[tuple[str, OtlpReceiver]]:
    receiver = OtlpReceiver()
    async with serve_app(receiver.app) as base:
        yield base, receiver


async def test_otlp_export_reaches_a_real_receiver(otlp: tuple[str, OtlpReceiver]) -> None:
    endpoint, receiver = otlp
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_METRIC_EXPORT_INTERVAL": "200"}
    with ServerProcess(FOLDER, env=env) as proc:
        async with http_client(proc.url) as client:
            await client.call_tool("add_numbers", {"num1": 2, "num2": 2})
        await anyio.to_thread.run_sync(proc.stop)  # shutdown flushes the last batch
    assert "tools/call add_numbers" in receiver.span_names
    assert "mcp.server.operation.duration" in receiver.metric_names


async def test_the_exporter_parts_shared_otlp_borrows_are_still_there(otlp: tuple[str, OtlpReceiver]) -> None:
    """`InPlaceOTLPSpanExporter` uses the library exporter's private `_client` and `_shutdown`: a release that
    renames them fails here by name, instead of the spans going missing with a line in the log."""
    endpoint, receiver = otlp
    exporter = InPlaceOTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")
    assert hasattr(exporter, "_client"), "OTLPSpanExporter._client is gone: shared/otlp.py sends through it"
    assert hasattr(exporter, "_shutdown"), "OTLPSpanExporter._shutdown is gone: shared/otlp.py reads it"
    finished = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(finished))
    with provider.get_tracer("test").start_as_current_span("tools/call echo_message"):
        pass
    spans = finished.get_finished_spans()
    assert await anyio.to_thread.run_sync(exporter.export, spans) == SpanExportResult.SUCCESS
    assert receiver.span_names == ["tools/call echo_message"]
    exporter.shutdown()  # type: ignore[no-untyped-call]  # the library's method has no annotations
    assert await anyio.to_thread.run_sync(exporter.export, spans) == SpanExportResult.FAILURE
    assert receiver.span_names == ["tools/call echo_message"]


async def test_sampling_and_disabling_follow_the_standard_variables() -> None:
    for env in ({"OTEL_TRACES_SAMPLER": "always_off"}, {"OTEL_SDK_DISABLED": "true"}):
        with ServerProcess(FOLDER, env=env) as proc:
            async with http_client(proc.url) as client:
                await client.call_tool("add_numbers", {"num1": 1, "num2": 1})
                recent = await client.read_resource("telemetry://recent-spans")
        assert json.loads(recent.contents[0].text) == [], env  # type: ignore[union-attr]


def test_stdout_is_only_json_rpc_with_tracing_on() -> None:
    lines = [
        INITIALIZE,
        INITIALIZED,
        tool_call_line(2, "simulate_crash", {}),
        request_line(3, "resources/read", {"uri": "telemetry://recent-spans"}),
    ]
    done = run_server(FOLDER, "--log-format", "json", lines=lines)
    assert done.returncode == 0, done.stderr
    replies = [json.loads(line) for line in done.stdout.splitlines()]
    # Every request answered exactly once; the SDK answers concurrent requests as they finish, in no set order.
    assert sorted(reply["id"] for reply in replies) == [1, 2, 3]
    assert any(json.loads(line).get("event") == "span tools/call simulate_crash" for line in done.stderr.splitlines())


def test_inspector_calls_04_over_both_transports() -> None:
    stdio = inspector_cli(
        sys.executable,
        str(SERVER),
        "--method",
        "tools/call",
        "--tool-name",
        "echo_message",
        "--tool-arg",
        "message=traced",
    )
    assert stdio["content"][0]["text"] == "Echo: traced"
    with ServerProcess(FOLDER) as proc:
        over_http = inspector_cli(proc.url, "--method", "resources/read", "--uri", "telemetry://recent-spans")
    assert any(span["name"] == "initialize" for span in json.loads(over_http["contents"][0]["text"]))
