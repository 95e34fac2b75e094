"""02-token-passthrough: the caller's token reaches the tools, and what passing it on does."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from mcp import Client
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import Secret, caller_token
from tests.harness import (
    INITIALIZE,
    INITIALIZED,
    REPO,
    ServerProcess,
    http_client,
    load_server,
    load_sibling,
    remember_secret,
    run_server,
    serve_app,
    stdio_params,
    tool_call_line,
)

FOLDER = "02-token-passthrough"
SERVER = REPO / FOLDER / "server.py"
server = load_server(FOLDER)
demo_tokens = load_sibling(FOLDER, "demo_tokens")

pytestmark = pytest.mark.anyio


def token(subject: str, audience: str = "mcp", client_id: str = "demo-client") -> str:
    return remember_secret(demo_tokens.mint(subject, demo_tokens.AUDIENCES[audience], client_id))


def text(result: Any) -> str:
    return str(result.content[0].text)


@pytest.fixture
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run an in-memory test in the mode it is parametrized with, and put the default back after."""
    server.settings.mode = request.param
    yield request.param
    server.settings.mode = "safe"


def as_caller(value: str | None) -> None:
    """Set the caller's token for in-memory calls, as the HTTP middleware or API_KEY would.

    Every test that calls a token tool in memory sets it first: it lives in the test's own context.
    """
    caller_token.set(Secret(value) if value is not None else None)


# --- safe mode (the default) ----------------------------------------------------------------


async def test_tools() -> None:
    async with Client(server.mcp) as client:
        names = [tool.name for tool in (await client.list_tools()).tools]
    assert names == ["echo_message", "add_numbers", "show_auth_token", "make_authenticated_request"]


async def test_missing_token_says_what_to_send() -> None:
    as_caller(None)
    async with Client(server.mcp) as client:
        result = await client.call_tool("show_auth_token", {})
    assert result.is_error
    assert "send the header 'Authorization: Bearer <token>' over HTTP, or set API_KEY" in text(result)


async def test_show_auth_token_is_a_masked_hint() -> None:
    alice = token("alice")
    as_caller(alice)
    async with Client(server.mcp) as client:
        shown = text(await client.call_tool("show_auth_token", {}))
    assert alice not in shown and alice[-12:] not in shown
    assert shown == (
        f"Bearer token of {len(alice)} characters, fingerprint {Secret(alice).fingerprint()}. "
        "Valid for this server: alice (client demo-client)."
    )


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: token("mallory", audience="upstream"), "issued for 'workshop-upstream', not for 'mcp-workshop-02'"),
        (lambda: "not-a-jwt-at-all", "not a token signed by the workshop's demo issuer"),
        (lambda: token("alice")[:-4] + "AAAA", "not a token signed by the workshop's demo issuer"),
    ],
    ids=["other-audience", "garbage", "forged-signature"],
)
async def test_safe_mode_refuses_tokens_not_issued_for_it(make: Any, reason: str) -> None:
    bad = remember_secret(make())
    as_caller(bad)
    async with Client(server.mcp) as client:
        shown = await client.call_tool("show_auth_token", {})
        called = await client.call_tool("make_authenticated_request", {"message": "hi"})
    for result in (shown, called):
        assert result.is_error
        assert reason in text(result)
        assert bad not in text(result)


async def test_safe_mode_calls_the_upstream_as_itself() -> None:
    alice = token("alice", client_id="inspector")
    as_caller(alice)
    async with Client(server.mcp) as client:
        result = await client.call_tool("make_authenticated_request", {"message": "hello upstream"})
    reply = result.structured_content
    assert reply is not None
    assert reply["caller_seen"] == "token-passthrough-server (client token-passthrough-server)"
    assert reply["credential_seen"] != Secret(alice).fingerprint()
    assert (reply["mode"], reply["status"], reply["message"]) == ("safe", 200, "hello upstream")


# --- passthrough mode: the anti-pattern, demonstrated ---------------------------------------


@pytest.mark.parametrize("mode", ["passthrough"], indirect=True)
async def test_passthrough_accepts_a_token_minted_for_the_upstream_and_replays_it(mode: str) -> None:
    """Exploits (a) and (c): a token issued for the upstream API, say a stolen one, goes straight through the tool."""
    stolen = token("alice", audience="upstream", client_id="alices-own-app")
    as_caller(stolen)
    async with Client(server.mcp) as client:
        shown = text(await client.call_tool("show_auth_token", {}))
        reply = (await client.call_tool("make_authenticated_request", {"message": "replayed"})).structured_content
    assert shown.endswith("Not checked: passthrough mode accepts any token.")
    assert reply is not None
    # Exploit (b): the upstream believes Alice's own app called it; the MCP server is invisible in its audit trail.
    assert reply["caller_seen"] == "alice (client alices-own-app)"
    assert reply["credential_seen"] == Secret(stolen).fingerprint()


@pytest.mark.parametrize("mode", ["passthrough"], indirect=True)
async def test_passthrough_of_a_token_meant_for_the_mcp_server_is_refused_upstream(mode: str) -> None:
    """A careful upstream rejects a token that was not issued for it: passthrough only 'works' with the wrong token."""
    as_caller(token("alice"))
    async with Client(server.mcp) as client:
        result = await client.call_tool("make_authenticated_request", {"message": "hi"})
    assert result.is_error
    assert "The upstream refused the call (HTTP 401)" in text(result)
    assert "issued for 'mcp-workshop-02', not for 'workshop-upstream'" in text(result)


