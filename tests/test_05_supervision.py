"""05-mcp-proxy under change and trouble: live lists, pinning, forwarding per call, restarts, reloads, load.

The backend here is `tests/proxy_backend.py`, a real MCP server that can
change under the proxy on request; one test also uses the official
`@modelcontextprotocol/server-everything` from npm.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.session import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.shared.subscriptions import ResourceUpdated
from mcp.types import ResourceUpdatedNotification, ToolListChangedNotification
from mcp_types import (
    CallToolResult,
    ElicitRequestParams,
    ElicitResult,
    ErrorData,
    InputRequiredResult,
    InputResponses,
    LoggingMessageNotificationParams,
)

from tests.harness import (
    HTTP_TIMEOUT,
    NODE_BIN,
    REPO,
    ServerProcess,
    free_port,
    http_client,
    remember_secret,
    run_server,
)

FOLDER = "05-mcp-proxy"
BACKEND = str(REPO / "tests" / "proxy_backend.py")

pytestmark = pytest.mark.anyio


def stdio_backend(**options: Any) -> dict[str, Any]:
    return {"command": sys.executable, "args": [BACKEND], "env": {"PYTHONUNBUFFERED": "1"}, **options}


def http_backend(port: int | None = None, env: dict[str, str] | None = None) -> ServerProcess:
    addr = ["--addr", f"127.0.0.1:{port}"] if port else []
    return ServerProcess("tests", *addr, script="proxy_backend.py", env=env)


def write_config(path: Path, servers: dict[str, Any], **options: Any) -> Path:
    path.write_text(json.dumps({"mcpProxy": {"options": options}, "mcpServers": servers}))
    return path


@contextmanager
def proxy_for(
    tmp_path: Path, servers: dict[str, Any], env: dict[str, str] | None = None, **options: Any
) -> Iterator[ServerProcess]:
    config = write_config(tmp_path / "proxy.json", servers, **options)
    with ServerProcess(FOLDER, "--config", str(config), env=env) as proxy:
        yield proxy


async def eventually(check: Callable[[], Any], within: float = 10) -> Any:
    """Ask until the answer is truthy; the proxy changes things in the background, so polling it is the point."""
    with anyio.fail_after(within):
        while True:
            answer = check()
            if inspect.isawaitable(answer):
                answer = await answer
            if answer:
                return answer
            await anyio.sleep(0.1)


async def tool_names(client: Client) -> list[str]:
    return [tool.name for tool in (await client.list_tools()).tools]


def text(result: Any) -> str:
    return str(result.content[0].text)


def readyz(proxy: ServerProcess) -> dict[str, Any]:
    """Each backend's state, as /readyz tells it."""
    return dict(httpx2.get(proxy.base_url + "/readyz").json()["backends"])


# --- the live catalogue ----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["2025-11-25", "2026-07-28"])
async def test_a_backend_s_list_changed_is_passed_on_once_even_when_the_list_ends_the_same(
    tmp_path: Path, protocol: str
) -> None:
    # The backend tells the proxy on its 2025-11-25 session, or on the 2026-07-28 subscription the proxy holds.
    # `newTools: trust` lets the added tool through unapproved (pinned on first sight, with a log line).
    # A backend that says its list changed may have added a tool and taken it away again before the proxy
    # looked (issue 17 item 7): a client connected to it directly would have heard, so through 05 it hears too.
    with proxy_for(tmp_path, {"b": stdio_backend(protocolVersion=protocol, newTools="trust")}) as proxy:
        events: list[object] = []
        legacy_events: list[object] = []

        async def on_message(message: object) -> None:
            if isinstance(message, ToolListChangedNotification):
                legacy_events.append(message)

        async with (
            http_client(proxy.url) as client,
            http_client(proxy.url, mode="legacy", message_handler=on_message) as legacy,
            client.listen(tools_list_changed=True) as subscription,
            anyio.create_task_group() as tg,
        ):

            async def collect() -> None:
                async for event in subscription:
                    events.append(event)

            tg.start_soon(collect)
            await legacy.list_tools()  # the proxy now knows this 2025-11-25 session
            await client.call_tool("b__poke", {})  # "the list changed", though it ends the same
            await eventually(lambda: events and legacy_events)
            await anyio.sleep(0.7)
            assert (len(events), len(legacy_events)) == (1, 1)
            await client.call_tool("b__add_tool", {"name": "extra"})
            await eventually(lambda: len(events) > 1 and len(legacy_events) > 1)
            await anyio.sleep(0.7)
            assert (len(events), len(legacy_events)) == (2, 2)
            assert "b__extra" in await tool_names(client)
            assert text(await client.call_tool("b__extra", {"text": "new"})) == "new"
            assert any(e.get("event") == "new tool pinned on first sight (newTools: trust)" for e in proxy.events())
            tg.cancel_scope.cancel()


