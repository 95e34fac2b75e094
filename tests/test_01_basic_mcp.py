"""01-basic-mcp: tools, a resource and a prompt, over memory, stdio and HTTP."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.harness import (
    HTTP_TIMEOUT,
    INITIALIZE,
    INITIALIZED,
    REPO,
    ServerProcess,
    http_client,
    load_server,
    parse_json_line,
    run_server,
    server_env,
    stdio_params,
    tool_call_line,
)

FOLDER = "01-basic-mcp"
SERVER = REPO / FOLDER / "server.py"
server = load_server(FOLDER)

pytestmark = pytest.mark.anyio


def text(result: Any) -> str:
    return str(result.content[0].text)


# --- behaviour, in memory -------------------------------------------------------------------


async def test_lists_the_three_tools_with_typed_schemas() -> None:
    async with Client(server.mcp) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert sorted(tools) == ["add_numbers", "countdown", "echo_message"]
    assert tools["echo_message"].description == "Echo a message back, prefixed with 'Echo: '."
    assert tools["echo_message"].input_schema["properties"]["message"]["type"] == "string"
    assert tools["add_numbers"].input_schema["required"] == ["num1", "num2"]
    assert {p["type"] for p in tools["add_numbers"].input_schema["properties"].values()} == {"number"}
    seconds = tools["countdown"].input_schema["properties"]["seconds"]
    assert (seconds["type"], seconds["minimum"], seconds["maximum"]) == ("integer", 1, 30)


async def test_echo_message() -> None:
    async with Client(server.mcp) as client:
        result = await client.call_tool("echo_message", {"message": "hello workshop"})
    assert not result.is_error
    assert text(result) == "Echo: hello workshop"
    assert result.structured_content == {"result": "Echo: hello workshop"}


async def test_add_numbers() -> None:
    async with Client(server.mcp) as client:
        result = await client.call_tool("add_numbers", {"num1": 2, "num2": 3.5})
    assert text(result) == "5.5"
    assert result.structured_content == {"result": 5.5}


async def test_wrong_argument_type_is_a_readable_tool_error() -> None:
    async with Client(server.mcp) as client:
        result = await client.call_tool("add_numbers", {"num1": "two", "num2": 3})
        # The server keeps serving after the bad call.
        after = await client.call_tool("add_numbers", {"num1": 1, "num2": 1})
    assert result.is_error
    assert text(result).startswith("Error executing tool add_numbers: 1 validation error")
    assert "num1\n  Input should be a valid number" in text(result)
    assert text(after) == "2.0"


async def test_missing_and_out_of_range_arguments_are_named() -> None:
    async with Client(server.mcp) as client:
        missing = await client.call_tool("echo_message", {})
        too_long = await client.call_tool("countdown", {"seconds": 31})
    assert missing.is_error and "message\n  Field required" in text(missing)
    assert too_long.is_error and "seconds\n  Input should be less than or equal to 30" in text(too_long)


async def test_unknown_tool() -> None:
    async with Client(server.mcp) as client:
        with pytest.raises(MCPError) as raised:
            await client.call_tool("no_such_tool", {})
    assert (raised.value.error.code, raised.value.error.message) == (-32602, "Unknown tool: no_such_tool")


async def test_countdown_reports_progress() -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with Client(server.mcp) as client:
        result = await client.call_tool("countdown", {"seconds": 2}, progress_callback=on_progress)
    assert text(result) == "Countdown from 2 finished"
    assert seen == [(0, 2, "2 s left"), (1, 2, "1 s left")]


async def test_resource_and_prompt() -> None:
    async with Client(server.mcp) as client:
        resources = (await client.list_resources()).resources
        about = await client.read_resource("workshop://about")
        prompts = (await client.list_prompts()).prompts
        prompt = await client.get_prompt("explain_tool", {"tool_name": "add_numbers"})
    assert [(r.uri, r.name, r.mime_type) for r in resources] == [("workshop://about", "about", "text/markdown")]
    assert about.contents[0].text.startswith("# basic-mcp")  # type: ignore[union-attr]
    assert [(p.name, [a.name for a in p.arguments or []]) for p in prompts] == [("explain_tool", ["tool_name"])]
    assert "`add_numbers` tool" in prompt.messages[0].content.text  # type: ignore[union-attr]


# --- stdio: a real subprocess ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_stdio_subprocess(mode: str) -> None:
    async with Client(stdio_params(FOLDER), mode=mode) as client:
        result = await client.call_tool("echo_message", {"message": "over stdio"})
        assert client.protocol_version == ("2026-07-28" if mode == "auto" else "2025-11-25")
    assert text(result) == "Echo: over stdio"


def test_stdout_carries_only_json_rpc_and_every_request_is_answered() -> None:
    """stdout is the wire: every line must be a JSON-RPC message, even when tools log and input is bad."""
    done = run_server(
        FOLDER,
        "--log-format",
        "json",
        lines=[
            "this is not json",
            INITIALIZE,
            INITIALIZED,
            '{"jsonrpc": "2.0", "id": 7}',
            tool_call_line(2, "add_numbers", {"num1": "x", "num2": 1}),
            tool_call_line(3, "countdown", {"seconds": 1}),  # logs from inside the tool
            json.dumps({"jsonrpc": "2.0", "id": 4, "method": "no/such_method"}),
            tool_call_line(5, "echo_message", {"message": "still here"}),
        ],
    )
    assert done.returncode == 0, done.stderr
    messages = [json.loads(line) for line in done.stdout.splitlines()]
    assert all(m["jsonrpc"] == "2.0" for m in messages)
    by_id = {m["id"]: m for m in messages}
    assert by_id[None]["error"] == {"code": -32700, "message": "Parse error: not valid JSON"}
    assert by_id[7]["error"]["code"] == -32600
    assert by_id[2]["result"]["isError"] is True
    assert by_id[4]["error"]["code"] == -32601
    # Requests still in flight when stdin closed were answered before the exit.
    assert by_id[3]["result"]["content"][0]["text"] == "Countdown from 1 finished"
    assert by_id[5]["result"]["content"][0]["text"] == "Echo: still here"
    # The logs went to stderr, as JSON, with the request they belong to.
    events = [e for e in map(parse_json_line, done.stderr.splitlines()) if e]
    assert {"event": "countdown finished", "method": "tools/call", "rpc_id": "3"}.items() <= next(
        e for e in events if e["event"] == "countdown finished"
    ).items()


def test_stdin_from_dev_null_ends_cleanly() -> None:
    """`server.py < /dev/null` is stdin at its end from the start: exit 0, no traceback."""
    done = run_server(FOLDER, "--log-format", "json")  # no lines: stdin is /dev/null
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert [e["event"] for e in map(parse_json_line, done.stderr.splitlines()) if e][-1] == "stopped"


def test_stdio_stops_cleanly_on_sigterm_after_answering_in_flight_calls() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "--log-format", "json"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=server_env(),
    )
    assert proc.stdin and proc.stdout
    for line in (INITIALIZE, INITIALIZED, tool_call_line(2, "countdown", {"seconds": 1})):
        proc.stdin.write(line + "\n")
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline())["id"] == 1
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)  # stdin stays open: the signal alone must end it
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert json.loads(out)["result"]["content"][0]["text"] == "Countdown from 1 finished"
    assert '"signal": "SIGTERM"' in err


# --- HTTP: a real uvicorn in a subprocess ---------------------------------------------------


@pytest.fixture(scope="module")
def http_server() -> Any:
    with ServerProcess(FOLDER) as proc:
        yield proc


@pytest.mark.parametrize(("mode", "era"), [("auto", "2026-07-28"), ("legacy", "2025-11-25")])
async def test_http_both_protocol_eras(http_server: ServerProcess, mode: str, era: str) -> None:
    async with http_client(http_server.url, mode=mode) as client:
        result = await client.call_tool("add_numbers", {"num1": 40, "num2": 2})
        assert client.protocol_version == era
    assert result.structured_content == {"result": 42}


async def test_many_clients_at_once_each_get_their_own_answer(http_server: ServerProcess) -> None:
    results: dict[int, str] = {}

    async def one(i: int) -> None:
        async with http_client(http_server.url) as client:
            # Every other client sends garbage first; its neighbours must not notice.
            if i % 2:
                await client.call_tool("add_numbers", {"num1": "bad", "num2": 0})
            results[i] = text(await client.call_tool("echo_message", {"message": f"client {i}"}))

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, i)
    assert results == {i: f"Echo: client {i}" for i in range(20)}


def post(url: str, body: bytes | str, **headers: str) -> httpx2.Response:
    base = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    return httpx2.post(url, content=body, headers={**base, **headers}, timeout=HTTP_TIMEOUT)


def test_malformed_json_over_http_is_a_parse_error(http_server: ServerProcess) -> None:
    response = post(http_server.url, b"{not json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32700
    assert httpx2.get(http_server.base_url + "/healthz").json() == {"status": "ok"}


def test_dns_rebinding_protection_rejects_foreign_host_and_origin(http_server: ServerProcess) -> None:
    ping = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert post(http_server.url, ping, host="evil.example").status_code == 421
    assert post(http_server.url, ping, origin="http://evil.example").status_code == 403


def test_cors_lets_the_browser_inspector_in(http_server: ServerProcess) -> None:
    inspector = "http://localhost:6274"
    preflight = httpx2.options(
        http_server.url,
        headers={
            "origin": inspector,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, mcp-protocol-version, authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == inspector
    init = post(http_server.url, INITIALIZE, origin=inspector)
    assert init.status_code == 200
    assert init.headers["mcp-session-id"]
    assert "mcp-session-id" in init.headers["access-control-expose-headers"].lower()
    foreign = httpx2.options(
        http_server.url, headers={"origin": "http://evil.example", "access-control-request-method": "POST"}
    )
    assert "access-control-allow-origin" not in foreign.headers


def test_request_id_is_echoed_and_logged(http_server: ServerProcess) -> None:
    response = post(http_server.url, INITIALIZE, **{"x-request-id": "trace-me-42"})
    assert response.headers["x-request-id"] == "trace-me-42"
    assert post(http_server.url, INITIALIZE, **{"x-request-id": "bad id with spaces"}).headers["x-request-id"] != (
        "bad id with spaces"
    )
    deadline = time.monotonic() + 5
    while not any(e.get("request_id") == "trace-me-42" for e in http_server.events()):
        assert time.monotonic() < deadline, "no log line carried the request id"
        time.sleep(0.05)


# --- starting and stopping ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_sigterm_lets_an_in_flight_call_finish_then_exits_0(mode: str) -> None:
    """In both eras; a 2025-11-25 session (`legacy`) also holds a GET stream open, which must not end first."""
    with ServerProcess(FOLDER) as proc:
        async with http_client(proc.url, mode=mode) as client:
            await client.list_tools()  # the client checks results against the listed output schema
            async with anyio.create_task_group() as tg:
                results: list[str] = []

                async def countdown() -> None:
                    results.append(text(await client.call_tool("countdown", {"seconds": 2})))

                tg.start_soon(countdown)
                await anyio.to_thread.run_sync(proc.wait_for_event, "countdown started")
                proc.signal(signal.SIGTERM)
        assert results == ["Countdown from 2 finished"]
        assert proc.wait() == 0
    events = [e["event"] for e in proc.events()]
    assert events.index("shutting down") < events.index("countdown finished") < events.index("stopped")
    assert not [e for e in events if "gave up" in e]
    assert any('"GET /mcp HTTP/1.1" 200' in e for e in events) == (mode == "legacy")


async def test_an_open_listen_stream_ends_gracefully_and_does_not_hold_up_shutdown() -> None:
    """A `subscriptions/listen` stream never finishes by itself: on SIGTERM the server ends it, the spec's way."""
    with ServerProcess(FOLDER) as proc:
        async with http_client(proc.url) as client, client.listen(tools_list_changed=True) as subscription:
            started = time.monotonic()
            proc.signal(signal.SIGTERM)
            events = [event async for event in subscription]  # ends without SubscriptionLost: a deliberate close
            code = await anyio.to_thread.run_sync(proc.wait)
    assert (events, code) == ([], 0)
    assert time.monotonic() - started < 3  # not the 10 s grace period that uvicorn gives an open response


