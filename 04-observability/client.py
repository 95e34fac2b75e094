"""A client whose trace continues inside the server: one trace id across two processes.

    .venv/bin/python 04-observability/client.py                              # stdio: starts the server itself
    .venv/bin/python 04-observability/client.py http://127.0.0.1:8084/mcp    # and over HTTP, to a running server

It opens a root span, calls `add_numbers`, then reads the server's
`telemetry://recent-spans` resource to check that the server's span joined
the same trace as a child of the client's. It exits 1 if it did not.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

SERVER = Path(__file__).with_name("server.py")
TOOL_SPAN = "tools/call add_numbers"


async def traced_call(target: str | StdioServerParameters, tracer: trace.Tracer, sent: InMemorySpanExporter) -> str:
    """Call the tool inside a root span; return a line describing the joined trace, or raise if it did not join."""
    with tracer.start_as_current_span("agent turn") as root:
        trace_id = format(root.get_span_context().trace_id, "032x")
        async with Client(target) as client:
            # The SDK's client puts the current trace context into the request's _meta.traceparent.
            await client.call_tool("add_numbers", {"num1": 2, "num2": 3})
            resource = await client.read_resource("telemetry://recent-spans")
    server_spans = json.loads(resource.contents[0].text)  # type: ignore[union-attr]
    joined = [s for s in server_spans if s["name"] == TOOL_SPAN and s["trace_id"] == trace_id]
    client_spans = {format(s.context.span_id, "016x"): s.name for s in sent.get_finished_spans() if s.context}
    if not joined or joined[-1]["parent_span_id"] not in client_spans:
        raise SystemExit(f"the server's {TOOL_SPAN!r} span did not join trace {trace_id}")
    parent = client_spans[joined[-1]["parent_span_id"]]
    return f"trace {trace_id}: agent turn > {parent} > {TOOL_SPAN} (in the server)"


async def main(url: str | None) -> None:
    sent = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(sent))
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("workshop-client")
    # Over stdio the client starts the server; its logs (and span lines) go to our stderr.
    stdio = StdioServerParameters(command=sys.executable, args=[str(SERVER)])
    print("stdio:", await traced_call(stdio, tracer, sent))
    if url:
        print("http: ", await traced_call(url, tracer, sent))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else None)
