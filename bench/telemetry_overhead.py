"""What 04's telemetry costs per call, next to the OpenTelemetry SDK's own span, histogram point and export alone.

    .venv/bin/python -m bench.telemetry_overhead [--rounds 7] [--calls 4096]

The goal (issue 18): at most 1.2 times the floor, the floor being what any
MCP telemetry must cost: the SERVER span the MCP SDK opens, one point of the
`mcp.server.operation.duration` histogram, and the span sent by the
OpenTelemetry SDK's own OTLP/HTTP exporter.

Measured in CPU time per call: user plus system time of the process, every
thread included, so the batch processor's export thread counts. Each
contender is a process of its own (OpenTelemetry takes one tracer provider
per process), and the rounds alternate between them. In each, a `tools/call`
over HTTP goes through the MCP SDK's own server middleware, which opens the
span, and whatever the contender adds inside it:

- no telemetry: no provider installed, so the span is the API's no-op; what
  the loop itself costs, subtracted from the others;
- the SDK alone: a tracer provider batching to `OTLPSpanExporter`, a meter
  provider with one OTLP reader, and one histogram point per call;
- 04: `setup_telemetry()` and `TelemetryMiddleware`, as 04's server runs them;
- 04, SDK encoder: the same, with the SDK's exporter in place of
  `shared/otlp.py`'s: what encoding the spans by hand saves.

Spans and metrics go to an OTLP/HTTP receiver in this process that accepts
and drops them, as a collector would; each round ends with a flush, so every
span of the round is paid for in it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import anyio
import uvicorn
from mcp.server import Server
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp_types import RequestParamsMeta
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.common import free_port

GOAL = 1.2
CONTENDERS = ("no telemetry", "the SDK alone", "04", "04, SDK encoder")
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"  # as a client that traces sends it
RESULT = {"content": [{"type": "text", "text": "benchmark"}], "isError": False}

Middleware = Callable[[ServerRequestContext[Any, Any], CallNext], Any]
Installed = tuple[list[Middleware], Callable[[], object]]  # what a contender adds inside the span, and its flush


def start_collector() -> tuple[str, uvicorn.Server]:
    """An OTLP/HTTP endpoint that accepts everything and keeps nothing, on a thread of its own."""

    async def accept(_request: Request) -> Response:
        return Response(b"", media_type="application/x-protobuf")

    routes = [Route(path, accept, methods=["POST"]) for path in ("/v1/traces", "/v1/metrics")]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=routes), host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{port}", server


def http_request() -> Request:
    """The Starlette request a `tools/call` over streamable HTTP arrives with (what 04 reads the transport from)."""
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "path": "/mcp",
        "headers": [(b"mcp-session-id", b"5f0c1d2e3f4a4b5c8d9e0f1a2b3c4d5e")],
        "client": ("127.0.0.1", 50123),
    }
    return Request(scope)


def call_context(request_id: int, request: Request) -> ServerRequestContext[Any, Any]:
    return ServerRequestContext(
        session=None,  # type: ignore[arg-type]  # no middleware measured here reads it
        lifespan_context=None,
        protocol_version="2025-11-25",
        method="tools/call",
        params={"name": "echo_message", "arguments": {"message": "benchmark"}},
        request_id=request_id,
        meta=cast("RequestParamsMeta", {"traceparent": TRACEPARENT}),  # `_meta` as a client that traces sends it
        request=request,
    )


async def tool(_ctx: ServerRequestContext[Any, Any]) -> HandlerResult:
    return RESULT


def chain(middleware: list[Middleware]) -> CallNext:
    """The middleware around the tool, outermost first, as the SDK runs a server's list."""
    call_next: CallNext = tool
    for outer in reversed(middleware):

        def wrapped(ctx: ServerRequestContext[Any, Any], inner: CallNext = call_next, mw: Middleware = outer) -> Any:
            return mw(ctx, inner)

        call_next = wrapped
    return call_next


