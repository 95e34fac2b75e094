"""The official MCP conformance suite (pinned, from npm) against every module over HTTP."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ServerProcess, conformance, run_node_tool

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


@pytest.mark.parametrize("revision", REVISIONS)
def test_the_fixture_passes_the_whole_suite(fixture_server: ServerProcess, revision: str, tmp_path: Path) -> None:
    """The fixture is what the suite expects of a server, check for check (about 3 s a revision)."""
    results = suite(fixture_server.url, revision, tmp_path)
    failing = {key: status for key, status in results.items() if not status.startswith(("SUCCESS", "INFO"))}
    assert tally(results)["SUCCESS"] == DIRECT_PASSED[revision] and not failing, failing