WITH_NOTE = {"PROXY_BACKEND_NOTE": "1"}  # the test backend offers a resource, `note://proxy-test/note`


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_a_changed_resource_reaches_the_clients_that_follow_it_in_both_eras(
    tmp_path: Path, transport: str
) -> None:
    # The backend speaks 2026-07-28: the proxy follows the note on its own listen stream to the backend.
    with note_backend(transport) as backend, proxy_for(tmp_path, {"b": backend}) as proxy:
        updates: list[str] = []
        legacy_updates: list[str] = []

        async def on_message(message: object) -> None:
            if isinstance(message, ResourceUpdatedNotification):
                legacy_updates.append(str(message.params.uri))

        async with (
            http_client(proxy.url) as client,
            http_client(proxy.url, mode="legacy", message_handler=on_message) as legacy,
            anyio.create_task_group() as tg,
        ):
            note = await note_uri(client)
            async with client.listen(resource_subscriptions=[note, "note://nobody/has-this"]) as subscription:
                assert subscription.honored.resource_subscriptions == [note]  # an unknown URI is not promised
                await legacy_follow(legacy, note)

                async def collect() -> None:
                    async for event in subscription:
                        if isinstance(event, ResourceUpdated):
                            updates.append(event.uri)

                tg.start_soon(collect)
                assert text(await client.call_tool("b__edit_note", {"text": "second"})) == "second"
                await eventually(lambda: updates and legacy_updates)
                assert (updates, legacy_updates) == ([note], [note])
                assert (await client.read_resource(note)).contents[0].text == "second"  # type: ignore[union-attr]

                await legacy_follow(legacy, note, stop=True)
                await client.call_tool("b__edit_note", {"text": "third"})
                await eventually(lambda: len(updates) == 2)
                await anyio.sleep(0.5)
                assert legacy_updates == [note]  # it stopped following
                with pytest.raises(MCPError) as raised:
                    await legacy_follow(legacy, "note://nobody/has-this")
                assert raised.value.error.code == -32602
                tg.cancel_scope.cancel()
        metrics = httpx2.get(proxy.base_url + "/metrics").text
        assert re.search(r'mcp_proxy_resource_updates_total\{[^}]*server="b"[^}]*\} 2\.0', metrics)


async def test_a_followed_resource_is_followed_again_after_its_backend_restarts(tmp_path: Path) -> None:
    port = free_port()
    servers = {"b": {"url": f"http://127.0.0.1:{port}/mcp"}}
    with http_backend(port, env=WITH_NOTE) as backend, proxy_for(tmp_path, servers) as proxy:
        async with http_client(proxy.url) as client:
            note = await note_uri(client)
            async with client.listen(resource_subscriptions=[note]) as subscription:
                backend.stop()
                with http_backend(port, env=WITH_NOTE):  # a new process, which has never heard of the proxy
                    await eventually(lambda: _ready(proxy, "b"), within=15)
                    await client.call_tool("b__edit_note", {"text": "after the restart"})
                    with anyio.fail_after(10):
                        assert await anext(aiter(subscription)) == ResourceUpdated(uri=note)


def _ready(proxy: ServerProcess, name: str) -> bool:
    backend = readyz(proxy)[name]
    return bool(backend["state"] == "up" and backend["restarts"] >= 1)


async def note_uri(client: Client) -> str:
    return next(str(r.uri) for r in (await client.list_resources()).resources if r.name == "note")


async def legacy_follow(client: Client, uri: str, *, stop: bool = False) -> None:
    """`resources/subscribe` (or `unsubscribe`): how a 2025-11-25 client follows a resource; the SDK warns it is
    gone in 2026-07-28, which is the point of asking in both eras."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await (client.unsubscribe_resource(uri) if stop else client.subscribe_resource(uri))


@contextmanager
def note_backend(transport: str) -> Iterator[dict[str, Any]]:
    """The test backend in 2026-07-28: a subprocess of the proxy's, or a server of its own over HTTP."""
    if transport == "stdio":
        yield stdio_backend(protocolVersion="2026-07-28", env={**WITH_NOTE, "PYTHONUNBUFFERED": "1"})
        return
    with http_backend(env=WITH_NOTE) as server:
        yield {"url": server.url}


