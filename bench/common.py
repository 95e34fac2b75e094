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
    process = subprocess.Popen(command, env=dict(env), stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return f"http://127.0.0.1:{port}", process
        except httpx2.TransportError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"{folder}/{script} did not start")


def stop(*processes: subprocess.Popen[bytes]) -> None:
    for process in processes:
        process.terminate()
        process.wait()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def throughput(url: str, seconds: float, concurrency: int, headers: Mapping[str, str] | None = None) -> int:
    """How many `echo_message` calls `concurrency` SDK clients complete in `seconds`."""
    done = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        async with (
            httpx2.AsyncClient(timeout=TIMEOUT, headers=headers) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            await client.list_tools()  # warm up: the client validates results against the listed schema
            while time.monotonic() < deadline:
                await client.call_tool("echo_message", {"message": "benchmark"})
                done += 1

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return done


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
            cpu_before, started = cpu_seconds(c.process.pid), time.monotonic()
            calls = anyio.run(throughput, c.url, seconds, concurrency, c.headers)
            c.rates.append(calls / (time.monotonic() - started))
            c.cpu_ms.append((cpu_seconds(c.process.pid) - cpu_before) * 1000 / max(calls, 1))
            print(
                f"round {round_number}: {c.name:<16} {c.rates[-1]:8.1f} calls/s, server CPU {c.cpu_ms[-1]:.2f} ms/call"
            )


def ratio(candidate: Contender, baseline: Contender) -> float:
    """The median, over rounds, of the candidate's throughput over the baseline's in the same round.

    Each round's pair ran back to back, so a slow spell of the machine (here a
    round can run at two thirds of the speed of the one before) slows both
    sides of one ratio, where a ratio of the overall medians would set a slow
    round of one against a fast round of the other.
    """
    return statistics.median(c / b for c, b in zip(candidate.rates, baseline.rates, strict=True))


def report(baseline: Contender, candidate: Contender, goal: float) -> float:
    """Print the medians and the ratio; returns the ratio."""
    for c in (baseline, candidate):
        rate, cpu_ms = statistics.median(c.rates), statistics.median(c.cpu_ms)
        print(f"{c.name:<16} {rate:8.1f} calls/s, server CPU {cpu_ms:.2f} ms/call (medians)")
    measured = ratio(candidate, baseline)
    print(f"{candidate.name} / {baseline.name} throughput: {measured:.1%} (goal: at least {goal:.0%}) -> "
          f"{'met' if measured >= goal else 'NOT met'}")  # fmt: skip
    return measured
