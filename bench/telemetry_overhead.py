"""How much throughput does full telemetry cost? 04 (traced, measured, batching OTLP export) against 01 (untraced).

    .venv/bin/python -m bench.telemetry_overhead [--rounds 5] [--seconds 3] [--concurrency 8]

Both servers run as real processes over streamable HTTP, the same tool
(`echo_message`) is called by the same SDK clients, and the rounds alternate
so that a noisy machine slows both alike. The figure is the median
throughput of 04 over that of 01; the goal is at least 90 %. 04 exports its
spans and metrics over OTLP/HTTP to a receiver in this process that accepts
and drops them, as a collector would.

Two more runs of 04 show where the cost lies, with the standard variables
and nothing else changed: spans kept only in memory (`OTEL_TRACES_EXPORTER=none`:
no span is encoded or sent), and one trace in ten sampled
(`OTEL_TRACES_SAMPLER=parentbased_traceidratio`, the usual setting in
production). `--goal-only` leaves them out.
"""

from __future__ import annotations

import subprocess
import threading
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.common import Contender, arguments, free_port, race, ratio, report, start, stop

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


# What each extra run of 04 changes, in the standard OpenTelemetry variables.
BREAKDOWN = {
    "04 spans unsent": {"OTEL_TRACES_EXPORTER": "none"},
    "04 sampled 10%": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
}


def main() -> None:
    args = arguments(__doc__ or "", extra=[("--goal-only", "only 01 and 04 with full telemetry, not the breakdown")])

    collector, collector_server = start_collector()
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    telemetry_env = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": collector}
    contenders = [
        Contender("01 untraced", *served("01-basic-mcp", env)),
        Contender("04 telemetry", *served("04-observability", telemetry_env)),
    ]
    if not args.goal_only:
        for name, changes in BREAKDOWN.items():
            contenders.append(Contender(name, *served("04-observability", {**telemetry_env, **changes})))
    try:
        race(contenders, args.rounds, args.seconds, args.concurrency)
    finally:
        stop(*(c.process for c in contenders))
        collector_server.should_exit = True
    untraced, traced, *breakdown = contenders
    report(untraced, traced, GOAL)
    for c in breakdown:
        print(f"{c.name} / {untraced.name} throughput: {ratio(c, untraced):.1%} (where the cost lies; no goal)")


def served(folder: str, env: dict[str, str]) -> tuple[str, subprocess.Popen[bytes]]:
    """A module started over HTTP: its MCP endpoint and its process."""
    base, process = start(folder, env)
    return base + "/mcp", process


if __name__ == "__main__":
    main()