async def test_a_backend_without_resource_subscriptions_says_so(tmp_path: Path) -> None:
    # Over stdio in 2025-11-25 the SDK's MCPServer offers no `resources/subscribe`: the caller is told, not ignored.
    with proxy_for(tmp_path, {"b": stdio_backend(env={**WITH_NOTE, "PYTHONUNBUFFERED": "1"})}) as proxy:
        async with http_client(proxy.url, mode="legacy") as legacy:
            with pytest.raises(MCPError) as raised:
                await legacy_follow(legacy, await note_uri(legacy))
            assert "does not offer resource subscriptions" in raised.value.error.message


async def test_a_changed_tool_definition_is_quarantined_until_approved(tmp_path: Path) -> None:
    with proxy_for(tmp_path, {"b": stdio_backend()}) as proxy:
        async with http_client(proxy.url) as client:
            assert "b__echo" in await tool_names(client)
            await client.call_tool("b__rug_pull", {})
            await eventually(lambda: _without(client, "b__echo"))
            with pytest.raises(MCPError) as raised:
                await client.call_tool("b__echo", {"text": "hi"})
            assert raised.value.error.code == -32602
            assert "quarantined" in raised.value.error.message and "--approve b/echo" in raised.value.error.message
            metrics = httpx2.get(proxy.base_url + "/metrics").text
            assert re.search(r'mcp_proxy_pin_violations_total\{[^}]*server="b"[^}]*\} 1\.0', metrics)
            assert any(e.get("event") == "tool definition changed since it was pinned" for e in proxy.events())
            approved = run_server(FOLDER, "--approve", "b/echo", "--config", str(tmp_path / "proxy.json"))
            assert approved.returncode == 0, approved.stderr
            await eventually(lambda: _with(client, "b__echo"))
            assert text(await client.call_tool("b__echo", {"text": "back"})) == "back"


async def test_a_tool_a_pinned_server_adds_or_renames_is_quarantined_until_approved(tmp_path: Path) -> None:
    # Trust on first use is per server: once its tools are pinned, a name it did not offer then is not trusted,
    # neither a new tool nor `echo` renamed `delete_everything` with the same description.
    with proxy_for(tmp_path, {"b": stdio_backend()}) as proxy:
        async with http_client(proxy.url) as client, http_client(proxy.url) as bystander:
            assert "b__echo" in await tool_names(client)
            await client.call_tool("b__add_tool", {"name": "extra"})
            await client.call_tool("b__rename", {"name": "delete_everything"})
            await eventually(lambda: _without(client, "b__echo"))
            names = await tool_names(client)
            assert "b__extra" not in names and "b__delete_everything" not in names
            for name, arguments in (("b__extra", {"text": "hi"}), ("b__delete_everything", {"text": "hi"})):
                with pytest.raises(MCPError) as raised:
                    await client.call_tool(name, arguments)
                assert raised.value.error.code == -32602
                assert "quarantined" in raised.value.error.message and "did not offer" in raised.value.error.message
            events = [e for e in proxy.events() if e.get("event") == "new tool on a pinned server"]
            assert {e["tool"] for e in events} == {"extra", "delete_everything"}
            assert [e.get("same_definition_as") for e in events if e["tool"] == "delete_everything"] == [["echo"]]
            metrics = httpx2.get(proxy.base_url + "/metrics").text
            assert re.search(r'mcp_proxy_pin_violations_total\{[^}]*server="b"[^}]*\} 2\.0', metrics)
            assert (await bystander.call_tool("b__whoami", {})).is_error is False  # the rest keeps serving
            approved = run_server(FOLDER, "--approve", "b/delete_everything", "--config", str(tmp_path / "proxy.json"))
            assert approved.returncode == 0, approved.stderr
            await eventually(lambda: _with(client, "b__delete_everything"))
            assert text(await client.call_tool("b__delete_everything", {"text": "back"})) == "back"
            assert "b__extra" not in await tool_names(client)  # approving one tool approves only that one


async def test_readyz_and_metrics_refuse_a_foreign_host_or_origin(tmp_path: Path) -> None:
    # A web page on a rebound name (evil.example -> 127.0.0.1) must not read which backends run and their pids.
    with proxy_for(tmp_path, {"b": stdio_backend()}) as proxy:
        for path in ("/readyz", "/metrics", "/healthz"):
            assert httpx2.get(proxy.base_url + path, headers={"Host": "evil.example"}).status_code == 421, path
            foreign = {"Origin": "http://evil.example"}
            assert httpx2.get(proxy.base_url + path, headers=foreign).status_code == 403, path
            assert httpx2.get(proxy.base_url + path).status_code == 200, path
        async with http_client(proxy.url) as client:
            assert text(await client.call_tool("b__echo", {"text": "still here"})) == "still here"


