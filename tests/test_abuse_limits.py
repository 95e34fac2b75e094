"""Abuse limits of the shared HTTP runner, attacked on the wire against real server processes.

Each attack comes from 127.0.0.1 and the bystander, a normal client that
must still be served, from 127.0.0.2 (Linux routes all of 127.0.0.0/8 to
loopback), so a per-address rule can tell the two apart.
"""

from __future__ import annotations

import selectors
import socket
import time

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from shared.config import parse_config
from shared.serve import HEADER_TIMEOUT
from shared.sessions import HALF_OPEN_SECONDS
from tests.harness import HTTP_TIMEOUT, INITIALIZE, ServerProcess

pytestmark = pytest.mark.anyio

BYSTANDER = "127.0.0.2"
CALLBACK = "http://127.0.0.1:3000/callback"
OAUTH_ENV = {
    "DEMO_PASSWORD": "demo-password-for-tests",
    "MACHINE_CLIENT_SECRET": "machine-secret-for-tests",
    "MCP_SERVER_CLIENT_SECRET": "mcp-server-secret-for-tests",
}


def bystander(base_url: str) -> httpx2.Client:
    """An HTTP client whose connections come from another loopback address than the attacker's."""
    return httpx2.Client(base_url=base_url, transport=httpx2.HTTPTransport(local_address=BYSTANDER), timeout=10)


def test_a_forged_x_forwarded_for_does_not_escape_the_per_address_registration_limit() -> None:
    args = ("--resource", "http://127.0.0.1:1/mcp", "--registrations-per-minute", "2")
    with ServerProcess("03-oauth-mcp", *args, env=OAUTH_ENV, script="authorization_server.py") as auth:
        body = {"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none", "client_name": "flood"}
        with httpx2.Client(base_url=auth.url, timeout=10) as attacker:
            statuses = [attacker.post("/register", json=body).status_code for _ in range(2)]
            assert statuses == [201, 201]
            for forged in ("203.0.113.7", "10.0.0.1", "127.0.0.2"):
                forged_headers = {"X-Forwarded-For": forged, "X-Forwarded-Proto": "https"}
                assert attacker.post("/register", json=body, headers=forged_headers).status_code == 429
        with bystander(auth.url) as other:
            assert other.post("/register", json=body).status_code == 201


def test_forwarded_headers_are_believed_only_from_the_proxies_named() -> None:
    config, _ = parse_config(["--trusted-proxies", "127.0.0.1, 10.0.0.0/8"], default_port=1)
    assert config.trusted_proxies == ("127.0.0.1", "10.0.0.0/8")
    assert parse_config([], default_port=1)[0].trusted_proxies == ()
    with pytest.raises(SystemExit):
        parse_config(["--trusted-proxies", "proxy.example"], default_port=1)


def test_requests_whose_headers_never_finish_are_closed_after_the_header_timeout() -> None:
    with ServerProcess("01-basic-mcp") as server:
        started = time.monotonic()
        slow = []
        for n in range(300):
            connection = socket.create_connection(("127.0.0.1", server.port))
            if n % 2:  # half of them send part of a request, the others nothing at all
                connection.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Never-Finished: ")
            slow.append(connection)
        try:
            with bystander(server.base_url) as other:
                assert other.get("/healthz").json() == {"status": "ok"}
            closed = wait_until_closed(slow, HEADER_TIMEOUT + 3)
            assert len(closed) == len(slow), f"{len(slow) - len(closed)} of {len(slow)} connections still open"
            assert time.monotonic() - started >= HEADER_TIMEOUT - 0.5  # closed by the deadline, not at once
            with bystander(server.base_url) as other:
                assert other.get("/healthz").json() == {"status": "ok"}
        finally:
            for connection in slow:
                connection.close()


