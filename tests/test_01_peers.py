"""01-basic-mcp driven by the official MCP Inspector CLI (pinned, from npm)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.harness import CAPTURED_LOGS, REPO, ServerProcess, inspector_cli, start_inspector_cli

FOLDER = "01-basic-mcp"
STDIO_COMMAND = [sys.executable, str(REPO / FOLDER / "server.py")]


@pytest.fixture(scope="module")
def http_server() -> Iterator[ServerProcess]:
    with ServerProcess(FOLDER) as proc:
        yield proc


def test_inspector_lists_and_calls_tools_over_stdio() -> None:
    listed = inspector_cli(*STDIO_COMMAND, "--method", "tools/list")
    assert [tool["name"] for tool in listed["tools"]] == ["echo_message", "add_numbers", "countdown"]
    called = inspector_cli(
        *STDIO_COMMAND, "--method", "tools/call", "--tool-name", "echo_message", "--tool-arg", "message=hi"
    )
    assert called["content"] == [{"type": "text", "text": "Echo: hi"}]
    assert called["isError"] is False


def test_inspector_lists_and_calls_tools_over_http(http_server: ServerProcess) -> None:
    listed = inspector_cli(http_server.url, "--method", "tools/list")
    assert [tool["name"] for tool in listed["tools"]] == ["echo_message", "add_numbers", "countdown"]
    called = inspector_cli(
        http_server.url, "--method", "tools/call", "--tool-name", "add_numbers", "--tool-arg", "num1=2", "num2=3"
    )
    assert called["structuredContent"] == {"result": 5}


def test_a_countdown_the_inspector_started_finishes_and_reaches_it_after_ctrl_c() -> None:
    """The README's graceful-shutdown demo, with the real Inspector CLI: a 2025-11-25 session whose GET stream is
    open while the call runs. Ctrl-C must not end the call's own stream with the GET one."""
    with ServerProcess(FOLDER) as proc:
        cli = start_inspector_cli(
            proc.url, "--method", "tools/call", "--tool-name", "countdown", "--tool-arg", "seconds=2"
        )
        try:
            proc.wait_for_event("countdown started")
            proc.signal(signal.SIGINT)
            out, err = cli.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            cli.kill()
            out, err = cli.communicate()
        CAPTURED_LOGS.append(err.splitlines())
        code = proc.wait()
    assert cli.returncode == 0, f"the Inspector never got its result:\n{err}"
    assert json.loads(out)["content"] == [{"type": "text", "text": "Countdown from 2 finished"}]
    assert code == 0
    events = [e["event"] for e in proc.events()]
    assert any('"GET /mcp HTTP/1.1" 200' in e for e in events)  # the Inspector's stream for what the server sends
    assert events.index("shutting down") < events.index("countdown finished") < events.index("stopped")


def test_inspector_reads_the_resource_and_gets_the_prompt(http_server: ServerProcess) -> None:
    resource = inspector_cli(http_server.url, "--method", "resources/read", "--uri", "workshop://about")
    assert resource["contents"][0]["text"].startswith("# basic-mcp")
    prompt = inspector_cli(
        http_server.url,
        "--method",
        "prompts/get",
        "--prompt-name",
        "explain_tool",
        "--prompt-args",
        "tool_name=countdown",
    )
    assert "`countdown` tool" in prompt["messages"][0]["content"]["text"]