def sdk_alone() -> Installed:
    """The floor: the SDK's span, batched to the SDK's OTLP exporter, and one histogram point per call."""
    from opentelemetry import metrics, trace
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from shared.telemetry import DURATION_BUCKETS, SERVER_OPERATION_DURATION

    resource = Resource.create({"service.name": "bench"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    reader = PeriodicExportingMetricReader(OTLPMetricExporter())
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    duration = metrics.get_meter("bench").create_histogram(
        SERVER_OPERATION_DURATION, unit="s", explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS)
    )
    # The attributes the convention recommends for the point, the same 04 records.
    attributes = {
        "mcp.method.name": "tools/call",
        "mcp.protocol.version": "2025-11-25",
        "network.transport": "tcp",
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "echo_message",
    }

    async def one_point(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        started = time.perf_counter()
        try:
            return await call_next(ctx)
        finally:
            duration.record(time.perf_counter() - started, attributes)

    return [one_point], lambda: tracer_provider.force_flush()


def workshop(sdk_encoder: bool) -> Installed:
    """04: its providers and its middleware as its server.py installs them; or with the SDK's exporter instead.

    The second shows what `shared/otlp.py` saves: the same telemetry, with the
    spans encoded by the library (bench/README.md, "Hand-written code").
    """
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from shared.telemetry import TelemetryMiddleware, setup_telemetry

    installed = setup_telemetry("bench", env={"OTEL_TRACES_EXPORTER": "none"} if sdk_encoder else None)
    provider = installed.tracer_provider
    assert provider is not None
    if sdk_encoder:
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return [TelemetryMiddleware()], lambda: provider.force_flush()


def no_telemetry() -> Installed:
    return [], lambda: None


def worker(contender: str) -> None:
    """Serve rounds on stdin: each line a number of calls, each answer the CPU seconds they took."""
    builders: dict[str, Callable[[], Installed]] = {
        "no telemetry": no_telemetry,
        "the SDK alone": sdk_alone,
        "04": lambda: workshop(sdk_encoder=False),
        "04, SDK encoder": lambda: workshop(sdk_encoder=True),
    }
    inner, flush = builders[contender]()
    # A new low-level server starts with one middleware: the SDK's own, which opens the SERVER span.
    sdk_span = Server("bench").middleware
    call = chain([*sdk_span, *inner])
    request = http_request()

    async def calls(count: int) -> None:
        for request_id in range(count):
            await call(call_context(request_id, request))

    for line in sys.stdin:
        started = time.process_time()
        anyio.run(calls, int(line))
        flush()
        print(time.process_time() - started, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=4096, help="calls per round and contender")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return

    endpoint, collector = start_collector()
    command = [sys.executable, "-m", "bench.telemetry_overhead", "--worker"]
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}  # where both exporters send
    processes = {
        name: subprocess.Popen([*command, name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for name in CONTENDERS
    }
    micros: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    try:
        for round_number in range(0, args.rounds + 1):  # round 0 warms up and is not counted
            for name, process in processes.items():
                assert process.stdin is not None and process.stdout is not None
                process.stdin.write(f"{args.calls}\n")
                process.stdin.flush()
                per_call = float(process.stdout.readline()) * 1e6 / args.calls
                if round_number:
                    micros[name].append(per_call)
                    print(f"round {round_number}: {name:<15} {per_call:7.1f} µs CPU per call")
    finally:
        for process in processes.values():
            process.terminate()
            process.wait()
        collector.should_exit = True
    report(micros)


def report(micros: Mapping[str, list[float]]) -> None:
    """Each contender's median; each 04's telemetry cost over the floor's, as the median of the rounds' ratios."""
    base = micros["no telemetry"]
    for name in CONTENDERS:
        print(f"{name:<15} {statistics.median(micros[name]):7.1f} µs CPU per call (median)")

    def cost(name: str) -> float:
        return statistics.median(c - b for b, c in zip(base, micros[name], strict=True))

    print("telemetry per call: " + ", ".join(f"{name} {cost(name):.1f} µs" for name in CONTENDERS[1:]))
    for name in CONTENDERS[2:]:
        pairs = zip(base, micros["the SDK alone"], micros[name], strict=True)
        measured = statistics.median((c - b) / (f - b) for b, f, c in pairs)
        verdict = "met" if measured <= GOAL else "NOT met"
        print(f"{name} / the SDK alone: {measured:.2f} (goal: at most {GOAL}) -> {verdict}")


if __name__ == "__main__":
    main()