def wait_until_closed(connections: list[socket.socket], seconds: float) -> set[socket.socket]:
    """The connections the server closed (an end of file to read) within `seconds`."""
    closed: set[socket.socket] = set()
    with selectors.DefaultSelector() as selector:
        for connection in connections:
            selector.register(connection, selectors.EVENT_READ)
        deadline = time.monotonic() + seconds
        while len(closed) < len(connections) and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                try:
                    data = ready.recv(4096)
                except ConnectionError:
                    data = b""
                if not data:
                    closed.add(ready)
                    selector.unregister(ready)
    return closed


async def test_an_initialize_flood_from_one_address_leaves_room_for_other_clients() -> None:
    # 20 sessions in all, so 2 per address; the default 10,000 (1,000 per address) works the same way
    legacy = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    with ServerProcess("01-basic-mcp", "--max-sessions", "20") as server:
        async with httpx2.AsyncClient(timeout=10) as attacker:
            answers: list[httpx2.Response] = []

            async def initialize() -> None:
                answers.append(await attacker.post(server.url, content=INITIALIZE, headers=legacy))

            async with anyio.create_task_group() as flood:  # all at once, as a flood comes
                for _ in range(25):
                    flood.start_soon(initialize)
            transport = httpx2.AsyncHTTPTransport(local_address=BYSTANDER)
            async with (
                httpx2.AsyncClient(transport=transport, timeout=HTTP_TIMEOUT) as http,
                Client(streamable_http_client(server.url, http_client=http), mode="legacy") as other,
            ):
                result = await other.call_tool("echo_message", {"message": "still served"})
                assert "still served" in str(result.content)
            assert sorted(a.status_code for a in answers) == [200] * 2 + [503] * 23
            async with Client(server.url) as modern:  # 2026-07-28 has no sessions: the quota never applies
                assert "unlimited" in str((await modern.call_tool("echo_message", {"message": "unlimited"})).content)
            # A session the attacker ends frees its place.
            session_id = next(a.headers["mcp-session-id"] for a in answers if a.status_code == 200)
            ended = {"Mcp-Session-Id": session_id, "Mcp-Protocol-Version": "2025-11-25"}
            assert (await attacker.delete(server.url, headers=ended)).status_code == 200
            assert (await attacker.post(server.url, content=INITIALIZE, headers=legacy)).status_code == 200
            assert (await attacker.post(server.url, content=INITIALIZE, headers=legacy)).status_code == 503


async def test_sessions_a_flood_opened_and_never_used_make_way_for_a_client_from_the_same_address() -> None:
    legacy = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    with ServerProcess("01-basic-mcp", "--max-sessions", "20") as server:  # 2 sessions per address
        async with httpx2.AsyncClient(timeout=10) as attacker:
            flood = [await attacker.post(server.url, content=INITIALIZE, headers=legacy) for _ in range(2)]
            assert [a.status_code for a in flood] == [200, 200]
            assert (await attacker.post(server.url, content=INITIALIZE, headers=legacy)).status_code == 503
            await anyio.sleep(HALF_OPEN_SECONDS + 0.5)
            async with Client(streamable_http_client(server.url), mode="legacy") as victim:  # also 127.0.0.1
                assert "in" in str((await victim.call_tool("echo_message", {"message": "in"})).content)
                for answer in flood:  # ended in the SDK too, not just forgotten
                    ended = {"Mcp-Session-Id": answer.headers["mcp-session-id"], "Mcp-Protocol-Version": "2025-11-25"}
                    ping = b'{"jsonrpc":"2.0","id":2,"method":"ping"}'
                    reply = await attacker.post(server.url, content=ping, headers={**legacy, **ended})
                    assert reply.status_code == 404
                assert (await attacker.post(server.url, content=INITIALIZE, headers=legacy)).status_code == 200
                # The address is at its share again; the victim's session is in use, so it is never the one ended.
                assert (await attacker.post(server.url, content=INITIALIZE, headers=legacy)).status_code == 503
                assert "still" in str((await victim.call_tool("echo_message", {"message": "still"})).content)
