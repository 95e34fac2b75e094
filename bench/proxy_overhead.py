"""What does the proxy add? A tool call straight to 01 against the same call through 05, side by side.

    .venv/bin/python -m bench.proxy_overhead [--rounds 5] [--seconds 3] [--concurrency 32]

Latency: one client process with a session to each, calls one after another,
alternating between direct and proxied call by call (so that a slow spell of
the machine slows both alike), median per call. Throughput:
`--concurrency` clients at once. Sessions: how many times the backend was
asked to start a session (`server/discover` or `initialize`) while the proxy
served every call; it should be one. Goals: at most 1.5 ms added to the
median, at least 60 % of direct throughput.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from bench.common import REPO, TIMEOUT, Contender, arguments, race, report, start, stop, throughput

LATENCY_GOAL_MS = 1.5
THROUGHPUT_GOAL = 0.60


async def median_latencies_ms(urls: list[str], calls: int) -> list[float]:
    """The median time of a call to each URL, the calls taking turns: one to each, then again."""
    async with AsyncExitStack() as stack:
        clients = []
        for url in urls:
            http = await stack.enter_async_context(httpx2.AsyncClient(timeout=TIMEOUT))
            client = await stack.enter_async_context(Client(streamable_http_client(url, http_client=http)))
            await client.list_tools()
            clients.append(client)
        times: list[list[float]] = [[] for _ in urls]
        for _ in range(calls):
            for client, samples in zip(clients, times, strict=True):
                started = time.perf_counter()
                await client.call_tool("echo_message", {"message": "latency"})
                samples.append((time.perf_counter() - started) * 1000)
    return [statistics.median(samples) for samples in times]


def sessions_started(log_path: str) -> int:
    with open(log_path) as log:
        events = [json.loads(line) for line in log if line.startswith("{")]
    return sum(e.get("event") == "request" and e.get("method") in ("server/discover", "initialize") for e in events)


def main() -> None:
    args = arguments(__doc__ or "")
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    with (
        tempfile.NamedTemporaryFile("w+", suffix=".log") as backend_log,
        tempfile.NamedTemporaryFile("w", suffix=".json") as config_file,
    ):
        backend, backend_process = start("01-basic-mcp", env, "--log-format", "json", stderr=backend_log.fileno())
        json.dump({"mcpServers": {"basic": {"url": backend + "/mcp", "prefix": ""}}}, config_file)
        config_file.flush()
        proxy, proxy_process = start("05-mcp-proxy", env, "--config", config_file.name)
        direct = Contender("01 direct", backend + "/mcp", backend_process)
        proxied = Contender("through 05", proxy + "/mcp", proxy_process)
        try:
            direct_ms, proxied_ms = anyio.run(median_latencies_ms, [direct.url, proxied.url], 200 * args.rounds)
            race([direct, proxied], args.rounds, args.seconds, args.concurrency)
            # Only the proxy's traffic now: how many sessions does it start at the backend for it?
            sessions_before = sessions_started(backend_log.name)
            anyio.run(throughput, proxied.url, args.seconds, args.concurrency, None)
            sessions = sessions_started(backend_log.name) - sessions_before
        finally:
            stop(proxy_process, backend_process)
    print(f"median latency, one client: direct {direct_ms:.2f} ms, through the proxy {proxied_ms:.2f} ms")
    added = proxied_ms - direct_ms
    print(f"added by the proxy: {added:.2f} ms (goal: at most {LATENCY_GOAL_MS} ms) -> "
          f"{'met' if added <= LATENCY_GOAL_MS else 'NOT met'}")  # fmt: skip
    report(direct, proxied, THROUGHPUT_GOAL)
    print(f"backend sessions the proxy started while serving {args.concurrency} clients: {sessions} (goal: 0)")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
