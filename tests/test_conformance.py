"""The official MCP conformance suite (pinned, from npm) against every module over HTTP."""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.types import LoggingMessageNotificationParams

from tests.harness import HTTP_TIMEOUT, ServerProcess, conformance, run_node_tool

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


# --- the whole suite, against a server that offers everything it calls, directly and through 05 ---------

REVISIONS = ("2025-11-25", "2026-07-28")
# What the fixture scores directly: every check of `--suite all` passes, in both revisions.
DIRECT_PASSED = {"2025-11-25": 84, "2026-07-28": 152}
FIXTURE = "conformance_fixture.py"


Results = Callable[[str], dict[str, str]]


def suite(url: str, revision: str, out: Path) -> dict[str, str]:
    """Run `conformance server --suite all` at one revision; each check's status, by scenario and check id.

    A scenario may hold one check id more than once: each occurrence is kept, numbered.
    """
    run_node_tool(
        "conformance",
        ["server", "--url", url, "--suite", "all", "--spec-version", revision, "-o", str(out)],
        timeout=300,
    )
    results: dict[str, str] = {}
    for folder in sorted(out.iterdir()):
        scenario = re.sub(r"^server-|-\d{4}-\d\d-\d\dT[\d-]+Z$", "", folder.name)
        for check in json.loads((folder / "checks.json").read_text()):
            key = f"{scenario} {check['id']}"
            numbered, n = key, 1
            while numbered in results:
                n += 1
                numbered = f"{key} #{n}"
            message = check.get("errorMessage") or ""
            results[numbered] = check["status"] + (f": {message[:300]}" if message else "")
    assert results, f"the suite produced no results for {url}"
    return results


def tally(results: dict[str, str]) -> Counter[str]:
    return Counter(status.split(":", 1)[0] for status in results.values())


@pytest.fixture(scope="module")
def fixture_server() -> Iterator[ServerProcess]:
    with ServerProcess("tests", script=FIXTURE) as proc:
        yield proc


@pytest.fixture(scope="module")
def direct_results(fixture_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Results]:
    """The suite's verdicts on the fixture itself, one run per revision, shared by the tests below."""
    runs: dict[str, dict[str, str]] = {}

    def results(revision: str) -> dict[str, str]:
        if revision not in runs:
            runs[revision] = suite(fixture_server.url, revision, tmp_path_factory.mktemp(f"direct-{revision}"))
        return runs[revision]

    yield results


