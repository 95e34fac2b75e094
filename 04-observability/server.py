"""04-observability: every MCP call as a trace, a metric and a log line.

.venv/bin/python 04-observability/server.py -t http          # http://127.0.0.1:8084/mcp, metrics at /metrics
.venv/bin/python 04-observability/server.py                  # stdio; spans print to stderr
OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 .venv/bin/python 04-observability/server.py -t http
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import structlog
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from opentelemetry import metrics, trace
from starlette.routing import Route

from shared import (
    RecentSpans,
    TelemetryMiddleware,
    add_numbers,
    build_parser,
    configure_logging,
    echo_message,
    log_requests,
    metrics_endpoint,
    parse_config,
    project_version,
    refuse_unknown_tools,
    serve,
    setup_telemetry,
)

DEFAULT_PORT = 8084
SERVICE_NAME = "mcp-workshop-04"
RECORD_PAYLOADS_ENV = "OTEL_RECORD_TOOL_PAYLOADS"

log = structlog.get_logger("observability")

# setup_telemetry() in main() feeds it every finished span.
recent_spans = RecentSpans()
telemetry = TelemetryMiddleware(record_payloads=os.environ.get(RECORD_PAYLOADS_ENV, "") == "true")


mcp = MCPServer(
    "observability",
    version=project_version(),
    instructions="Echo, add and divide, with every call traced, measured and logged. Read telemetry://recent-spans.",
    # Outermost first, all inside the SDK's own span: measure, then log.
    middleware=[telemetry, log_requests],
)
refuse_unknown_tools(mcp)  # innermost: the span and the log line show the -32602 it answers
mcp.add_tool(echo_message)
mcp.add_tool(add_numbers)


# lab 04-telemetry: begin
# A metric of this server's own, beside the middleware's. setup_telemetry() installs the meter provider only in
# main(); until then OpenTelemetry hands out a stand-in that forwards to the real one once it is there.
divisions = metrics.get_meter(SERVICE_NAME).create_counter(
    "workshop.divisions", description="Divisions asked for, by whether the divisor was zero"
)
# lab 04-telemetry: end


@mcp.tool()
def divide_numbers(dividend: float, divisor: float) -> float:
    """Divide one number by another."""
    # lab 04-telemetry: begin
    # What only this tool knows goes on the span the SDK opened for the call, and into its own metric.
    by_zero = divisor == 0
    trace.get_current_span().set_attribute("workshop.divisor_is_zero", by_zero)
    divisions.add(1, {"workshop.divisor_is_zero": by_zero})
    # lab 04-telemetry: end
    if divisor == 0:
        raise ToolError("cannot divide by zero")  # an expected failure: the model reads this message
    return dividend / divisor


@mcp.tool()
def simulate_crash() -> str:
    """Fail with an unexpected exception, to see how a crash shows up in traces, metrics and logs."""
    raise RuntimeError("the database connection was lost")  # the model sees only "Error executing tool"


@mcp.resource("telemetry://recent-spans", name="recent-spans", mime_type="application/json")
def show_recent_spans() -> list[dict[str, object]]:
    """The last spans this server finished, newest last: your own traces, without a tracing backend."""
    return recent_spans.snapshot()


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser(__doc__, DEFAULT_PORT)
    parser.add_argument(
        "--record-payloads",
        action="store_true",
        default=os.environ.get(RECORD_PAYLOADS_ENV, "") == "true",
        help=f"record tool arguments and results on spans: they may hold personal data (env {RECORD_PAYLOADS_ENV})",
    )
    config, args = parse_config(argv, default_port=DEFAULT_PORT, parser=parser)
    configure_logging(config.log_level, config.log_format)
    installed = setup_telemetry(SERVICE_NAME, recent=recent_spans)
    telemetry.record_payloads = args.record_payloads
    try:
        serve(mcp, config, routes=[Route("/metrics", metrics_endpoint)])
    finally:
        installed.shutdown()  # flush the last batch of spans and metrics


if __name__ == "__main__":
    main()
