"""How much throughput does full telemetry cost? 04 (traced, measured, batching OTLP export) against 01 (untraced).

    .venv/bin/python bench/telemetry_overhead.py [--rounds 5] [--seconds 3] [--concurrency 8]

Both servers run as real processes over streamable HTTP, the same tool
(`echo_message`) is called by the same SDK client, and the rounds alternate
01, 04, 01, 04 … so that a noisy machine slows both alike. The figure is the
median throughput of 04 over the median of 01; the goal is at least 90 %.
04 exports its spans and metrics over OTLP/HTTP to a receiver in this
process that accepts and drops them, as a collector would.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import httpx2
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

REPO = Path(__file__).resolve().parent.parent
GOAL = 0.90


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_collector() -> tuple[str, uvicorn.Server]:
    """An OTLP/HTTP endpoint that accepts everything and keeps nothing, on a thread of its own."""

    async def accept(_request: object) -> Response:
        return Response(b"", media_type="application/x-protobuf")

    app = Starlette(
        routes=[Route("/v1/traces", accept, methods=["POST"]), Route("/v1/metrics", accept, methods=["POST"])]
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{port}", server


def start_server(folder: str, env: dict[str, str]) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    command = [sys.executable, str(REPO / folder / "server.py"), "-t", "http", "--addr", f"127.0.0.1:{port}"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return f"http://127.0.0.1:{port}/mcp", process
        except httpx2.TransportError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"{folder} did not start")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def throughput(url: str, seconds: float, concurrency: int) -> tuple[float, int]:
    """Tool calls per second that `concurrency` clients complete in `seconds`, and how many calls that was."""
    done = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        async with (
            httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=300)) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            await client.list_tools()  # warm up: the client validates results against the listed schema
            while time.monotonic() < deadline:
                await client.call_tool("echo_message", {"message": "benchmark"})
                done += 1

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return done / (time.monotonic() - started), done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    collector, collector_server = start_collector()
    base_env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    traced_env = {**base_env, "OTEL_EXPORTER_OTLP_ENDPOINT": collector}
    url_01, process_01 = start_server("01-basic-mcp", base_env)
    url_04, process_04 = start_server("04-observability", traced_env)
    results: dict[str, list[float]] = {"01": [], "04": []}
    cpu_per_call: dict[str, list[float]] = {"01": [], "04": []}
    servers = (("01", url_01, process_01), ("04", url_04, process_04))
    try:
        for round_number in range(1, args.rounds + 1):
            for name, url, process in servers:
                cpu_before = cpu_seconds(process.pid)
                calls_per_second, calls = anyio.run(throughput, url, args.seconds, args.concurrency)
                cpu_ms = (cpu_seconds(process.pid) - cpu_before) * 1000 / max(calls, 1)
                results[name].append(calls_per_second)
                cpu_per_call[name].append(cpu_ms)
                print(f"round {round_number}: {name} {calls_per_second:8.1f} calls/s, server CPU {cpu_ms:.2f} ms/call")
    finally:
        for process in (process_01, process_04):
            process.terminate()
            process.wait()
        collector_server.should_exit = True

    untraced, traced = statistics.median(results["01"]), statistics.median(results["04"])
    ratio = traced / untraced
    print(f"01 untraced:        {untraced:8.1f} calls/s (median of {args.rounds})")
    print(f"04 full telemetry:  {traced:8.1f} calls/s (median of {args.rounds})")
    cpu_01, cpu_04 = statistics.median(cpu_per_call["01"]), statistics.median(cpu_per_call["04"])
    print(f"server CPU per call: 01 {cpu_01:.2f} ms, 04 {cpu_04:.2f} ms (telemetry adds {cpu_04 / cpu_01 - 1:.0%})")
    print(f"04 / 01 throughput: {ratio:.1%} (goal: at least {GOAL:.0%}) -> {'met' if ratio >= GOAL else 'NOT met'}")


if __name__ == "__main__":
    main()
