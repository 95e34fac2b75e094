"""03-oauth-mcp's MCP server, attacked on the wire the way an attacker would, in both protocol eras.

Each attack is sent as raw bytes to a real server process; after each one,
another client must still get its answer.
"""

from __future__ import annotations

import base64
import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from shared.config import parse_config
from shared.serve import build_http_app
from shared.upstream import EMBEDDED_URL
from tests.harness import INITIALIZE, INITIALIZED, ServerProcess, serve_app
from tests.test_03_oauth import (
    CALLBACK,
    ENV,
    FOLDER,
    MCP_SERVER_SECRET,
    Stack,
    authorize_url,
    machine_token,
    pkce,
    redirect_params,
    register,
    server,
    sign_in,
    stack,
)

__all__ = ["stack"]  # the module-scoped authorization server and MCP server of test_03_oauth, started anew here

pytestmark = pytest.mark.anyio

ACCEPT = "application/json, text/event-stream"
MODERN = "2026-07-28"
LEGACY = "2025-11-25"
ADMIN_CHALLENGE = 'scope="mcp:read mcp:admin"'
ADMIN_IN_BASE64 = "=?base64?" + base64.b64encode(b"list_oauth_clients").decode() + "?="  # the SDK's header encoding


@pytest.fixture(scope="module")
def target(stack: Stack) -> Iterator[ServerProcess]:
    """A second MCP server process on the port the authorization server also issues tokens for: its PID is ours."""
    with ServerProcess(FOLDER, "--addr", f"127.0.0.1:{stack.other_port}", "--issuer", stack.issuer, env=ENV) as proc:
        yield proc


@pytest.fixture(scope="module")
def read_token(stack: Stack, target: ServerProcess) -> str:
    return machine_token(stack, target.url)  # mcp:read, nothing more


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def still_serves(target: ServerProcess, token: str) -> None:
    """Another client's call, answered."""
    response = post(target, call('"who_am_i"', MODERN), modern_headers("who_am_i", token))
    assert response.status_code == 200, response.text
    assert "mcp:read" in response.text


def call(name_json: str, era: str, params: str | None = None) -> bytes:
    """A `tools/call` body as raw JSON text, so that escapes and duplicate keys reach the server as written."""
    meta = {"io.modelcontextprotocol/protocolVersion": era, "io.modelcontextprotocol/clientCapabilities": {}}
    envelope = f', "_meta": {json.dumps(meta)}' if era == MODERN else ""
    params = params if params is not None else f'{{"name": {name_json}, "arguments": {{}}{envelope}}}'
    return f'{{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {params}}}'.encode()


def modern_headers(mcp_name: str | None, token: str | None) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": ACCEPT, "mcp-protocol-version": MODERN}
    headers["mcp-method"] = "tools/call"
    if mcp_name is not None:
        headers["mcp-name"] = mcp_name
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return headers