# --- over HTTP, with a real upstream that records every byte it receives --------------------


class Recorder:
    """ASGI middleware that keeps the raw bytes of every request: headers and body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append(b"\n".join(name + b": " + value for name, value in scope["headers"]))

        async def recording_receive() -> Message:
            message = await receive()
            self.seen.append(message.get("body", b""))
            return message

        await self.app(scope, recording_receive, send)


@pytest.fixture
async def spy_upstream() -> AsyncIterator[tuple[str, Recorder]]:
    recorder = Recorder(server.upstream_app)
    async with serve_app(recorder) as base:
        yield base + "/anything", recorder


@pytest.mark.parametrize(("mode", "leaks"), [("safe", False), ("passthrough", True)])
async def test_inbound_token_bytes_never_leave_in_safe_mode(
    spy_upstream: tuple[str, Recorder], mode: str, leaks: bool
) -> None:
    url, recorder = spy_upstream
    own = remember_secret(demo_tokens.mint("token-passthrough-server", demo_tokens.UPSTREAM_AUDIENCE))
    alice = token("alice", audience="mcp" if mode == "safe" else "upstream")
    env = {"UPSTREAM_TOKEN": own}
    with ServerProcess(FOLDER, "--mode", mode, "--upstream-url", url, env=env) as proc:
        async with http_client(proc.url, headers={"Authorization": f"Bearer {alice}"}) as client:
            result = await client.call_tool("make_authenticated_request", {"message": "spy on me"})
    assert not result.is_error, text(result)
    received = b"\n".join(recorder.seen)
    assert b"spy on me" in received
    assert (alice.encode() in received) is leaks
    assert (own.encode() in received) is not leaks


@pytest.mark.parametrize("mode", ["safe", "passthrough"])
async def test_fifty_concurrent_callers_each_see_only_their_own_token(mode: str) -> None:
    audience = "mcp" if mode == "safe" else "upstream"
    with ServerProcess(FOLDER, "--mode", mode) as proc:
        seen: dict[int, tuple[str, str]] = {}

        async def one(i: int) -> None:
            mine = token(f"user-{i}", audience=audience, client_id=f"app-{i}")
            async with http_client(proc.url, headers={"Authorization": f"Bearer {mine}"}) as client:
                shown = text(await client.call_tool("show_auth_token", {}))  # a sync tool: runs on a worker thread
                reply = await client.call_tool("make_authenticated_request", {"message": f"from {i}"})
            assert Secret(mine).fingerprint() in shown
            assert reply.structured_content is not None
            seen[i] = (reply.structured_content["caller_seen"], reply.structured_content["credential_seen"])
            if mode == "safe":
                assert f"Valid for this server: user-{i} (client app-{i})." in shown
            else:
                assert seen[i] == (f"user-{i} (client app-{i})", Secret(mine).fingerprint())

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(one, i)
    assert len(seen) == 50
    if mode == "safe":
        assert {caller for caller, _ in seen.values()} == {"token-passthrough-server (client token-passthrough-server)"}


async def test_http_request_without_a_token() -> None:
    with ServerProcess(FOLDER) as proc:
        async with http_client(proc.url) as client:
            result = await client.call_tool("show_auth_token", {})
            echoed = await client.call_tool("echo_message", {"message": "no token needed"})
    assert result.is_error and "Authorization: Bearer <token>" in text(result)
    assert text(echoed) == "Echo: no token needed"


def test_passthrough_mode_warns_loudly_on_start() -> None:
    with ServerProcess(FOLDER, "--mode", "passthrough") as proc:
        warning = next(e for e in proc.events() if e["level"] == "warning")
    assert warning["event"].startswith("PASSTHROUGH MODE: this server forwards each caller's token")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["-t", "http", "--addr", "0.0.0.0:0"], {}, "the demo signing key is public"),
        (["--upstream-url", "https://api.example.com/anything"], {}, "set UPSTREAM_TOKEN"),
        (["--mode", "open-sesame"], {}, "invalid choice: 'open-sesame'"),
    ],
)
def test_unsafe_or_bad_configuration_is_refused(args: list[str], env: dict[str, str], message: str) -> None:
    done = run_server(FOLDER, *args, env=env)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and message in done.stderr


# --- stdio: the token comes from the environment --------------------------------------------


async def test_stdio_takes_the_token_from_api_key() -> None:
    alice = token("alice")
    async with Client(stdio_params(FOLDER, env={"API_KEY": alice})) as client:
        shown = text(await client.call_tool("show_auth_token", {}))
        reply = await client.call_tool("make_authenticated_request", {"message": "over stdio"})
    assert shown.endswith("Valid for this server: alice (client demo-client).")
    assert reply.structured_content is not None and reply.structured_content["message"] == "over stdio"


def test_stdio_without_api_key_errors_clearly_and_logs_no_token() -> None:
    call = tool_call_line(2, "show_auth_token", {})
    done = run_server(FOLDER, "--log-format", "json", lines=[INITIALIZE, INITIALIZED, call])
    assert done.returncode == 0
    assert '"isError":true' in done.stdout and "or set API_KEY when starting the server over stdio" in done.stdout
