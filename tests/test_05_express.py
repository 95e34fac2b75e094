"""05-mcp-proxy's express lane (express.py): the same answers as the SDK's path, only sooner.

A plain 2026-07-28 `tools/call` to a tool of a 2026-07-28 backend takes the
express lane; the same request with a progress token goes the SDK's way. Each
pair of answers must be the same, errors included, and what the lane must not
take (a bad Host, headers that disagree with the body) gets the SDK's answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.harness import ServerProcess
from tests.test_05_supervision import proxy_for

pytestmark = pytest.mark.anyio
MODERN = "2026-07-28"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"},
}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp_path: Path = tmp_path_factory.mktemp("express")
    with (
        ServerProcess("tests", script="proxy_backend.py") as backend,
        proxy_for(tmp_path, {"h": {"url": backend.url}}) as running,
    ):
        yield running


def call_body(name: str, arguments: Any, meta: dict[str, Any] | None = None) -> str:
    params = {"name": name, "arguments": arguments, "_meta": {**ENVELOPE, **(meta or {})}}
    return json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params})


def call_headers(name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": name,
        **(extra or {}),
    }


def call(
    proxy: ServerProcess,
    name: str,
    arguments: Any,
    *,
    progress: bool = False,
    headers: dict[str, str] | None = None,
    envelope: dict[str, Any] | None = None,
) -> httpx2.Response:
    meta = {**(envelope or {}), **({"progressToken": "p1"} if progress else {})}
    body = call_body(name, arguments, meta)
    return httpx2.post(proxy.url, content=body, headers=call_headers(name, headers), timeout=60)


def answer(response: httpx2.Response) -> tuple[int, Any]:
    """Status and JSON-RPC message; an SSE answer (the SDK's path may stream) is reduced to its last message."""
    if response.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        return response.status_code, json.loads(data[-1])
    return response.status_code, response.json()


@pytest.mark.parametrize(
    ("name", "arguments"),
    [
        ("h__echo", {"text": "hello"}),  # a result
        ("h__echo", {"text": 42}),  # the backend refuses the arguments
        ("h__echo", {}),  # a required argument missing
        ("h__nope", {}),  # no such tool: never the lane's
        ("h__whoami", {}),  # structured content
    ],
)
def test_the_express_lane_answers_as_the_sdks_path_does(proxy: ServerProcess, name: str, arguments: Any) -> None:
    express, sdk = answer(call(proxy, name, arguments)), answer(call(proxy, name, arguments, progress=True))
    if name == "h__whoami":  # the backend's pid is the same either way; the lane adds nothing else
        assert express[1]["result"]["structuredContent"]["pid"] == sdk[1]["result"]["structuredContent"]["pid"]
    assert express == sdk
    assert express[1]["id"] == 7
    if "result" in express[1]:
        assert express[1]["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "mcp-proxy"


@pytest.mark.parametrize(
    "envelope",
    [
        {"io.modelcontextprotocol/clientCapabilities": "not an object"},
        {"io.modelcontextprotocol/clientInfo": 5},
        {"io.modelcontextprotocol/clientCapabilities": {"elicitation": 5}},
    ],
)
def test_a_malformed_envelope_gets_the_sdks_answer(proxy: ServerProcess, envelope: dict[str, Any]) -> None:
    express = answer(call(proxy, "h__echo", {"text": "x"}, envelope=envelope))
    assert express == answer(call(proxy, "h__echo", {"text": "x"}, envelope=envelope, progress=True))
    assert express[0] == 400 and express[1]["error"]["code"] == -32602


def test_a_long_call_on_the_lane_keeps_its_connection_alive_as_the_sdk_does(proxy: ServerProcess) -> None:
    # Silent for longer than the 15 s after which the SDK turns a response into an event stream with pings.
    response = call(proxy, "h__slow", {"steps": 1, "delay": 16})
    assert response.headers["content-type"].startswith("text/event-stream")
    assert ": ping" in response.text
    assert answer(response)[1]["result"]["content"][0]["text"] == "done"


@pytest.mark.parametrize("after", [0.02, 0.5])  # before and after the lane starts listening for a hang-up
def test_a_caller_hanging_up_on_the_lane_cancels_the_backends_call(proxy: ServerProcess, after: float) -> None:
    def cancelled() -> list[str]:
        return list(answer(call(proxy, "h__was_cancelled", {}))[1]["result"]["structuredContent"]["result"])

    before = cancelled()
    with pytest.raises(httpx2.TimeoutException):  # hanging up is how a 2026-07-28 caller cancels
        httpx2.post(
            proxy.url,
            content=call_body("h__slow", {"steps": 1, "delay": 30}),
            headers=call_headers("h__slow"),
            timeout=httpx2.Timeout(10, read=after),  # the request goes out whole; the wait for its answer is cut short
        )
    deadline = time.monotonic() + 10
    while len(cancelled()) == len(before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(cancelled()) == len(before) + 1  # the backend stopped working on it
    assert answer(call(proxy, "h__echo", {"text": "next"}))[1]["result"]["content"][0]["text"] == "next"


def test_what_the_lane_must_not_take_gets_the_sdks_refusal(proxy: ServerProcess) -> None:
    rebinding = call(proxy, "h__echo", {"text": "x"}, headers={"host": "evil.example"})
    assert rebinding.status_code in (400, 403, 421)  # DNS-rebinding protection, the SDK's answer
    mismatch = call(proxy, "h__echo", {"text": "x"}, headers={"mcp-name": "h__whoami"})
    assert mismatch.status_code == 400
    assert "header does not match the request body" in mismatch.json()["error"]["message"]
    assert answer(call(proxy, "h__echo", {"text": "still here"}))[1]["result"]["content"][0]["text"] == "still here"


def forwarded_echoes(proxy: ServerProcess) -> list[dict[str, Any]]:
    return [e for e in proxy.events() if e.get("event") == "forwarded" and e.get("tool") == "echo"]


def settled(count: Callable[[], int]) -> int:
    """The count once the proxy's log has caught up: the same twice, a moment apart (lines arrive on a pipe)."""
    last = count()
    while True:
        time.sleep(0.3)
        if (now := count()) == last:
            return now
        last = now


def test_a_call_on_the_lane_is_counted_logged_and_measured(proxy: ServerProcess) -> None:
    before = settled(lambda: len(forwarded_echoes(proxy)))  # earlier tests' lines may still be on their way
    assert call(proxy, "h__echo", {"text": "count me"}).status_code == 200
    assert settled(lambda: len(forwarded_echoes(proxy))) == before + 1
    forwarded = forwarded_echoes(proxy)
    assert forwarded[-1]["arguments"] == ["text"]
    assert "count me" not in json.dumps(forwarded[-1])  # argument values stay out of the log
    scraped = httpx2.get(proxy.base_url + "/metrics").text
    assert "mcp_server_operation_duration_seconds_count{" in scraped
    assert any('gen_ai_tool_name="h__echo"' in line for line in scraped.splitlines() if "duration" in line)


def test_a_call_on_the_lane_writes_one_log_line_and_one_passed_on_keeps_its_access_line(proxy: ServerProcess) -> None:
    lane = call(proxy, "h__echo", {"text": "one line"}, headers={"x-request-id": "lane-call-1"})
    sdk = call(proxy, "h__echo", {"text": "two lines"}, progress=True, headers={"x-request-id": "sdk-call-1"})
    assert lane.status_code == sdk.status_code == 200

    def lines_of(request_id: str) -> list[dict[str, Any]]:
        return [e for e in proxy.events() if e.get("request_id") == request_id]

    settled(lambda: len(lines_of("lane-call-1")) + len(lines_of("sdk-call-1")))
    assert [e["event"] for e in lines_of("lane-call-1")] == ["forwarded"]
    assert any(e.get("logger") == "uvicorn.access" for e in lines_of("sdk-call-1"))