async def test_grace_period_bounds_shutdown() -> None:
    """A call longer than the grace period is cut off, and the server still exits 0 on time."""
    failures: list[BaseException] = []
    with ServerProcess(FOLDER, "--shutdown-grace", "1") as proc:
        async with http_client(proc.url) as client:

            async def long_call() -> None:
                try:
                    await client.call_tool("countdown", {"seconds": 30})
                except Exception as exc:
                    failures.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(long_call)
                await anyio.sleep(0.5)
                started = time.monotonic()
                proc.signal(signal.SIGINT)
                code = await anyio.to_thread.run_sync(proc.wait)
                stopped_after = time.monotonic() - started
    assert code == 0
    assert stopped_after < 5
    assert failures, "the cut-off call should fail, not hang"


def test_taken_port_is_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_server(FOLDER, "-t", "http", "--addr", f":{port}")
    assert done.returncode == 1
    expected = f"server.py: error: cannot listen on 127.0.0.1:{port}: address already in use"
    assert done.stderr.strip().splitlines() == [expected]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--nope"], {}, "server.py: error: unrecognized arguments: --nope (try --help)"),
        (["-t", "carrier-pigeon"], {}, "invalid transport 'carrier-pigeon': expected stdio or http"),
        (["--addr", "127.0.0.1:99999"], {}, "port must be a number from 0 to 65535"),
        ([], {"MCP_LOG_LEVEL": "loud"}, "invalid log level 'loud'"),
    ],
)
def test_bad_flag_or_variable_is_one_clear_line(args: list[str], env: dict[str, str], message: str) -> None:
    done = run_server(FOLDER, *args, env=env)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1
    assert message in done.stderr


def test_environment_variables_mirror_flags() -> None:
    proc = ServerProcess(FOLDER, env={"MCP_TRANSPORT": "http", "MCP_ADDR": "127.0.0.1:0", "MCP_LOG_FORMAT": "json"})
    proc.argv = [sys.executable, str(SERVER)]  # no flags at all
    with proc:
        assert proc.url.startswith("http://127.0.0.1:")
        assert post(proc.url, INITIALIZE).status_code == 200