async def _with(client: Client, name: str) -> bool:
    return name in await tool_names(client)


async def _without(client: Client, name: str) -> bool:
    return name not in await tool_names(client)


# --- forwarding what belongs to one call ----------------------------------------------------------


async def test_progress_cancellation_and_questions_reach_the_client_that_called(tmp_path: Path) -> None:
    # "s" over stdio and "old" over HTTP speak the 2025-11-25 handshake; "h" finds 2026-07-28 on the same
    # server, and "m" is told to speak 2026-07-28 over stdio.
    with (
        http_backend() as over_http,
        proxy_for(
            tmp_path,
            {
                "s": stdio_backend(),
                "h": {"url": over_http.url},
                "old": {"url": over_http.url, "protocolVersion": "2025-11-25"},
                "m": stdio_backend(protocolVersion="2026-07-28"),
            },
        ) as proxy,
    ):
        assert {name: b["protocol"] for name, b in readyz(proxy).items()} == {
            "s": "2025-11-25",
            "h": "2026-07-28",
            "old": "2025-11-25",
            "m": "2026-07-28",
        }
        async with http_client(proxy.url) as client:
            for server in ("s", "h", "old", "m"):
                seen: list[tuple[float, float | None, str | None]] = []

                async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                    seen.append((progress, total, message))  # noqa: B023 - awaited before the loop moves on

                result = await client.call_tool(
                    f"{server}__slow", {"steps": 3, "delay": 0.05}, progress_callback=on_progress
                )
                assert text(result) == "done"
                assert seen == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]

            for server in (
                "s",
                "h",
                "m",
            ):  # cancelled by notifications/cancelled, or (2026-07-28 HTTP) closing the stream
                before = len(await _structured(client, f"{server}__was_cancelled"))
                with anyio.move_on_after(0.6):
                    await client.call_tool(f"{server}__slow", {"steps": 50, "delay": 0.1})
                await eventually(lambda: _grew(client, f"{server}__was_cancelled", before))  # noqa: B023

        async def answer(context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult | ErrorData:
            assert params.message == "favourite colour?"
            return ElicitResult(action="accept", content={"colour": "blue"})

        question = {"question": "favourite colour?"}
        for mode in ("legacy", "2026-07-28"):
            logged: list[tuple[str, Any]] = []

            async def on_log(params: LoggingMessageNotificationParams) -> None:
                logged.append((params.level, params.data))  # noqa: B023 - read before the loop moves on

            async with (
                httpx2.AsyncClient(timeout=HTTP_TIMEOUT) as http,
                Client(
                    streamable_http_client(proxy.url, http_client=http),
                    mode=mode,
                    elicitation_callback=answer,
                    logging_callback=on_log,
                    log_level="info",  # 2026-07-28: log lines come only when asked for
                ) as caller,
            ):
                # A backend's log line about a call reaches the client that made the call, in either era.
                for server in ("s", "h", "old", "m"):
                    assert text(await caller.call_tool(f"{server}__chatty", {})) == "said"
                    assert logged, (mode, server)
                    assert logged.pop() == ("info", "working on it")
                # Asked in whichever era the backend speaks: by the proxy for a 2025-11-25 caller, and by a
                # 2026-07-28 caller itself (it gets the backend's input_required, answers, and calls again).
                # Asked in whichever era each side speaks. A 2025-11-25 caller is asked mid-call by the proxy. A
                # 2026-07-28 caller gets input_required, answers and calls again: passed through from a 2026-07-28
                # backend, and made by the proxy from a 2025-11-25 backend's question mid-call (the call parked).
                for server in ("s", "h", "old", "m"):
                    assert text(await caller.call_tool(f"{server}__ask_either_era", question)) == "accept: blue"
                # A question mid-call, from a backend in a 2025-11-25 session. For a 2025-11-25 caller the proxy
                # holds one with the HTTP backend too, beside its 2026-07-28 link (issue 17 item 4).
                for server in ("s", "old", *(["h"] if mode == "legacy" else [])):
                    assert text(await caller.call_tool(f"{server}__ask", question)) == "accept: blue"
                if mode != "legacy":  # a made-up or stale requestState is refused in words, and nothing breaks
                    with pytest.raises(MCPError, match="requestState names no call waiting for an answer"):
                        await caller.call_tool("s__ask", question, request_state="mcp-proxy.parked.made-up")
                    assert text(await caller.call_tool("s__ask", question)) == "accept: blue"
                    await _a_wrong_retry_leaves_the_call_parked(caller, question)
                if mode != "legacy":  # as directly: in 2026-07-28 the backend itself cannot ask mid-call
                    with pytest.raises(MCPError, match="no back-channel"):
                        await caller.call_tool("h__ask", question)


async def _a_wrong_retry_leaves_the_call_parked(caller: Client, question: dict[str, Any]) -> None:
    """Driving the rounds by hand: a retry without the answer, or for another tool, does not lose the call."""
    session = caller.session
    asked = await session.call_tool("s__ask", question, allow_input_required=True)
    assert isinstance(asked, InputRequiredResult) and asked.request_state is not None
    with pytest.raises(MCPError, match=r"inputResponses\.question is missing"):
        await session.call_tool("s__ask", question, request_state=asked.request_state, allow_input_required=True)
    with pytest.raises(MCPError, match="requestState names no call waiting"):
        await session.call_tool("s__echo", {"text": "x"}, request_state=asked.request_state, allow_input_required=True)
    answer: InputResponses = {"question": ElicitResult(action="accept", content={"colour": "red"})}
    done = await session.call_tool(
        "s__ask", question, request_state=asked.request_state, input_responses=answer, allow_input_required=True
    )
    assert isinstance(done, CallToolResult) and text(done) == "accept: red"


async def _grew(client: Client, tool: str, before: int) -> bool:
    return len(await _structured(client, tool)) > before


async def _structured(client: Client, tool: str) -> Any:
    return (await client.call_tool(tool, {})).structured_content["result"]


async def test_the_idle_timeout_is_reset_by_progress(tmp_path: Path) -> None:
    with proxy_for(tmp_path, {"b": stdio_backend(toolTimeouts={"slow": "1s"})}) as proxy:
        async with http_client(proxy.url) as client:
            assert text(await client.call_tool("b__slow", {"steps": 4, "delay": 0.5})) == "done"  # 2 s, never idle
            silent = await client.call_tool("b__slow", {"steps": 1, "delay": 3})
    assert silent.is_error and "no answer within the idle timeout of 1 s" in text(silent)


# --- trouble ---------------------------------------------------------------------------------------


async def test_a_killed_stdio_backend_fails_its_call_and_comes_back(tmp_path: Path) -> None:
    with proxy_for(tmp_path, {"b": stdio_backend(), "other": stdio_backend()}) as proxy:
        async with http_client(proxy.url) as client:
            first = (await client.call_tool("b__whoami", {})).structured_content["pid"]
            other = (await client.call_tool("other__whoami", {})).structured_content["pid"]
            results: list[Any] = []

            async def slow_call() -> None:
                results.append(await client.call_tool("b__slow", {"steps": 50, "delay": 0.1}))

            async with anyio.create_task_group() as tg:
                tg.start_soon(slow_call)
                await anyio.sleep(0.5)
                os.kill(first, signal.SIGKILL)
            assert results[0].is_error
            assert "went away during the call (the backend process killed by signal 9)" in text(results[0])
            assert "did not send it again" in text(results[0])
            again = (await client.call_tool("b__whoami", {})).structured_content["pid"]
            assert again != first
            assert (await client.call_tool("other__whoami", {})).structured_content["pid"] == other
        ready = readyz(proxy)
        assert (ready["b"]["state"], ready["b"]["restarts"], ready["other"]["restarts"]) == ("up", 1, 0)
        metrics = httpx2.get(proxy.base_url + "/metrics").text
        assert re.search(r'mcp_proxy_backend_restarts_total\{[^}]*server="b"[^}]*\} 1\.0', metrics)


@pytest.mark.parametrize("protocol", ["2025-11-25", "2026-07-28"])
async def test_an_http_backend_that_restarted_is_reached_again_and_no_call_is_sent_twice(
    tmp_path: Path, protocol: str
) -> None:
    port = free_port()
    servers = {"h": {"url": f"http://127.0.0.1:{port}/mcp", "protocolVersion": protocol}}
    with http_backend(port) as backend, proxy_for(tmp_path, servers) as proxy:
        async with http_client(proxy.url) as client:
            assert (await client.call_tool("h__increment", {})).structured_content == {"result": 1}
            backend.stop()
            with http_backend(port):
                # A new process: counting from 1 again, and each call sent once.
                assert (await client.call_tool("h__increment", {})).structured_content == {"result": 1}
                assert (await client.call_tool("h__increment", {})).structured_content == {"result": 2}
    # In 2025-11-25 the new process has never seen the proxy's session: 404, then a new session.
    # In 2026-07-28 there is no session to lose.
    renewed = any(e.get("event") == "backend lost our session; starting a new one" for e in proxy.events())
    assert renewed == (protocol == "2025-11-25")


async def test_a_backend_down_for_long_has_its_tools_withdrawn_until_it_is_back(tmp_path: Path) -> None:
    port = free_port()
    servers = {"h": {"url": f"http://127.0.0.1:{port}/mcp"}, "b": stdio_backend()}
    with http_backend(port) as backend, proxy_for(tmp_path, servers) as proxy:
        async with http_client(proxy.url) as client:
            assert "h__echo" in await tool_names(client)
            backend.stop()
            await anyio.sleep(3)  # a restart this quick would keep them: calls wait for it as long
            assert "h__echo" in await tool_names(client)
            await eventually(lambda: _without(client, "h__echo"), within=15)  # gone after 10 s down
            assert "b__echo" in await tool_names(client)  # the other backend never noticed
            with http_backend(port):
                await eventually(lambda: _with(client, "h__echo"), within=15)
                assert text(await client.call_tool("h__echo", {"text": "back"})) == "back"
            assert readyz(proxy)["h"]["restarts"] >= 1


async def test_an_unreachable_http_backend_is_tried_again_however_long_it_is_gone(tmp_path: Path) -> None:
    """A remote server out of reach is not a crash loop: it is tried again, and /readyz says when.

    With `restart.max` 5 and a first wait of 0.1 s, the crash-loop rule gave up
    after 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s of failed connects; the backend stays
    away twice that (a small `maxDelay` keeps the tries coming), then is back on its port.
    """
    port = free_port()
    restart = {"max": 5, "delay": "100ms", "maxDelay": "400ms"}
    servers = {"h": {"url": f"http://127.0.0.1:{port}/mcp", "restart": restart}}
    with http_backend(port) as backend, proxy_for(tmp_path, servers) as proxy:
        async with http_client(proxy.url) as client:
            assert text(await client.call_tool("h__echo", {"text": "before"})) == "before"
            backend.stop()
            await eventually(lambda: readyz(proxy)["h"]["state"] != "up")
            away_until = anyio.current_time() + 2 * sum(0.1 * 2**i for i in range(5))
            seen: list[dict[str, Any]] = []
            while anyio.current_time() < away_until:  # the point is time passing with the backend away
                seen.append(readyz(proxy)["h"])
                await anyio.sleep(0.2)
            assert {h["state"] for h in seen} == {"restarting"}
            waits = [h["next_try_in"] for h in seen if h["next_try_in"] is not None]
            assert waits and all(0 <= wait <= 0.4 for wait in waits)
            assert all(h["next_try_at"] is not None for h in seen if h["next_try_in"] is not None)
            with http_backend(port):
                await eventually(lambda: _ready(proxy, "h"), within=10)
                assert text(await client.call_tool("h__echo", {"text": "back"})) == "back"
                health = readyz(proxy)["h"]
                assert (health["state"], health["next_try_in"], health["next_try_at"]) == ("up", None, None)


async def test_a_call_made_while_a_backend_is_torn_down_is_answered_as_soon_as_it_is_back(tmp_path: Path) -> None:
    """The backend hangs up and takes 3 s to go; a call made meanwhile waits for the new one, not its 10 s."""
    with proxy_for(tmp_path, {"b": stdio_backend(restart={"delay": "100ms"})}) as proxy:
        async with http_client(proxy.url) as client:
            first = (await client.call_tool("b__whoami", {})).structured_content["pid"]
            hung = await client.call_tool("b__hang_up", {"linger": 3})
            assert hung.is_error, hung  # the link is down
            os.kill(first, 0)  # and the process still there: the proxy is tearing the link down
            started = anyio.current_time()
            again = (await client.call_tool("b__whoami", {})).structured_content["pid"]
            answered, waited = time.time(), anyio.current_time() - started
        up = [e for e in proxy.events() if e.get("event") == "backend up" and e.get("pid") == again]
        back = datetime.fromisoformat(up[0]["timestamp"]).timestamp()
        assert again != first
        assert answered - back < 1.5, f"answered {answered - back:.1f} s after the backend was back"
        assert waited < 8, f"waited {waited:.1f} s"


async def test_a_backend_down_at_start_joins_when_it_comes_up(tmp_path: Path) -> None:
    port = free_port()
    servers = {"h": {"url": f"http://127.0.0.1:{port}/mcp", "restart": {"delay": "0.2s"}}, "b": stdio_backend()}
    with proxy_for(tmp_path, servers) as proxy:
        assert readyz(proxy)["h"]["state"] == "failed"
        async with http_client(proxy.url) as client:
            assert not any(name.startswith("h__") for name in await tool_names(client))
            with http_backend(port):
                await eventually(lambda: _with(client, "h__echo"), within=15)
                assert text(await client.call_tool("h__echo", {"text": "up"})) == "up"


async def test_a_changed_config_restarts_only_what_changed_and_a_broken_one_is_ignored(tmp_path: Path) -> None:
    with proxy_for(tmp_path, {"a": stdio_backend()}) as proxy:
        async with http_client(proxy.url) as client:
            pid = (await client.call_tool("a__whoami", {})).structured_content["pid"]
            write_config(tmp_path / "proxy.json", {"a": stdio_backend(), "c": stdio_backend()})
            await eventually(lambda: _with(client, "c__echo"))
            assert (await client.call_tool("a__whoami", {})).structured_content["pid"] == pid
            (tmp_path / "proxy.json").write_text('{"mcpServers": {"a": {"command": 1}}')
            refused = "configuration not reloaded; the last good one keeps serving"
            await eventually(lambda: any(e.get("event") == refused for e in proxy.events()))
            assert {"a__echo", "c__echo"} <= set(await tool_names(client))


# --- security -------------------------------------------------------------------------------------


async def test_tokens_open_only_their_backends_and_authorization_is_forwarded_only_when_configured(
    tmp_path: Path,
) -> None:
    scoped, full = remember_secret("proxy-token-for-a-only"), remember_secret("proxy-token-for-everything")
    with proxy_for(
        tmp_path,
        {"a": stdio_backend(), "b": stdio_backend()},
        env={"T_A": scoped, "T_ALL": full},
        authTokens=[{"token": "${T_A}", "servers": ["a"]}, "${T_ALL}"],
    ) as proxy:
        async with http_client(proxy.url, headers={"authorization": f"Bearer {scoped}"}) as client:
            assert {name.split("__")[0] for name in await tool_names(client)} == {"a"}
            with pytest.raises(MCPError) as raised:
                await client.call_tool("b__echo", {"text": "no"})
            assert raised.value.error.message == "Unknown tool: b__echo"
        async with http_client(proxy.url, headers={"authorization": f"Bearer {full}"}) as client:
            assert {name.split("__")[0] for name in await tool_names(client)} == {"a", "b"}

    caller_token = remember_secret("a-token-meant-for-the-backend")
    with (
        http_backend() as backend,
        proxy_for(
            tmp_path, {"kept": {"url": backend.url}, "passed": {"url": backend.url, "forwardAuthorization": True}}
        ) as proxy,
    ):
        async with http_client(proxy.url, headers={"authorization": f"Bearer {caller_token}"}) as client:
            kept = (await client.call_tool("kept__whoami", {})).structured_content
            passed = (await client.call_tool("passed__whoami", {})).structured_content
    assert kept is not None and kept["authorization"] is None
    assert passed is not None and passed["authorization"] == f"Bearer {caller_token}"
    assert any("TOKEN PASSTHROUGH" in str(e.get("event")) for e in proxy.events())


MACHINE_SECRET = "machine-secret-for-the-proxy-test"


@contextmanager
def oauth_backend() -> Iterator[tuple[str, ServerProcess]]:
    """03's authorization server and its protected MCP server, as the workshop runs them: (MCP URL, the AS)."""
    env = {"MACHINE_CLIENT_SECRET": MACHINE_SECRET}  # a demo credential: the server prints it for you to type
    mcp_port = free_port()
    url = f"http://127.0.0.1:{mcp_port}/mcp"
    issuer = ServerProcess("03-oauth-mcp", "--resource", url, script="authorization_server.py", env=env)
    with issuer, ServerProcess("03-oauth-mcp", "--issuer", issuer.url, "--addr", f"127.0.0.1:{mcp_port}", env=env):
        yield url, issuer


async def test_a_protected_backend_gets_the_proxys_own_token_not_the_callers(tmp_path: Path) -> None:
    with oauth_backend() as (url, issuer):
        oauth = {"clientId": "workshop-machine", "clientSecret": "${MACHINE_CLIENT_SECRET}", "issuer": issuer.url}
        env = {"MACHINE_CLIENT_SECRET": MACHINE_SECRET}
        with proxy_for(tmp_path, {"o": {"url": url, "oauth": oauth}}, env=env) as proxy:
            async with http_client(proxy.url, headers={"Authorization": "Bearer the-callers-own-token"}) as client:
                who = (await client.call_tool("o__who_am_i", {})).structured_content
            # Issued by 03's authorization server to the proxy's client, for exactly that backend.
            assert who is not None
            assert (who["client_id"], who["aud"], who["iss"]) == ("workshop-machine", url, issuer.url)
            assert readyz(proxy)["o"]["state"] == "up"
        for changed, secret in (
            ({}, "not-the-secret"),
            # The secret goes to no other authorization server than the one configured.
            ({"issuer": "http://127.0.0.1:9"}, MACHINE_SECRET),
        ):
            servers = {"o": {"url": url, "oauth": {**oauth, **changed}}}
            with proxy_for(tmp_path, servers, env={"MACHINE_CLIENT_SECRET": secret}) as proxy:
                error = await eventually(lambda: readyz(proxy)["o"]["error"])
                assert "could not get a token" in error


# --- a foreign backend, and load --------------------------------------------------------------------


async def test_the_official_everything_server_behind_the_proxy(tmp_path: Path) -> None:
    node_dir = str(Path(sys.executable).parent)  # the Node 22 the dev extras install
    everything = {
        "command": str(NODE_BIN / "mcp-server-everything"),
        "args": ["stdio"],
        "env": {"PATH": f"{node_dir}:/usr/bin:/bin"},
        "prefix": "ev_",
    }
    with proxy_for(tmp_path, {"everything": everything}) as proxy:
        async with http_client(proxy.url) as client:
            names = await tool_names(client)
            assert {"ev_echo", "ev_get-sum", "ev_trigger-long-running-operation"} <= set(names)
            assert text(await client.call_tool("ev_echo", {"message": "hi"})) == "Echo: hi"
            seen: list[float] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append(progress)

            await client.call_tool(
                "ev_trigger-long-running-operation", {"duration": 1, "steps": 3}, progress_callback=on_progress
            )
            assert seen == [1, 2, 3]
            templates = (await client.list_resource_templates()).resource_templates
            assert "ev+demo://resource/dynamic/text/{resourceId}" in [t.uri_template for t in templates]
            dynamic = await client.read_resource("ev+demo://resource/dynamic/text/7")  # through a template
            assert "7" in dynamic.contents[0].text  # type: ignore[union-attr]
            prompts = [p.name for p in (await client.list_prompts()).prompts]
            assert "ev_simple-prompt" in prompts

            # Resource updates from a 2025-11-25 backend: the proxy follows the resource with `resources/subscribe`
            # on its session, and passes what comes back to the clients that follow it, in both eras.
            uri = str((await client.list_resources()).resources[0].uri)
            legacy_updates: list[str] = []

            async def on_message(message: object) -> None:
                if isinstance(message, ResourceUpdatedNotification):
                    legacy_updates.append(str(message.params.uri))

            async with (
                http_client(proxy.url, mode="legacy", message_handler=on_message) as legacy,
                client.listen(resource_subscriptions=[uri]) as subscription,
            ):
                await legacy_follow(legacy, uri)
                await client.call_tool("ev_toggle-subscriber-updates", {})  # it sends one at once, then every 5 s
                with anyio.fail_after(10):
                    first = await anext(aiter(subscription))
                assert first == ResourceUpdated(uri=uri)
                await eventually(lambda: legacy_updates)
                assert legacy_updates[0] == uri


async def test_two_hundred_clients_at_once_lose_nothing_and_leak_nothing(tmp_path: Path) -> None:
    with proxy_for(tmp_path, {"b": stdio_backend()}) as proxy:
        assert proxy.proc is not None
        pid = proxy.proc.pid
        async with http_client(proxy.url) as warm:
            await warm.call_tool("b__echo", {"text": "warm"})
        before_fds, before_children = open_files(pid), children(pid)
        errors: list[str] = []
        done = [0]
        connected, all_connected = [0], anyio.Event()
        until = [0.0]

        async def one_client(index: int) -> None:
            try:
                async with http_client(proxy.url) as client:
                    # The 10 s start once all 200 are connected: on a slow day connecting 200 SDK clients in
                    # one process takes about that long by itself, and no call would be left in the window.
                    connected[0] += 1
                    if connected[0] == 200:
                        until[0] = anyio.current_time() + 10
                        all_connected.set()
                    await all_connected.wait()
                    while anyio.current_time() < until[0]:
                        message = f"{index}-{done[0]}"
                        if text(await client.call_tool("b__echo", {"text": message})) != message:
                            errors.append(f"wrong answer for {message}")
                        done[0] += 1
            except Exception as exc:
                errors.append(repr(exc))
                all_connected.set()  # a client that cannot connect must not hold the others up

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for index in range(200):
                    tg.start_soon(one_client, index)
        assert errors == []
        assert done[0] >= 200
        await anyio.sleep(1)
        assert children(pid) == before_children == 1  # the one stdio backend, still the same
        assert open_files(pid) <= before_fds + 5


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def children(pid: int) -> int:
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                count += 1
    return count