def legacy_headers(target: ServerProcess, token: str) -> dict[str, str]:
    """A 2025-11-25 session opened with `token`, and the headers that use it."""
    headers = {"content-type": "application/json", "accept": ACCEPT, "authorization": f"Bearer {token}"}
    opened = httpx2.post(target.url, content=INITIALIZE, headers=headers)
    assert opened.status_code == 200, opened.text
    headers |= {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": LEGACY}
    assert httpx2.post(target.url, content=INITIALIZED, headers=headers).status_code == 202
    return headers


def post(target: ServerProcess, body: bytes, headers: dict[str, str]) -> httpx2.Response:
    return httpx2.post(target.url, content=body, headers=headers, timeout=30)


# --- class 1: memory spent before authentication ----------------------------------------------


def stream_body(port: int, head: str, total: int, chunked: bool) -> bytes:
    """Send `total` bytes of body in 1 MB pieces, stopping as soon as the server answers; return the answer."""
    piece = b"x" * (1 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
        sock.sendall(f"{head}{framing}\r\n\r\n".encode())
        sent, answer = 0, b""
        while sent < total:
            readable, writable, _ = select.select([sock], [sock], [], 30)
            if readable:
                break
            if writable:
                try:
                    sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
                except OSError:  # the server hung up after answering: what it answered is below
                    break
                sent += len(piece)
        if sent >= total and chunked:
            sock.sendall(b"0\r\n\r\n")
        sock.settimeout(30)
        with contextlib.suppress(OSError):  # a reset after the answer, when the server stops reading
            while b"\r\n\r\n" not in answer and (data := sock.recv(65536)):
                answer += data
        return answer


def request_head(target: ServerProcess, token: str | None) -> str:
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    return (
        f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\nContent-Type: application/json\r\n"
        f"Accept: {ACCEPT}\r\n{auth}"
    )


def test_anonymous_bodies_are_refused_unread_and_memory_stays_flat(target: ServerProcess, read_token: str) -> None:
    assert target.proc is not None
    still_serves(target, read_token)
    before = rss_kib(target.proc.pid)
    size = 200 << 20
    answers: list[bytes] = []
    heads = [request_head(target, None), request_head(target, None), request_head(target, "not-a-token")]
    threads = [
        threading.Thread(target=lambda h=h, c=c: answers.append(stream_body(target.port, h, size, c)))
        for h, c in zip(heads, [False, True, False], strict=True)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    still_serves(target, read_token)  # while the three are sending
    for thread in threads:
        thread.join(timeout=120)
    grown_mib = (rss_kib(target.proc.pid) - before) / 1024
    assert len(answers) == 3 and all(a.startswith(b"HTTP/1.1 401") for a in answers), answers
    assert grown_mib < 40, f"the server grew by {grown_mib:.0f} MiB"
    still_serves(target, read_token)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_authenticated_body_over_the_cap_gets_413_unread(
    target: ServerProcess, read_token: str, chunked: bool
) -> None:
    assert target.proc is not None
    before = rss_kib(target.proc.pid)
    answer = stream_body(target.port, request_head(target, read_token), 200 << 20, chunked)
    grown_mib = (rss_kib(target.proc.pid) - before) / 1024
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert grown_mib < 40, f"the server grew by {grown_mib:.0f} MiB"
    still_serves(target, read_token)


# --- class 2: the per-tool scope gate decides on the name the SDK dispatches on --------------

SPELLINGS = {
    "escaped": ('"list_oauth_client\\u0073"', "list_oauth_clients"),
    "all-escaped": ('"\\u006c\\u0069\\u0073\\u0074_oauth_clients"', "list_oauth_clients"),
    "duplicate-key": ('"who_am_i", "name": "list_oauth_clients"', "list_oauth_clients"),  # both parsers keep the last
    "header-names-admin": ('"who_am_i"', "list_oauth_clients"),  # an Mcp-Name the body disagrees with
    "header-names-reader": ('"list_oauth_clients"', "who_am_i"),
    "header-base64": (
        '"list_oauth_client\\u0073"',
        "=?base64?" + base64.b64encode(b"list_oauth_clients").decode() + "?=",
    ),
}


@pytest.mark.parametrize("era", [MODERN, LEGACY])
@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_every_spelling_of_the_admin_tool_needs_the_admin_scope(
    target: ServerProcess, read_token: str, era: str, spelling: str
) -> None:
    name_json, header = SPELLINGS[spelling]
    headers = modern_headers(header, read_token) if era == MODERN else legacy_headers(target, read_token)
    headers["mcp-name"] = header
    response = post(target, call(name_json, era), headers)
    assert response.status_code == 403, response.text
    challenge = response.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge and ADMIN_CHALLENGE in challenge, challenge
    still_serves(target, read_token)


@pytest.mark.parametrize("era", [MODERN, LEGACY])
def test_a_tool_within_the_token_scope_still_runs(target: ServerProcess, read_token: str, era: str) -> None:
    headers = modern_headers("who_am_i", read_token) if era == MODERN else legacy_headers(target, read_token)
    response = post(target, call('"who_\\u0061m_i"', era), headers)
    assert response.status_code == 200 and '"mcp:read"' in response.text.replace('\\"', '"'), response.text


# --- class 9: the challenges say what is needed -----------------------------------------------


def challenge_of(response: httpx2.Response) -> str:
    return str(response.headers["www-authenticate"])


def test_no_credentials_get_a_challenge_without_an_error_code(target: ServerProcess, read_token: str) -> None:
    metadata = target.url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
    for extra in ({}, {"authorization": "Basic dXNlcjpwYXNz"}):
        response = post(target, INITIALIZE.encode(), {"content-type": "application/json", "accept": ACCEPT, **extra})
        assert response.status_code == 401
        challenge = challenge_of(response)
        assert challenge.startswith("Bearer ") and "error=" not in challenge, challenge
        assert 'scope="mcp:read"' in challenge and f'resource_metadata="{metadata}"' in challenge, challenge
    still_serves(target, read_token)


def test_an_invalid_token_gets_invalid_token_and_the_scope(target: ServerProcess, read_token: str) -> None:
    for method in ("POST", "GET", "DELETE"):
        headers = {"content-type": "application/json", "accept": ACCEPT, "authorization": "Bearer not-a-token"}
        response = httpx2.request(method, target.url, content=INITIALIZE if method == "POST" else None, headers=headers)
        assert response.status_code == 401
        challenge = challenge_of(response)
        assert 'error="invalid_token"' in challenge and 'scope="mcp:read"' in challenge, challenge
    still_serves(target, read_token)


def test_a_token_without_the_base_scope_gets_a_403_naming_it(
    stack: Stack, target: ServerProcess, read_token: str
) -> None:
    client = register(stack)
    verifier, challenge = pkce()
    url = authorize_url(stack, client["client_id"], challenge, scope="mcp:admin", resource=target.url)
    code = redirect_params(sign_in(url))["code"]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": CALLBACK,
        "client_id": client["client_id"],
        "code_verifier": verifier,
        "resource": target.url,
    }
    granted = httpx2.post(f"{stack.issuer}/token", data=form).json()
    assert granted["scope"] == "mcp:admin", granted
    response = post(
        target,
        INITIALIZE.encode(),
        {"content-type": "application/json", "accept": ACCEPT, "authorization": f"Bearer {granted['access_token']}"},
    )
    assert response.status_code == 403
    header = challenge_of(response)
    assert 'error="insufficient_scope"' in header and 'scope="mcp:read"' in header, header
    still_serves(target, read_token)


# --- class 7: a malformed `params` is the protocol's error, never a 500 ---------------------


@pytest.mark.parametrize("params", ['["list_oauth_clients"]', '"list_oauth_clients"', "7"])
@pytest.mark.parametrize("era", [MODERN, LEGACY])
def test_params_of_the_wrong_shape_get_a_4xx(target: ServerProcess, read_token: str, params: str, era: str) -> None:
    anonymous = post(target, call("", era, params), modern_headers("list_oauth_clients", None))
    assert anonymous.status_code == 401, anonymous.text
    headers = modern_headers("who_am_i", read_token) if era == MODERN else legacy_headers(target, read_token)
    signed = post(target, call("", era, params), headers)
    assert 400 <= signed.status_code < 500, signed.text
    assert '"error"' in signed.text and "jsonrpc" in signed.text, signed.text
    still_serves(target, read_token)


# --- class 2, behind the gate: the SDK's dispatch refuses the same call on its own -----------


async def test_the_admin_tool_needs_its_scope_even_without_the_gate(stack: Stack, target: ServerProcess) -> None:
    """The MCP server without its HTTP gate: the dispatched name alone must still decide."""
    resource = target.url  # tokens are issued for it; the verifier checks the audience, not the port
    sdk_only = server.authentication(server.JwtVerifier(stack.issuer, resource), resource)
    config, _ = parse_config(["-t", "http", "--addr", "127.0.0.1:0"], default_port=0)
    token = machine_token(stack, resource)
    async with serve_app(build_http_app(server.mcp, config, middleware=sdk_only)) as base:
        headers = modern_headers("list_oauth_clients", token)
        async with httpx2.AsyncClient(timeout=30) as http:
            refused = await http.post(
                f"{base}/mcp", content=call('"list_oauth_client\\u0073"', MODERN), headers=headers
            )
            allowed = await http.post(
                f"{base}/mcp", content=call('"who_am_i"', MODERN), headers=headers | {"mcp-name": "who_am_i"}
            )
    assert refused.status_code == 400 and "list_oauth_clients needs the scope mcp:admin" in refused.text, refused.text
    assert allowed.status_code == 200 and "mcp:read" in allowed.text, allowed.text


class CountedIntrospection(server.IntrospectionVerifier):  # type: ignore[misc,name-defined]
    """The real introspection verifier, counting how often it asks the authorization server."""

    asked = 0

    async def verify_token(self, token: str) -> Any:
        CountedIntrospection.asked += 1
        return await super().verify_token(token)


async def test_each_request_asks_the_authorization_server_once(stack: Stack, target: ServerProcess) -> None:
    """The SDK checks the token and the gate reads its answer: with introspection, one call per request, not two."""
    resource = target.url
    verifier = CountedIntrospection(stack.issuer, resource, server.MCP_SERVER_CLIENT_ID, MCP_SERVER_SECRET)
    config, _ = parse_config(["-t", "http", "--addr", "127.0.0.1:0"], default_port=0)
    token = machine_token(stack, resource)
    embedded = server.build_upstream_app(server.upstream_verifier(stack.issuer, EMBEDDED_URL))
    upstream = server.Upstream(stack.issuer, None, server.EMBEDDED_ANYTHING, embedded)
    app = server.protected_app(config, stack.issuer, resource, verifier, upstream)
    async with serve_app(app) as base, httpx2.AsyncClient(timeout=30) as http:
        for _ in range(3):
            answer = await http.post(
                f"{base}/mcp", content=call('"who_am_i"', MODERN), headers=modern_headers("who_am_i", token)
            )
            assert answer.status_code == 200 and "mcp:read" in answer.text, answer.text
    assert CountedIntrospection.asked == 3
