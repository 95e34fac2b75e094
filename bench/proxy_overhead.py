"""What does the proxy add? A tool call to 01 directly, through a bare forwarder, and through 05, side by side.

    .venv/bin/python -m bench.proxy_overhead [--rounds 5] [--seconds 3] [--concurrency 8]

The contenders, all in front of one 01 over HTTP:
- `01 direct`: no proxy at all.
- `forwarder`: bench/forwarder.py, bytes passed on and nothing else: the
  floor under any Python proxy on this stack.
- `05, 1 backend`: 05 with 01 as its only backend.
- `05, 20 backends`: the same, plus 19 idle stdio copies of 01.

Latency: one client process with a session to each, calls one after another,
taking turns call by call (so a slow spell of the machine slows all alike),
median per call. Throughput and CPU: `--concurrency` clients at once, in
alternating rounds; CPU is the user and system time of the process in front
of the clients (/proc/<pid>/stat) over the calls it served in that round.

Goals (issue 18): 05's CPU per call at most 1.5 times the forwarder's, and
flat in the number of backends (20 against 1 within the machine's noise,
taken as 10 %). Sessions: how many times 05 asks its backend for a session
(`server/discover` or `initialize`) while serving; none after it started.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from bench.common import (
    REPO,
    TIMEOUT,
    Contender,
    arguments,
    free_port,
    launch,
    paired_median,
    race,
    start,
    stop,
    throughput,
    verdict,
)

CPU_GOAL = 1.5  # 05's CPU per call over the forwarder's
FLAT_GOAL = 1.10  # 05's CPU per call with 20 backends over with 1
IDLE_BACKENDS = 19
ENV = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}


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


def proxy_config(backend_url: str, idle: int) -> dict[str, object]:
    """05's config: 01 under its own names (prefix ""), and `idle` stdio copies of 01 that no call reaches."""
    copy = {"command": sys.executable, "args": [str(REPO / "01-basic-mcp" / "server.py"), "--log-level", "warning"]}
    servers: dict[str, Mapping[str, object]] = {"basic": {"url": backend_url, "prefix": ""}}
    servers.update({f"idle{number:02}": copy for number in range(1, idle + 1)})
    return {"mcpServers": servers}


def start_proxy(backend_url: str, idle: int, folder: Path) -> tuple[str, Contender]:
    """05 in front of 01 (and `idle` idle copies), its config written into `folder`."""
    config = folder / f"proxy-{idle + 1}.json"
    config.write_text(json.dumps(proxy_config(backend_url, idle)))
    url, process = start("05-mcp-proxy", ENV, "--config", str(config), "--log-level", "warning")
    return url, Contender(f"05, {idle + 1} backend{'s' if idle else ''}", url + "/mcp", process)


def main() -> None:
    args = arguments(__doc__ or "")
    print(f"load average at the start: {load()} (this machine's cores are shared; read the figures with it)")
    with (
        tempfile.NamedTemporaryFile("w+", suffix=".log") as backend_log,
        tempfile.TemporaryDirectory() as folder,
    ):
        backend, backend_process = start("01-basic-mcp", ENV, "--log-format", "json", stderr=backend_log.fileno())
        port = free_port()
        command = [sys.executable, "-m", "bench.forwarder", "--backend", backend, "--addr", f"127.0.0.1:{port}"]
        forwarder_url, forwarder_process = launch(command, port, ENV)
        direct = Contender("01 direct", backend + "/mcp", backend_process)
        forwarded = Contender("forwarder", forwarder_url + "/mcp", forwarder_process)
        _, proxied = start_proxy(backend + "/mcp", 0, Path(folder))
        _, crowded = start_proxy(backend + "/mcp", IDLE_BACKENDS, Path(folder))
        contenders = [direct, forwarded, proxied, crowded]
        try:
            latencies = anyio.run(median_latencies_ms, [c.url for c in contenders], 200 * args.rounds)
            race(contenders, args.rounds, args.seconds, args.concurrency)
            # Only 05's traffic now: how many sessions does it start at the backend for it?
            sessions_before = sessions_started(backend_log.name)
            anyio.run(throughput, proxied.url, args.seconds, args.concurrency, None)
            sessions = sessions_started(backend_log.name) - sessions_before
        finally:
            stop(proxied.process, crowded.process, forwarder_process, backend_process)
    summary(contenders, latencies, sessions, args.concurrency)
    print(f"load average at the end: {load()}")


def summary(contenders: list[Contender], latencies: list[float], sessions: int, concurrency: int) -> None:
    """The medians of each contender, then the two goals and the sessions count."""
    direct, forwarded, proxied, crowded = contenders
    print(f"\n{'':<16} {'latency, 1 client':>18} {f'calls/s, {concurrency} clients':>22} {'CPU ms/call':>12}")
    for contender, latency in zip(contenders, latencies, strict=True):
        rate, cpu = statistics.median(contender.rates), statistics.median(contender.cpu_ms)
        added = f"(+{latency - latencies[0]:.2f})" if contender is not direct else ""
        share = f"({paired_median(contender.rates, direct.rates):.0%})" if contender is not direct else ""
        print(f"{contender.name:<16} {latency:7.2f} ms {added:>8} {rate:13.1f} {share:>6} {cpu:12.2f}")
    goal(f"{proxied.name} / {forwarded.name}, CPU per call", paired_median(proxied.cpu_ms, forwarded.cpu_ms), CPU_GOAL)
    goal(f"{crowded.name} / {proxied.name}, CPU per call", paired_median(crowded.cpu_ms, proxied.cpu_ms), FLAT_GOAL)
    print(f"backend sessions 05 started while serving {concurrency} clients: {sessions} (goal: 0)")


def load() -> str:
    return ", ".join(f"{value:.1f}" for value in os.getloadavg()) + f" on {os.cpu_count()} cores"


def goal(what: str, measured: float, most: float) -> None:
    print(f"{what}: {measured:.2f} (goal: at most {most:.2f}) -> {verdict(measured <= most)}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
