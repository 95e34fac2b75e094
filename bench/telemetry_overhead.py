"""How much throughput does full telemetry cost? 04 (traced, measured, batching OTLP export) against 01 (untraced).

    .venv/bin/python -m bench.telemetry_overhead [--rounds 5] [--seconds 3] [--concurrency 8]

Both servers run as real processes over streamable HTTP, the same tool
(`echo_message`) is called by the same SDK clients, and the rounds alternate
so that a noisy machine slows both alike. The figure is the median
throughput of 04 over that of 01; the goal is at least 90 %. 04 exports its
spans and metrics over OTLP/HTTP to a receiver in this process that accepts
and drops them, as a collector would.
"""

from __future__ import annotations

import threading
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.common import Contender, arguments, free_port, race, report, start, stop

GOAL = 0.90


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


def main() -> None:
    args = arguments(__doc__ or "")

    collector, collector_server = start_collector()
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    base_01, process_01 = start("01-basic-mcp", env)
    base_04, process_04 = start("04-observability", {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": collector})
    untraced = Contender("01 untraced", base_01 + "/mcp", process_01)
    traced = Contender("04 telemetry", base_04 + "/mcp", process_04)
    try:
        race([untraced, traced], args.rounds, args.seconds, args.concurrency)
    finally:
        stop(process_01, process_04)
        collector_server.should_exit = True
    report(untraced, traced, GOAL)


if __name__ == "__main__":
    main()
