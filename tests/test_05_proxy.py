"""05-mcp-proxy: configuration, aggregation of real stdio and HTTP backends, and a backend that is down."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpcore2
import httpx2
import pytest
from mcp import MCPError

from tests.harness import (
    REPO,
    ServerProcess,
    free_port,
    http_client,
    inspector_cli,
    load_sibling,
    remember_secret,
    run_server,
    serve_app,
)

FOLDER = "05-mcp-proxy"
proxy_config = load_sibling(FOLDER, "proxy_config")
sse = load_sibling(FOLDER, "sse")
sockets = load_sibling(FOLDER, "sockets")
pins = load_sibling(FOLDER, "pins")

pytestmark = pytest.mark.anyio


# --- configuration -------------------------------------------------------------------------


def test_reads_the_go_workshops_config_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "ghp-test")
    config = proxy_config.parse_config(
        {
            "mcpProxy": {"baseURL": "http://localhost:9090", "addr": ":9090", "name": "MCP Proxy"},
            "mcpServers": {
                "github": {
                    "command": "npx",
                    "args": ["-y", "@modelcontextprotocol/server-github"],
                    "env": {"GITHUB_PERSONAL_ACCESS_TOKEN": "${GITHUB_TOKEN}"},
                    "options": {"toolFilter": {"mode": "block", "list": ["create_repository"]}},
                },
                "fetch": {
                    "url": "http://127.0.0.1:1/mcp",
                    "headers": {"X-Team": "a"},
                    "options": {"toolFilter": {"mode": "allow", "list": ["fetch"]}},
                },
                "off": {"command": "x", "disabled": True},
            },
        }
    )
    github, fetch = config.backends
    assert (github.name, github.env["GITHUB_PERSONAL_ACCESS_TOKEN"], github.prefix) == (
        "github",
        "ghp-test",
        "github__",
    )
    assert not github.offers("create_repository") and github.offers("search_code")
    assert (fetch.url, fetch.headers, fetch.offers("fetch"), fetch.offers("other")) == (
        "http://127.0.0.1:1/mcp",
        {"X-Team": "a"},
        True,
        False,
    )


def test_reads_claude_desktop_and_vscode_files_unchanged() -> None:
    claude = json.loads((REPO / "claude_desktop_config.json").read_text())
    assert [b.name for b in proxy_config.parse_config(claude).backends] == ["workshop-01-stdio", "workshop-01-http"]
    vscode = json.loads((REPO / ".vscode" / "mcp.json").read_text().replace("${workspaceFolder}", str(REPO)))
    assert [b.url for b in proxy_config.parse_config(vscode).backends] == [None, "http://127.0.0.1:8081/mcp"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"servers": {"a": {"command": "x", "url": "http://h/mcp"}}}, "$.servers.a: give either command"),
        ({"mcpServers": {"a": {"command": "x", "args": "not-a-list"}}}, "$.mcpServers.a.args: expected a list"),
        (
            {"mcpServers": {"a": {"command": "${NO_SUCH_VARIABLE_HERE}"}}},
            "$.mcpServers.a.command: environment variable",
        ),
        ({"mcpServers": {"bad name!": {"command": "x"}}}, "$.mcpServers.bad name!: server names use"),
        ({"nothing": {}}, "$: expected mcpServers"),
        (
            {"mcpServers": {"a": {"command": "x", "newTools": "yes"}}},
            "$.mcpServers.a.newTools: expected approve or trust",
        ),
        (
            {"mcpServers": {"o": {"url": "http://h/mcp", "oauth": {"clientId": "c", "clientSecret": "s"}}}},
            "$.mcpServers.o.oauth.issuer: expected the authorization server's URL",
        ),
        (
            {
                "mcpServers": {
                    "o": {
                        "url": "http://h/mcp",
                        "forwardAuthorization": True,
                        "oauth": {"clientId": "c", "clientSecret": "s", "issuer": "http://a"},
                    }
                }
            },
            "$.mcpServers.o: oauth (the proxy's own token) excludes forwardAuthorization",
        ),
        ({"mcpServers": {"o": {"url": "http://h/mcp", "oauth": "s3cret"}}}, "$.mcpServers.o.oauth: expected an object"),
        (
            {"mcpServers": {"a": {"command": "x", "restart": {"maxDelay": "soon"}}}},
            "$.mcpServers.a.restart.maxDelay: expected a duration",
        ),
        (  # what JSON's 1e400 reads as: a wait that never ends, and a /readyz time JSON cannot carry
            {"mcpServers": {"a": {"command": "x", "restart": {"delay": math.inf}}}},
            "$.mcpServers.a.restart.delay: expected a duration",
        ),
    ],
)
def test_configuration_errors_name_the_json_path(config: Any, message: str) -> None:
    with pytest.raises(proxy_config.ConfigError) as raised:
        proxy_config.parse_config(config)
    assert str(raised.value).startswith(message)


def test_check_mode_validates_and_exits(tmp_path: Path) -> None:
    assert run_server(FOLDER, "--check").returncode == 0  # the shipped config
    broken = tmp_path / "broken.json"
    broken.write_text('{"mcpServers": {"a": {}}}')
    done = run_server(FOLDER, "--check", "--config", str(broken))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "server.py: error: $.mcpServers.a: give either command (stdio) or url (streamable HTTP) (try --help)"
    ]


# --- aggregation over real backends ----------------------------------------------------------


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The proxy in front of 01 over stdio, 04 over HTTP, and one backend that is not there."""
    with ServerProcess("04-observability") as http_backend:
        config = {
            "mcpServers": {
                "basic": {
                    "command": sys.executable,
                    "args": [str(REPO / "01-basic-mcp" / "server.py")],
                    "options": {"toolFilter": {"mode": "block", "list": ["countdown"]}},
                },
                "traced": {"url": http_backend.url, "prefix": "t_"},
                "gone": {"url": f"http://127.0.0.1:{free_port()}/mcp", "required": True},
            }
        }
        path = tmp_path_factory.mktemp("proxy") / "config.json"
        path.write_text(json.dumps(config))
        with ServerProcess(FOLDER, "--config", str(path)) as proxy:
            yield proxy


