"""OpenTelemetry for MCP servers: traces, metrics, and the wiring between them and the logs.

The SDK already opens one SERVER span per MCP message (named `tools/call
add_numbers`, with `mcp.method.name`, `jsonrpc.request.id`, `gen_ai.tool.name`
…) and continues the caller's trace from `params._meta.traceparent`. It
records nothing until a `TracerProvider` exists, and it has no metrics. This
file adds what is missing, following the OpenTelemetry semantic conventions
for MCP:

- `setup_telemetry()` installs the providers. With no configuration each
  finished span is one log line on stderr; the standard `OTEL_*` variables
  switch to OTLP, change sampling, or turn everything off.
- `TelemetryMiddleware` enriches the SDK's span (transport, session, client
  address) and records the `mcp.server.operation.duration` histogram.
- `RecentSpans` keeps the last spans in memory, for a server to show as a
  resource: traces without installing a tracing backend.
- `metrics_endpoint` serves the metrics in Prometheus format at `/metrics`.

Tool arguments and results are not recorded unless the server opts in.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from starlette.requests import Request
from starlette.responses import Response

from shared.logs import error_type

# The semantic-convention names, written out: the Python constants for them are
# deprecated where they ship today (`opentelemetry.semconv._incubating`).
MCP_METHOD_NAME = "mcp.method.name"
MCP_PROTOCOL_VERSION = "mcp.protocol.version"
MCP_SESSION_ID = "mcp.session.id"
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
GEN_AI_PROMPT_NAME = "gen_ai.prompt.name"
GEN_AI_TOOL_CALL_ARGUMENTS = "gen_ai.tool.call.arguments"
GEN_AI_TOOL_CALL_RESULT = "gen_ai.tool.call.result"
ERROR_TYPE = "error.type"
NETWORK_TRANSPORT = "network.transport"
NETWORK_PROTOCOL_NAME = "network.protocol.name"
NETWORK_PROTOCOL_VERSION = "network.protocol.version"
CLIENT_ADDRESS = "client.address"
CLIENT_PORT = "client.port"

SERVER_OPERATION_DURATION = "mcp.server.operation.duration"
DURATION_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
INSTRUMENTATION_NAME = "mcp-workshop"

log = structlog.get_logger("otel")


def span_summary(span: ReadableSpan) -> dict[str, Any]:
    """The few fields of a finished span a person wants to read."""
    context = span.get_span_context()
    attributes = dict(span.attributes or {})
    duration_ns = (span.end_time or 0) - (span.start_time or 0)
    summary: dict[str, Any] = {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": format(context.trace_id, "032x") if context else "",
        "span_id": format(context.span_id, "016x") if context else "",
        "parent_span_id": format(span.parent.span_id, "016x") if span.parent else None,
        "duration_ms": round(duration_ns / 1e6, 3),
        "status": span.status.status_code.name,
    }
    if ERROR_TYPE in attributes:
        summary[ERROR_TYPE] = attributes[ERROR_TYPE]
    summary["attributes"] = attributes
    summary["events"] = [event.name for event in span.events]
    return summary


class LogSpanExporter(SpanExporter):
    """Each finished span as one log line: on stderr, in the same format as every other line."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            summary = span_summary(span)
            summary.pop("attributes")
            name = summary.pop("name")
            log.info(f"span {name}", **{k.replace(".", "_"): v for k, v in summary.items() if v not in (None, [])})
        return SpanExportResult.SUCCESS


class RecentSpans(SpanProcessor):
    """The last `size` finished spans, newest last: a tracing backend small enough to live in the server.

    A span processor, not an exporter: it runs for every span, on the request's
    own path, so it only appends to a bounded deque (an exporter would need a
    processor around it that switches the context per span). Spans are
    summarised only when someone reads them, which is rare.
    """

    def __init__(self, size: int = 50) -> None:
        self._spans: deque[ReadableSpan] = deque(maxlen=size)

    def on_end(self, span: ReadableSpan) -> None:
        if span.context.trace_flags.sampled:  # as an exporter would see it: only what sampling kept
            self._spans.append(span)

    def snapshot(self) -> list[dict[str, Any]]:
        return [span_summary(span) for span in list(self._spans)]


def build_span_exporter(env: Mapping[str, str]) -> SpanExporter | None:
    """The exporter the standard variables ask for: console (our log line) unless OTLP is configured."""
    choice = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not choice:
        otlp_configured = "OTEL_EXPORTER_OTLP_ENDPOINT" in env or "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in env
        choice = "otlp" if otlp_configured else "console"
    if choice == "none":
        return None
    if choice == "otlp":
        from shared.otlp import InPlaceOTLPSpanExporter  # the library's exporter, with a faster encoder

        return InPlaceOTLPSpanExporter()
    return LogSpanExporter()


