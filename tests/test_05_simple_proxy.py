"""05-mcp-proxy/simple_proxy.py: real backends (01 over stdio and over HTTP), the proxy driven over stdio and HTTP."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from importlib.metadata import version
from pathlib import Path

import anyio
import pytest
from mcp import Client, MCPError, StdioServerParameters
from mcp.types import CONNECTION_CLOSED

from tests.harness import REPO, START_TIMEOUT, ServerProcess, http_client, load_server, stdio_params

FOLDER = "05-mcp-proxy"
SCRIPT = "simple_proxy.py"
BACKENDS = ("local", "remote")  # 01 over stdio, 01 over HTTP
TOOLS = ("echo_message", "add_numbers", "countdown")  # 01's

simple_proxy = load_server(FOLDER, SCRIPT)

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def remote() -> Iterator[ServerProcess]:
    """01 over HTTP; its log shows which calls reached it."""
    with ServerProcess("01-basic-mcp") as backend:
        yield backend


@pytest.fixture(scope="module")
def config_file(remote: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    local = stdio_params("01-basic-mcp")
    servers = {"local": {"command": local.command, "args": local.args}, "remote": {"url": remote.url}}
    path = tmp_path_factory.mktemp("simple-proxy") / "servers.json"
    path.write_text(json.dumps({"mcpServers": servers}))
    return path


@pytest.fixture(scope="module")
def http_proxy(config_file: Path) -> Iterator[ServerProcess]:
    with ServerProcess(FOLDER, "--config", str(config_file), script=SCRIPT) as proxy:
        yield proxy


@pytest.fixture(params=["stdio", "http"])
async def proxy(request: pytest.FixtureRequest, config_file: Path) -> AsyncIterator[Client]:
    """An SDK client of the proxy, which runs as a stdio subprocess or as an HTTP server."""
    async with AsyncExitStack() as stack:
        if request.param == "stdio":
            script = str(REPO / FOLDER / SCRIPT)
            command = StdioServerParameters(
                command=sys.executable, args=[script, "--config", str(config_file), "--log-format", "json"], cwd=REPO
            )
            client = await stack.enter_async_context(Client(command))
        else:
            url = request.getfixturevalue("http_proxy").url
            client = await stack.enter_async_context(http_client(url))
        yield client


def calls_seen(backend: ServerProcess, tool: str) -> int:
    """How many calls of `tool` the backend has logged."""
    return sum(e.get("method") == "tools/call" and e.get("name") == tool for e in backend.events())


async def test_lists_the_tools_of_every_backend_under_its_name(proxy: Client) -> None:
    tools = {tool.name: tool for tool in (await proxy.list_tools()).tools}
    assert set(tools) == {f"{backend}__{tool}" for backend in BACKENDS for tool in TOOLS}
    assert set(tools["remote__add_numbers"].input_schema["properties"]) == {"num1", "num2"}  # as the backend wrote it
    assert proxy.server_info is not None
    assert (proxy.server_info.name, proxy.server_info.version) == ("simple-proxy", version("mcp-workshop"))


async def test_a_call_reaches_the_backend_its_name_names(proxy: Client, remote: ServerProcess) -> None:
    before = calls_seen(remote, "add_numbers")
    local = await proxy.call_tool("local__add_numbers", {"num1": 2, "num2": 3})
    answer = await proxy.call_tool("remote__add_numbers", {"num1": 4, "num2": 5})
    assert (local.structured_content, answer.structured_content) == ({"result": 5.0}, {"result": 9.0})
    with anyio.fail_after(START_TIMEOUT):  # the backend's log is read on a thread: wait for the line
        while calls_seen(remote, "add_numbers") == before:  # noqa: ASYNC110 - no event to await on a log file
            await anyio.sleep(0.02)
    assert calls_seen(remote, "add_numbers") == before + 1  # the remote one, and not the local one


async def test_progress_of_each_backend_reaches_the_caller(proxy: Client) -> None:
    seen: dict[str, list[tuple[float, float | None, str | None]]] = {backend: [] for backend in BACKENDS}

    async def count_down(backend: str) -> None:
        async def progress(progress: float, total: float | None, message: str | None) -> None:
            seen[backend].append((progress, total, message))

        result = await proxy.call_tool(f"{backend}__countdown", {"seconds": 2}, progress_callback=progress)
        assert not result.is_error

    async with anyio.create_task_group() as both:
        for backend in BACKENDS:
            both.start_soon(count_down, backend)
    expected = [(0.0, 2.0, "2 s left"), (1.0, 2.0, "1 s left")]
    assert seen == {backend: expected for backend in BACKENDS}


async def test_an_unknown_tool_is_the_specs_protocol_error(proxy: Client) -> None:
    for name in ("no_such_tool", "local__no_such_tool", "elsewhere__echo_message"):
        with pytest.raises(MCPError) as raised:
            await proxy.call_tool(name, {})
        assert (raised.value.error.code, raised.value.error.message) == (-32602, f"Unknown tool: {name}")
    assert (await proxy.call_tool("local__echo_message", {"message": "still up"})).structured_content == {
        "result": "Echo: still up"
    }


async def test_a_stdio_backend_that_exits_fails_its_own_calls_only(config_file: Path) -> None:
    with ServerProcess(FOLDER, "--config", str(config_file), script=SCRIPT) as proxy:
        assert proxy.proc is not None
        children = Path(f"/proc/{proxy.proc.pid}/task/{proxy.proc.pid}/children").read_text().split()
        assert len(children) == 1  # the stdio backend; the HTTP one runs on its own
        async with http_client(proxy.url) as client:
            await client.list_tools()
            os.kill(int(children[0]), signal.SIGKILL)
            with pytest.raises(MCPError) as raised:
                await client.call_tool("local__echo_message", {"message": "gone"})
            assert raised.value.error.code == CONNECTION_CLOSED  # the SDK client's own error, passed on
            answer = await client.call_tool("remote__echo_message", {"message": "still here"})
    assert answer.structured_content == {"result": "Echo: still here"}


async def test_with_no_backends_it_answers_as_every_module_does() -> None:
    async with Client(simple_proxy.make_server({})) as client:
        assert client.server_info is not None and client.server_info.version == version("mcp-workshop")
        assert (await client.list_tools()).tools == []
        with pytest.raises(MCPError) as raised:
            await client.call_tool("no_such_tool", {})
    assert (raised.value.error.code, raised.value.error.message) == (-32602, "Unknown tool: no_such_tool")
