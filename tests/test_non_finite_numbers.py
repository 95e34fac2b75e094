"""JSON has no NaN or Infinity: a request that holds one is refused, in both eras, over HTTP and stdio.

Python's and pydantic's JSON parsers both read `NaN`, `Infinity` and a literal
too large for a double (`1e999`); the tests send those bytes as an attacker
would, to 01 and to the proxy (its express lane and the SDK's path), and check
that a normal call is answered afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from shared.finite import non_finite
from tests.harness import INITIALIZE, INITIALIZED, REPO, ServerProcess, server_env
from tests.test_05_supervision import proxy_for

MODERN, LEGACY = "2026-07-28", "2025-11-25"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"},
}
LITERALS = {"NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity", "1e999": "Infinity", "-1e999": "-Infinity"}
ACCEPT = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def call_body(tool: str, num1: str, era: str) -> str:
    """A tools/call whose `num1` is the literal as written: json.dumps cannot write these, so it is spliced in."""
    meta = ENVELOPE if era == MODERN else {}
    params = {"name": tool, "arguments": {"num1": 12345.0, "num2": 1}, "_meta": meta}
    return json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}).replace("12345.0", num1)


def answer(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC message, whether the server answered with JSON or with an event stream."""
    if response.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        return dict(json.loads(data[-1]))
    return dict(response.json())


class Caller:
    """Raw POSTs in one era: 2026-07-28 self-contained, 2025-11-25 on a session opened by hand."""

    def __init__(self, url: str, era: str) -> None:
        self.url, self.era, self.headers = url, era, dict(ACCEPT)
        if era == LEGACY:
            opened = httpx2.post(url, content=INITIALIZE, headers=ACCEPT, timeout=30)
            self.headers |= {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": LEGACY}
            httpx2.post(url, content=INITIALIZED, headers=self.headers, timeout=30)

    def call(self, tool: str, num1: str) -> dict[str, Any]:
        headers = self.headers
        if self.era == MODERN:
            headers = {**headers, "mcp-protocol-version": MODERN, "mcp-method": "tools/call", "mcp-name": tool}
        return answer(httpx2.post(self.url, content=call_body(tool, num1, self.era), headers=headers, timeout=30))


def assert_refused(reply: dict[str, Any], literal: str) -> None:
    assert reply["id"] == 7 and "result" not in reply, reply
    assert reply["error"]["code"] == -32602, reply
    assert f"params.arguments.num1 is {LITERALS[literal]}" in reply["error"]["message"], reply


def assert_answered(reply: dict[str, Any]) -> None:
    assert reply["result"]["structuredContent"] == {"result": 3.5}, reply


@pytest.fixture(scope="module")
def basic() -> Iterator[ServerProcess]:
    with ServerProcess("01-basic-mcp") as server:
        yield server


@pytest.fixture(scope="module", params=["h", "s"])
def proxy(
    request: pytest.FixtureRequest, basic: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    # "h" is 01 over HTTP in 2026-07-28 (its calls take the express lane), "s" is 01 over stdio in 2025-11-25.
    stdio = {"command": sys.executable, "args": [str(REPO / "01-basic-mcp" / "server.py")]}
    backend = {"url": basic.url} if request.param == "h" else stdio
    with proxy_for(tmp_path_factory.mktemp("finite"), {request.param: backend}) as running:
        yield running


@pytest.mark.parametrize("era", [MODERN, LEGACY])
@pytest.mark.parametrize("literal", list(LITERALS))
def test_a_non_finite_number_over_http_is_invalid_params(basic: ServerProcess, era: str, literal: str) -> None:
    caller = Caller(basic.url, era)
    assert_refused(caller.call("add_numbers", literal), literal)
    assert_answered(caller.call("add_numbers", "2.5"))
    assert_answered(Caller(basic.url, MODERN).call("add_numbers", "2.5"))  # and another client meanwhile


@pytest.mark.parametrize("era", [MODERN, LEGACY])
def test_the_proxy_refuses_a_non_finite_number_before_any_backend_sees_it(proxy: ServerProcess, era: str) -> None:
    server = readyz_backend(proxy)
    tool = f"{server}__add_numbers"
    sent_before = forwarded(proxy, server)
    caller = Caller(proxy.url, era)
    for literal in LITERALS:
        assert_refused(caller.call(tool, literal), literal)
    assert forwarded(proxy, server) == sent_before  # none of them reached the backend
    assert_answered(caller.call(tool, "2.5"))
    assert_answered(Caller(proxy.url, MODERN).call(tool, "2.5"))


def readyz_backend(proxy: ServerProcess) -> str:
    """The one backend this proxy has."""
    (name,) = httpx2.get(proxy.base_url + "/readyz").json()["backends"]
    return str(name)


def forwarded(proxy: ServerProcess, server: str) -> int:
    """How many calls the proxy sent to this backend, by its log."""
    return sum(1 for e in proxy.events() if e.get("event") == "forwarded" and e.get("server") == server)


def stdio_replies(command: list[str], tool: str) -> dict[int, dict[str, Any]]:
    """Raw lines to a stdio server: the handshake, a NaN, an overflowing literal, then a normal call."""
    lines = [INITIALIZE, INITIALIZED]
    for rid, literal in ((2, "NaN"), (3, "1e999"), (4, "2.5")):
        lines.append(call_body(tool, literal, LEGACY).replace('"id": 7', f'"id": {rid}'))
    done = subprocess.run(
        [sys.executable, *command, "--log-format", "json"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        env=server_env(),
        timeout=60,
    )
    return {reply["id"]: reply for reply in map(json.loads, done.stdout.splitlines())}


def assert_stdio_refused(replies: dict[int, dict[str, Any]]) -> None:
    assert_refused({**replies[2], "id": 7}, "NaN")
    assert_refused({**replies[3], "id": 7}, "1e999")
    assert_answered(replies[4])


def test_a_non_finite_number_on_a_stdio_line_is_invalid_params() -> None:
    assert_stdio_refused(stdio_replies([str(REPO / "01-basic-mcp" / "server.py")], "add_numbers"))


def test_the_proxy_over_stdio_refuses_a_non_finite_number(tmp_path: Path) -> None:
    stdio = {"command": sys.executable, "args": [str(REPO / "01-basic-mcp" / "server.py")]}
    config = tmp_path / "proxy.json"
    config.write_text(json.dumps({"mcpServers": {"s": stdio}}))
    command = [str(REPO / "05-mcp-proxy" / "server.py"), "--config", str(config)]
    assert_stdio_refused(stdio_replies(command, "s__add_numbers"))


def test_the_check_reports_the_path_and_leaves_finite_numbers_alone() -> None:
    assert non_finite({"a": [1, 2.5, {"b": float("nan")}]}) == "params.a[2].b is NaN"
    assert non_finite({"a": [1e308, -1e308, 10**400, "NaN"]}) is None  # a huge integer is exact; a string is text
    assert non_finite(json.loads('{"x": -1e999}')) == "params.x is -Infinity"
