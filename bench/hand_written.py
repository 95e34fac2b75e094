"""Hand-written code next to the library's way of doing the same job, side by side in one run.

    .venv/bin/python -m bench.hand_written [--rounds 5] [--requests 2000]

The rule (issue 18): where the library does the job for less than 5 % more
of a module's per-call cost, the library's way is used. Two comparisons, in
CPU time per request, rounds alternating between the contenders:

- headers: uvicorn's pure-Python h11 protocol, which trims the spaces around
  header values itself, against `shared/serve.py`'s httptools protocol, which
  trims them by hand. The CPU the server process spends per request, from
  /proc, each protocol in a server process of its own.
- token: a request to a protected backend through httpcore2 with the header
  `MachineToken` keeps (05's way, `05-mcp-proxy/machine_auth.py`), against
  `httpx2.AsyncClient(auth=…)` with the SDK's `ClientCredentialsOAuthProvider`
  holding a valid token. The CPU of the calling thread per request.

Every request is a `tools/call` POST with the headers an SDK client sends,
over a kept-alive connection on 127.0.0.1, to a small app that answers it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time

import anyio
import httpcore2
import httpx2
import uvicorn
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.shared.auth import OAuthToken
from starlette.types import Receive, Scope, Send

from bench.common import cpu_seconds, free_port
from shared import MemoryTokenStorage

BODY = json.dumps(
    {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "benchmark"}}}
).encode()
HEADERS = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "mcp-protocol-version": "2026-07-28",
    "mcp-method": "tools/call",
    "mcp-name": "echo",
    "user-agent": "bench",
}
ANSWER = b'{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"benchmark"}]}}'
TOKEN = "a-machine-token-for-the-benchmark"  # noqa: S105 - the app checks no token: only the header's cost counts


async def answer(scope: Scope, receive: Receive, send: Send) -> None:
    """The backend: reads the body, answers with a tool result, like a 2026-07-28 server with a plain JSON answer."""
    assert scope["type"] == "http"
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": ANSWER})


def serve(protocol: str, port: int) -> None:
    """Run the backend with uvicorn's h11 protocol or the workshop's, as `shared/serve.py` configures it."""
    from shared.serve import HttpProtocol

    http: type[asyncio.Protocol] | str = HttpProtocol if protocol == "ours" else "h11"
    uvicorn.run(answer, host="127.0.0.1", port=port, http=http, log_level="error", access_log=False, lifespan="off")


def start_backend(protocol: str) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.hand_written", "--serve", protocol, "--port", str(port)])
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx2.post(url, content=BODY, timeout=1)
            return url, process
        except httpx2.TransportError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"the {protocol} backend did not start")


async def through_httpcore(url: str, requests: int) -> float:
    """05's way: httpcore2, the header a `MachineToken` hands out. The calling thread's CPU per request."""
    headers = [(k.encode(), v.encode()) for k, v in {**HEADERS, "authorization": f"Bearer {TOKEN}"}.items()]
    async with httpcore2.AsyncConnectionPool() as pool:
        await pool.request("POST", url, headers=headers, content=BODY)  # the connection, opened before timing
        started = time.thread_time()
        for _ in range(requests):
            response = await pool.request("POST", url, headers=headers, content=BODY)
            assert response.status == 200
    return (time.thread_time() - started) / requests


async def through_httpx_auth(url: str, requests: int) -> float:
    """The library's way: httpx2 with the SDK's provider as `auth=`, holding a valid token."""
    storage = MemoryTokenStorage()
    await storage.set_tokens(OAuthToken(access_token=TOKEN, token_type="Bearer", expires_in=3600))  # noqa: S106
    # Never used: with a valid token and no 401, the provider asks no authorization server for anything.
    unused_secret = "unused"  # noqa: S105
    provider = ClientCredentialsOAuthProvider(
        server_url=url, storage=storage, client_id="bench", client_secret=unused_secret, issuer="http://127.0.0.1:9"
    )
    async with httpx2.AsyncClient(auth=provider) as http:
        await http.post(url, headers=HEADERS, content=BODY)
        started = time.thread_time()
        for _ in range(requests):
            response = await http.post(url, headers=HEADERS, content=BODY)
            assert response.status_code == 200
            assert response.request.headers["authorization"] == f"Bearer {TOKEN}"
    return (time.thread_time() - started) / requests


async def server_cpu(url: str, process: subprocess.Popen[bytes], requests: int) -> float:
    """The backend process's CPU per request, for requests sent the same way to each."""
    before = cpu_seconds(process.pid)
    await through_httpcore(url, requests)
    return (cpu_seconds(process.pid) - before) / requests


def median_us(values: list[float]) -> float:
    return statistics.median(values) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000, help="requests per round and contender")
    parser.add_argument("--serve", choices=("h11", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return

    backends = {name: start_backend(name) for name in ("h11", "ours")}
    headers: dict[str, list[float]] = {name: [] for name in backends}
    token: dict[str, list[float]] = {"httpcore2 + MachineToken": [], "httpx2 + auth=": []}
    url = backends["ours"][0]
    try:
        for round_number in range(args.rounds + 1):  # round 0 warms up and is not counted
            for name, (backend_url, process) in backends.items():
                measured = anyio.run(server_cpu, backend_url, process, args.requests)
                if round_number:
                    headers[name].append(measured)
            for name, way in zip(token, (through_httpcore, through_httpx_auth), strict=True):
                measured = anyio.run(way, url, args.requests)
                if round_number:
                    token[name].append(measured)
            if round_number:
                figures = [f"{name} {values[-1] * 1e6:.1f} µs" for name, values in {**headers, **token}.items()]
                print(f"round {round_number}: " + ", ".join(figures))
    finally:
        for _, process in backends.values():
            process.terminate()
            process.wait()
    print("server CPU per request: " + ", ".join(f"{n} {median_us(v):.1f} µs" for n, v in headers.items()))
    print("caller CPU per request: " + ", ".join(f"{n} {median_us(v):.1f} µs" for n, v in token.items()))
    h11_extra = statistics.median(h - o for h, o in zip(headers["h11"], headers["ours"], strict=True))
    auth_extra = statistics.median(x - c for c, x in zip(*token.values(), strict=True))
    print(f"the library's way, per request: h11 {h11_extra * 1e6:+.1f} µs, httpx2 + auth= {auth_extra * 1e6:+.1f} µs")


if __name__ == "__main__":
    main()
