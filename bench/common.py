"""What every benchmark here needs: start a module's server, drive it with SDK clients, measure it.

A figure is only as good as its comparison: each benchmark runs the
contenders side by side, in alternating rounds, in one run.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = httpx2.Timeout(30, read=300)
# A round lasts `--seconds` and at least this many calls: the kernel counts CPU time in 10 ms ticks, which a
# few calls on a busy machine would turn into a figure of a few ticks.
MIN_CALLS = 200
STARTUP_SECONDS = 60  # a proxy starting twenty stdio backends on two busy cores takes a while


def arguments(description: str, extra: Sequence[tuple[str, str]] = ()) -> argparse.Namespace:
    """The knobs every benchmark has: how many rounds, how long each, how many clients at once.

    `extra` adds on/off flags of a benchmark's own, as (flag, help) pairs.
    """
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=8)
    for flag, help_text in extra:
        parser.add_argument(flag, action="store_true", help=help_text)
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(
    folder: str,
    env: Mapping[str, str],
    *args: str,
    script: str = "server.py",
    port: int | None = None,
    stderr: int | None = subprocess.DEVNULL,
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start a module over HTTP on a free port; returns its base URL once /healthz answers."""
    port = port or free_port()
    command = [sys.executable, str(REPO / folder / script), "-t", "http", "--addr", f"127.0.0.1:{port}", *args]
    return launch(command, port, env, stderr=stderr)


def launch(
    command: Sequence[str], port: int, env: Mapping[str, str], *, stderr: int | None = subprocess.DEVNULL
) -> tuple[str, subprocess.Popen[bytes]]:
    """Run a command that serves HTTP on `port`; returns its base URL once /healthz answers there."""
    process = subprocess.Popen(command, cwd=REPO, env=dict(env), stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return f"http://127.0.0.1:{port}", process
        except httpx2.TransportError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"{' '.join(command)} did not start")


def stop(*processes: subprocess.Popen[bytes]) -> None:
    for process in processes:
        process.terminate()
        process.wait()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Window:
    """One round's calls, from the moment every client is connected to the moment the last call ends.

    Connecting and listing tools stay outside: on a busy machine they can take
    longer than the round itself.
    """

    calls: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # used by the server process (if one was named) over the same window


async def throughput(
    url: str, seconds: float, concurrency: int, headers: Mapping[str, str] | None = None, pid: int | None = None
) -> Window:
    """How many `echo_message` calls `concurrency` SDK clients complete in `seconds` (and at least MIN_CALLS),
    and the CPU time process `pid` used meanwhile."""
    window = Window()
    connecting, calling = concurrency, concurrency
    all_connected = anyio.Event()
    started = cpu_before = 0.0

    def server_cpu() -> float:
        return cpu_seconds(pid) if pid is not None else 0.0

    async def worker() -> None:
        nonlocal connecting, calling, started, cpu_before
        async with (
            httpx2.AsyncClient(timeout=TIMEOUT, headers=headers) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            await client.list_tools()  # warm up: the client validates results against the listed schema
            connecting -= 1
            if connecting == 0:  # the last one in starts the clock
                started, cpu_before = time.monotonic(), server_cpu()
                all_connected.set()
            await all_connected.wait()
            while time.monotonic() < started + seconds or window.calls < MIN_CALLS:
                await client.call_tool("echo_message", {"message": "benchmark"})
                window.calls += 1
            calling -= 1
            if calling == 0:  # the last one out stops it
                window.seconds, window.cpu_seconds = time.monotonic() - started, server_cpu() - cpu_before

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return window


@dataclass
class Contender:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    headers: dict[str, str] = field(default_factory=dict)
    rates: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)


def race(contenders: Sequence[Contender], rounds: int, seconds: float, concurrency: int) -> None:
    """Alternate the contenders round by round, so that a noisy machine slows them alike."""
    for round_number in range(1, rounds + 1):
        for c in contenders:
            window = anyio.run(throughput, c.url, seconds, concurrency, c.headers, c.process.pid)
            c.rates.append(window.calls / window.seconds)
            c.cpu_ms.append(window.cpu_seconds * 1000 / max(window.calls, 1))
            print(
                f"round {round_number}: {c.name:<16} {c.rates[-1]:8.1f} calls/s, server CPU {c.cpu_ms[-1]:.2f} ms/call"
            )


def ratio(candidate: Contender, baseline: Contender) -> float:
    """The median, over rounds, of the candidate's throughput over the baseline's in the same round."""
    return paired_median(candidate.rates, baseline.rates)


def paired_median(candidate: Sequence[float], baseline: Sequence[float]) -> float:
    """The median, over rounds, of candidate over baseline in the same round.

    Each round's contenders ran back to back, so a slow spell of the machine
    (here a round can run at two thirds of the speed of the one before) slows
    both sides of one ratio, where a ratio of the overall medians would set a
    slow round of one against a fast round of the other.
    """
    return statistics.median(c / b for c, b in zip(candidate, baseline, strict=True))


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def report(baseline: Contender, candidate: Contender, goal: float) -> float:
    """Print the medians and the ratio; returns the ratio."""
    for c in (baseline, candidate):
        rate, cpu_ms = statistics.median(c.rates), statistics.median(c.cpu_ms)
        print(f"{c.name:<16} {rate:8.1f} calls/s, server CPU {cpu_ms:.2f} ms/call (medians)")
    measured = ratio(candidate, baseline)
    goal_text = f"goal: at least {goal:.0%}"
    print(f"{candidate.name} / {baseline.name} throughput: {measured:.1%} ({goal_text}) -> {verdict(measured >= goal)}")
    return measured