async def test_tools_of_every_live_backend_under_their_prefix(proxied: ServerProcess) -> None:
    async with http_client(proxied.url) as client:
        names = [tool.name for tool in (await client.list_tools()).tools]
        via_stdio = await client.call_tool("basic__echo_message", {"message": "to 01"})
        via_http = await client.call_tool("t_add_numbers", {"num1": 1, "num2": 2})
    assert names == [
        "basic__echo_message",
        "basic__add_numbers",
        "t_echo_message",
        "t_add_numbers",
        "t_divide_numbers",
        "t_simulate_crash",
    ]
    assert via_stdio.content[0].text == "Echo: to 01"  # type: ignore[union-attr]
    assert via_http.structured_content == {"result": 3}


def listening_socket_inode(port: int) -> str:
    """The inode of the socket listening on `port`, from the kernel's own table (state 0A is LISTEN)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return fields[9]
    raise AssertionError(f"nothing listens on {port}")


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # a process that ended while we looked
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


async def test_stdio_backends_do_not_hold_the_proxys_listening_socket(proxied: ServerProcess) -> None:
    """A backend holding it would keep the port taken after the proxy exits, and could accept its clients."""
    async with http_client(proxied.url) as client:
        await client.call_tool("basic__echo_message", {"message": "start the backend"})
    assert proxied.proc is not None
    inode = listening_socket_inode(int(proxied.url.rsplit(":", 1)[1].split("/")[0]))
    backends = children_of(proxied.proc.pid)
    assert backends, "the stdio backend is a child of the proxy"
    held = {
        pid for pid in backends for fd in Path(f"/proc/{pid}/fd").iterdir() if os.readlink(fd) == f"socket:[{inode}]"
    }
    assert held == set()


async def test_a_filtered_or_unknown_tool_never_reaches_a_backend(proxied: ServerProcess) -> None:
    async with http_client(proxied.url) as client:
        with pytest.raises(MCPError) as raised:
            await client.call_tool("basic__countdown", {"seconds": 1})
    assert (raised.value.error.code, raised.value.error.message) == (-32602, "Unknown tool: basic__countdown")


async def test_backend_errors_come_back_as_they_were(proxied: ServerProcess) -> None:
    async with http_client(proxied.url) as client:
        result = await client.call_tool("t_divide_numbers", {"dividend": 1, "divisor": 0})
    assert result.is_error
    assert result.content[0].text == "Error executing tool divide_numbers: cannot divide by zero"  # type: ignore[union-attr]
    # The answer is stamped by the proxy, not by the backend behind it.
    assert result.meta is not None and result.meta["io.modelcontextprotocol/serverInfo"]["name"] == "mcp-proxy"


def test_readiness_tells_the_truth_about_each_backend(proxied: ServerProcess) -> None:
    response = httpx2.get(proxied.base_url + "/readyz")
    assert response.status_code == 503
    backends = response.json()["backends"]
    assert (backends["basic"]["state"], backends["basic"]["tools"]) == ("up", 2)
    assert (backends["traced"]["state"], backends["traced"]["tools"]) == ("up", 4)
    assert backends["gone"]["state"] == "failed" and "ConnectError" in backends["gone"]["error"]
    assert httpx2.get(proxied.base_url + "/healthz").json() == {"status": "ok"}


def test_inspector_calls_a_namespaced_tool_through_the_proxy(proxied: ServerProcess) -> None:
    result = inspector_cli(
        proxied.url, "--method", "tools/call", "--tool-name", "basic__add_numbers", "--tool-arg", "num1=2", "num2=2"
    )
    assert result["structuredContent"] == {"result": 4}


def test_a_name_two_backends_would_share_is_a_configuration_error(tmp_path: Path) -> None:
    one = {"command": sys.executable, "args": [str(REPO / "01-basic-mcp" / "server.py")], "prefix": ""}
    path = tmp_path / "clash.json"
    path.write_text(json.dumps({"mcpServers": {"one": one, "two": one}}))
    with pytest.raises(RuntimeError) as raised:
        ServerProcess(FOLDER, "--config", str(path)).start()
    assert "$.mcpServers.two: servers 'one' and 'two' both offer every name" in str(raised.value)


def test_auth_tokens_guard_the_front_door(tmp_path: Path) -> None:
    config = {
        "mcpProxy": {"options": {"authTokens": ["${PROXY_TOKEN}"]}},
        "mcpServers": {"basic": {"command": sys.executable, "args": [str(REPO / "01-basic-mcp" / "server.py")]}},
    }
    path = tmp_path / "guarded.json"
    path.write_text(json.dumps(config))
    token = remember_secret("proxy-front-door-token-for-tests")
    body = '{"jsonrpc":"2.0","id":1,"method":"ping"}'
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    with ServerProcess(FOLDER, "--config", str(path), env={"PROXY_TOKEN": token}) as proxy:
        assert httpx2.post(proxy.url, content=body, headers=headers).status_code == 401
        wrong = {**headers, "authorization": "Bearer proxy-front-door-token-for-test"}
        assert httpx2.post(proxy.url, content=body, headers=wrong).status_code == 401
        inspected = inspector_cli(proxy.url, "--header", f"Authorization: Bearer {token}", "--method", "tools/list")
        assert "basic__echo_message" in [tool["name"] for tool in inspected["tools"]]
        assert httpx2.get(proxy.base_url + "/readyz").status_code == 200  # health stays open


async def test_prompts_and_resources_come_through_too(proxied: ServerProcess) -> None:
    async with http_client(proxied.url) as client:
        prompts = [prompt.name for prompt in (await client.list_prompts()).prompts]
        prompt = await client.get_prompt("basic__explain_tool", {"tool_name": "add_numbers"})
        uris = [str(resource.uri) for resource in (await client.list_resources()).resources]
        about = await client.read_resource("basic+workshop://about")
        with pytest.raises(MCPError) as unknown:
            await client.read_resource("workshop://nowhere")
    assert prompts == ["basic__explain_tool"]
    assert "`add_numbers` tool" in prompt.messages[0].content.text  # type: ignore[union-attr]
    assert uris == ["basic+workshop://about", "t+telemetry://recent-spans"]  # each in its backend's namespace
    assert about.contents[0].text.startswith("# basic-mcp")  # type: ignore[union-attr]
    assert unknown.value.error.code == -32602


# --- reading a backend's event stream ---------------------------------------------------------------


async def _events(chunks: list[bytes]) -> list[Any]:
    async def arriving() -> Any:
        for chunk in chunks:
            yield chunk

    return [message async for message in sse.sse_messages(arriving())]


async def test_an_event_stream_is_read_however_it_is_cut_and_whatever_ends_its_lines() -> None:
    event = b'event: message\r\ndata: {"a":1}\r\n\r\n'
    for cut in range(1, len(event)):  # a CRLF split across two chunks included
        assert await _events([event[:cut], event[cut:]]) == [{"a": 1}]
    assert await _events([b'data: {"b":2}\r\r']) == [{"b": 2}]  # CR alone ends a line too
    assert await _events([b'data: {"c":\ndata: 3}\n\n: ping\n\n']) == [{"c": 3}]  # two data lines, a comment
    assert await _events([b'data: {"d":4}\n\n', b'data: {"e":5}\n']) == [{"d": 4}]  # an unfinished event is dropped
    assert await _events([b"event: other\ndata: {}\n\n", b"data: not json\n\n"]) == []


# --- the connection to an HTTP backend ---------------------------------------------------------------


async def test_each_request_to_a_backend_leaves_in_one_write_and_arrives_whole() -> None:
    async def echo(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    writes: list[int] = []

    class CountingBackend(sockets.SocketBackend):  # type: ignore[misc, name-defined]
        async def connect_tcp(self, *args: Any, **kwargs: Any) -> Any:
            stream = await super().connect_tcp(*args, **kwargs)
            inner_write = stream.stream.write

            async def write(buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109 - httpcore2 API
                writes.append(len(buffer))
                await inner_write(buffer, timeout)

            stream.stream.write = write
            return stream

    small, large = b'{"jsonrpc":"2.0"}', b"x" * (3 * sockets.SocketStream.WRITE_BATCH)
    async with serve_app(echo) as base, httpcore2.AsyncConnectionPool(network_backend=CountingBackend()) as pool:
        for body in (small, small):  # the second on the same kept-alive connection
            response = await pool.request("POST", base + "/", content=body)
            assert response.content == body
        assert len(writes) == 2  # one write per request: its head and body together
        response = await pool.request("POST", base + "/", content=large)
        assert response.content == large  # a body larger than a write batch goes out at once, and arrives whole


def test_a_backend_that_offered_no_tool_at_first_is_pinned_too(tmp_path: Path) -> None:
    # Its first listing was empty: a tool it offers later is new to a pinned backend, not a first use.
    first = pins.Pins(tmp_path / "pins.json")
    first.listed("b")
    again = pins.Pins(tmp_path / "pins.json")  # what a restarted proxy reads
    tool = {"name": "delete_everything", "description": "Repeat the text.", "inputSchema": {"type": "object"}}
    assert again.check("b", tool, known=again.known("b")) == [pins.NEW]
    assert again.approve("b/delete_everything") and again.check("b", tool, known=True) == []
    assert pins.Pins(tmp_path / "pins.json").check("c", tool, known=False) == []  # a new backend: first use
