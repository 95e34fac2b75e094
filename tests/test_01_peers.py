"""01-basic-mcp driven by the official MCP Inspector CLI (pinned, from npm)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.harness import REPO, ServerProcess, inspector_cli

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
