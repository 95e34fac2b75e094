"""The official MCP conformance suite (pinned, from npm) against every module over HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import ServerProcess, conformance

MODULES = ["01-basic-mcp", "02-token-passthrough", "04-observability", "05-mcp-proxy"]

# The server scenarios that apply to any server, whatever its tools.
SCENARIOS = [
    "server-initialize",
    "server-session-lifecycle",
    "ping",
    "tools-list",
    "dns-rebinding-protection",
    "http-header-validation",
]


@pytest.fixture(scope="module", params=MODULES)
def http_server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    with ServerProcess(request.param) as proc:
        yield proc


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_conformance(http_server: ServerProcess, scenario: str) -> None:
    result = conformance(http_server.url, scenario)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 failed" in result.stdout, result.stdout