def build_metric_readers(env: Mapping[str, str]) -> list[MetricReader]:
    """Prometheus always (scraped at /metrics); OTLP too when an endpoint is configured."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    readers: list[MetricReader] = [PrometheusMetricReader()]
    otlp_configured = "OTEL_EXPORTER_OTLP_ENDPOINT" in env or "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT" in env
    if env.get("OTEL_METRICS_EXPORTER", "otlp" if otlp_configured else "").strip().lower() == "otlp":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    return readers


@dataclass
class Telemetry:
    """What `setup_telemetry` installed, so that the server can flush it on the way out."""

    enabled: bool
    recent: RecentSpans = field(default_factory=RecentSpans)
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None

    def shutdown(self) -> None:
        """Flush what is still batched: the last spans and metric points of a run must not be lost."""
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


def setup_telemetry(
    service_name: str, *, recent: RecentSpans | None = None, env: Mapping[str, str] | None = None
) -> Telemetry:
    """Install the global tracer and meter providers for this process (once; OpenTelemetry allows no second time).

    The providers read the standard variables themselves: `OTEL_TRACES_SAMPLER`
    and `OTEL_TRACES_SAMPLER_ARG` for sampling, `OTEL_SERVICE_NAME` and
    `OTEL_RESOURCE_ATTRIBUTES` for the resource, `OTEL_EXPORTER_OTLP_*` for the
    exporters. `OTEL_SDK_DISABLED=true` turns all of it off.
    """
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Telemetry(enabled=False)
    resource = Resource.create({} if "OTEL_SERVICE_NAME" in env else {SERVICE_NAME: service_name})
    telemetry = Telemetry(enabled=True, recent=recent or RecentSpans())
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(telemetry.recent)
    exporter = build_span_exporter(env)
    if exporter is not None:
        # Batching keeps export (a log write, a network call) off the request path.
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    meter_provider = MeterProvider(resource=resource, metric_readers=build_metric_readers(env))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    telemetry.tracer_provider, telemetry.meter_provider = tracer_provider, meter_provider
    return telemetry


def transport_attributes(request: Request | None) -> dict[str, Any]:
    """The `network.*` and `client.*` attributes: stdio is a pipe, streamable HTTP runs over TCP."""
    if request is None:
        return {NETWORK_TRANSPORT: "pipe"}
    version = str(request.scope.get("http_version", "1.1"))
    attributes: dict[str, Any] = {NETWORK_TRANSPORT: "tcp", NETWORK_PROTOCOL_NAME: "http"}
    attributes[NETWORK_PROTOCOL_VERSION] = version
    if request.client is not None:
        attributes[CLIENT_ADDRESS], attributes[CLIENT_PORT] = request.client.host, request.client.port
    return attributes


class TelemetryMiddleware:
    """MCP middleware: add what the SDK's span lacks, and record how long each operation took.

    It runs inside the SDK's SERVER span, so `trace.get_current_span()` is
    that span: we enrich it rather than open a second one. The histogram's
    attributes follow the convention and never include the session or
    request id, which would give every request a time series of its own.
    """

    def __init__(self, *, record_payloads: bool = False, meter_provider: metrics.MeterProvider | None = None) -> None:
        self.record_payloads = record_payloads
        meter = (meter_provider or metrics.get_meter_provider()).get_meter(INSTRUMENTATION_NAME)
        self.duration = meter.create_histogram(
            SERVER_OPERATION_DURATION,
            unit="s",
            description="MCP request or notification duration as observed on the receiver",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        span = trace.get_current_span()
        request = ctx.request if isinstance(ctx.request, Request) else None
        network = transport_attributes(request)
        span.set_attributes(network)
        if request is not None and (session_id := request.headers.get("mcp-session-id")):
            span.set_attribute(MCP_SESSION_ID, session_id)  # legacy HTTP only: 2026-07-28 has no sessions

        params = ctx.params or {}
        name = params.get("name") if isinstance(params.get("name"), str) else None
        metric_attributes: dict[str, Any] = {MCP_METHOD_NAME: ctx.method, MCP_PROTOCOL_VERSION: ctx.protocol_version}
        metric_attributes[NETWORK_TRANSPORT] = network[NETWORK_TRANSPORT]
        if ctx.method == "tools/call":
            metric_attributes[GEN_AI_OPERATION_NAME] = "execute_tool"
            if self.record_payloads:
                span.set_attribute(GEN_AI_TOOL_CALL_ARGUMENTS, json.dumps(params.get("arguments"), default=str))

        started = time.perf_counter()
        try:
            result = await call_next(ctx)
        except Exception as exc:
            metric_attributes[ERROR_TYPE] = error_type(exc)
            raise
        else:
            if isinstance(result, dict) and result.get("isError"):
                metric_attributes[ERROR_TYPE] = "tool_error"
            if self.record_payloads and ctx.method == "tools/call":
                span.set_attribute(GEN_AI_TOOL_CALL_RESULT, json.dumps(result, default=str))
            return result
        finally:
            # A refused request's name was chosen by the caller, maybe a new one every time: as a metric
            # label it would grow a time series per guess. It stays on the span, where that is harmless.
            if name is not None and metric_attributes.get(ERROR_TYPE) != "-32602":
                if ctx.method == "tools/call":
                    metric_attributes[GEN_AI_TOOL_NAME] = name
                elif ctx.method == "prompts/get":
                    metric_attributes[GEN_AI_PROMPT_NAME] = name
            self.duration.record(time.perf_counter() - started, metric_attributes)


async def metrics_endpoint(_request: Request) -> Response:
    """Prometheus text format, for `curl` or a Prometheus scrape."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