@pytest.fixture(scope="module")
def proxied_fixture(fixture_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """05 in front of the fixture alone, with no prefix: a client should not be able to tell it is there.

    Pinning is off: the suite's `test_trigger_tool_change` adds a tool for a moment, which pinning would
    (rightly) hold back until someone approves it; that is the proxy's policy, not a difference of protocol.
    """
    config = {"mcpServers": {"fixture": {"url": fixture_server.url, "prefix": "", "pinning": "off"}}}
    path = tmp_path_factory.mktemp("proxied-fixture") / "config.json"
    path.write_text(json.dumps(config))
    with ServerProcess("05-mcp-proxy", "--config", str(path)) as proxy:
        yield proxy


@pytest.mark.parametrize("revision", REVISIONS)
def test_the_fixture_passes_the_whole_suite(direct_results: Results, revision: str) -> None:
    """The fixture is what the suite expects of a server, check for check (about 3 s a revision)."""
    results = direct_results(revision)
    failing = {key: status for key, status in results.items() if not status.startswith(("SUCCESS", "INFO"))}
    assert tally(results)["SUCCESS"] == DIRECT_PASSED[revision] and not failing, failing


@pytest.mark.parametrize("revision", REVISIONS)
def test_through_05_every_check_ends_as_it_does_directly(
    direct_results: Results, proxied_fixture: ServerProcess, revision: str, tmp_path: Path
) -> None:
    """The whole suite through 05 gives each check the verdict it gets directly (and a failure, the same message).

    The suite takes about 3 s a revision directly and 8 s through the proxy (some checks wait for
    notifications that a server need not send: those waits run out the same way direct and proxied).
    """
    direct, proxied = direct_results(revision), suite(proxied_fixture.url, revision, tmp_path)
    differ = {
        key: {"direct": direct.get(key), "through 05": proxied.get(key)}
        for key in sorted(direct.keys() | proxied.keys())
        if verdict(direct.get(key)) != verdict(proxied.get(key))
    }
    assert not differ, json.dumps(differ, indent=1)


def verdict(status: str | None) -> str | None:
    """A check's status; for a failure, with its message (the proxy must fail a check the same way)."""
    if status is None or status.startswith("FAILURE"):
        return status
    return status.split(":", 1)[0]


@contextlib.asynccontextmanager
async def legacy_client(url: str, heard: list[str]) -> AsyncIterator[Client]:
    """A 2025-11-25 client that keeps the text of every log line it is sent."""

    async def keep(params: LoggingMessageNotificationParams) -> None:
        heard.append(str(params.data))

    async with (
        httpx2.AsyncClient(timeout=HTTP_TIMEOUT) as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy", logging_callback=keep) as client,
    ):
        yield client


@pytest.mark.anyio
@pytest.mark.parametrize("protocol", ["auto", "2026-07-28"])
async def test_a_2025_client_s_log_level_holds_for_its_own_calls_only(
    fixture_server: ServerProcess, protocol: str, tmp_path: Path
) -> None:
    """`logging/setLevel` through 05 (issue 17 item 2): the client that set `warning` hears none of a tool's
    `info` lines, another client hears all of its own, whether 05 reaches the backend on a 2025-11-25
    session of its own (`auto`) or in 2026-07-28, where the level goes with each call."""
    entry = {"url": fixture_server.url, "prefix": "", "pinning": "off", "protocolVersion": protocol}
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"mcpServers": {"fixture": entry}}))
    quiet: list[str] = []
    chatty: list[str] = []
    with ServerProcess("05-mcp-proxy", "--config", str(path)) as proxy:
        async with legacy_client(proxy.url, quiet) as first, legacy_client(proxy.url, chatty) as second:
            with pytest.warns(MCPDeprecationWarning):  # deprecated since 2026-07-28, and still 2025-11-25's way
                await first.set_logging_level("warning")
            assert (await first.call_tool("test_tool_with_logging", {})).is_error is False
            assert (await second.call_tool("test_tool_with_logging", {})).is_error is False
    assert quiet == []
    assert chatty == ["Tool execution started", "Tool processing data", "Tool execution completed"]


@pytest.mark.anyio
@pytest.mark.parametrize("protocol", ["auto", "2025-11-25"])
async def test_a_call_whose_backend_cuts_its_stream_is_resumed_through_05(
    fixture_server: ServerProcess, protocol: str, tmp_path: Path
) -> None:
    """Issue 17 item 5: the fixture's `test_reconnection` ends its own stream mid-call and means to go on.

    05 comes back for the rest with `Last-Event-ID`, and the caller gets the answer and both log lines, the
    one sent before the cut and the one after. (That 05 cuts its caller's stream too, so that the caller
    resumes from 05 as it would from the backend, is the suite's `sse-polling disconnect-resume` check.)
    """
    entry = {"url": fixture_server.url, "prefix": "", "pinning": "off", "protocolVersion": protocol}
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"mcpServers": {"fixture": entry}}))
    heard: list[str] = []
    with ServerProcess("05-mcp-proxy", "--config", str(path)) as proxy:
        async with legacy_client(proxy.url, heard) as client:
            result = await client.call_tool("test_reconnection", {})
    assert result.is_error is False
    assert [block.model_dump().get("text") for block in result.content] == ["Reconnection test completed"]
    assert heard == ["Before disconnect", "After reconnect"]
