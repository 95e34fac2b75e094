"""05-mcp-proxy: two instances of one server behind one proxy, every resource of both readable.

Resource URIs are namespaced per backend the way tool names are
(`workshop://about` of the backend `local` is `local+workshop://about`), with
an exact inverse for reads, templates and subscriptions; what still clashes
(`prefix: ""` on two backends offering one URI) is one line, the same at
start, at `--check` where it can be known, and at reload.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import MCPError
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.shared.subscriptions import ResourceUpdated
from mcp.shared.uri_template import UriTemplate
from mcp.types import ResourceUpdatedNotification

from tests.harness import REPO, ServerProcess, http_client, load_sibling, run_server

FOLDER = "05-mcp-proxy"
BASIC = str(REPO / "01-basic-mcp" / "server.py")
NOTES = {"PROXY_BACKEND_NOTE": "1", "PYTHONUNBUFFERED": "1"}  # tests/proxy_backend.py with a note and a template
proxy_config = load_sibling(FOLDER, "proxy_config")

pytestmark = pytest.mark.anyio


def basic(**options: Any) -> dict[str, Any]:
    """01 over stdio, started by the proxy."""
    return {"command": sys.executable, "args": [BASIC], **options}


def write(path: Path, servers: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"mcpServers": servers}))
    return path


@contextmanager
def proxy_for(tmp_path: Path, servers: dict[str, Any]) -> Iterator[ServerProcess]:
    with ServerProcess(FOLDER, "--config", str(write(tmp_path / "proxy.json", servers))) as proxy:
        yield proxy


async def eventually(check: Callable[[], Any], within: float = 10) -> Any:
    """Ask until the answer is truthy: the proxy does these things in the background."""
    with anyio.fail_after(within):
        while True:
            if answer := check():
                return answer
            await anyio.sleep(0.05)


# --- the naming scheme ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    ["workshop://about", "file:///etc/hosts", "urn:isbn:0451450523", "data:,a%20b", "git+ssh://h/r?x=1#y", "{+uri}"],
)
def test_a_namespaced_uri_is_valid_and_maps_back_exactly(uri: str) -> None:
    backend = proxy_config.parse_config({"mcpServers": {"My_Team.a": basic()}}).backends[0]
    public = backend.public_uri(uri)
    assert public == "my-team.a+" + uri  # a scheme is letters, digits, + - . from a letter, compared without case
    assert backend.backend_uri(public) == uri
    transparent = proxy_config.parse_config({"mcpServers": {"t": basic(prefix="")}}).backends[0]
    assert transparent.public_uri(uri) == uri == transparent.backend_uri(uri)


def test_two_prefixes_that_would_share_a_namespace_are_refused_when_the_config_is_read() -> None:
    with pytest.raises(proxy_config.ConfigError) as raised:
        proxy_config.parse_config({"mcpServers": {"a": basic(prefix="team_a__"), "b": basic(prefix="team-a.")}})
    assert str(raised.value) == (
        "$.mcpServers.b.prefix: 'team-a.' gives resource URIs the namespace 'team-a+', as 'team_a__' of 'a' does; "
        "give one of them another prefix"
    )


# --- two copies of 01 -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])  # a 2026-07-28 client, and a 2025-11-25 session
async def test_two_copies_of_01_behind_one_proxy_every_resource_of_both_readable(tmp_path: Path, mode: str) -> None:
    with (
        ServerProcess("01-basic-mcp") as remote,
        proxy_for(tmp_path, {"local": basic(), "remote": {"url": remote.url}}) as proxy,
    ):
        async with http_client(proxy.url, mode=mode) as client:
            listed = {str(r.uri): r.name for r in (await client.list_resources()).resources}
            assert listed == {"local+workshop://about": "about", "remote+workshop://about": "about"}
            assert (await client.list_resource_templates()).resource_templates == []  # 01 has none
            for uri in listed:
                contents = (await client.read_resource(uri)).contents
                assert [c.uri for c in contents] == [uri]  # the answer names it as we do
                assert contents[0].text.startswith("# basic-mcp")  # type: ignore[union-attr]
            tools = {tool.name for tool in (await client.list_tools()).tools}
            assert {"local__echo_message", "remote__echo_message"} <= tools
            with pytest.raises(MCPError) as raised:
                await client.read_resource("workshop://about")  # whose? neither says it is theirs
            assert raised.value.error.code == -32602
        ready = httpx2.get(proxy.base_url + "/readyz")
        assert (ready.status_code, ready.json()["clashes"]) == (200, [])


# --- templates and subscriptions of two copies ------------------------------------------------------


async def test_templates_and_subscriptions_of_two_copies_carry_their_namespace_both_ways(tmp_path: Path) -> None:
    with ServerProcess("tests", script="proxy_backend.py", env=NOTES) as remote:
        backend = [str(REPO / "tests" / "proxy_backend.py")]
        one = {"command": sys.executable, "args": backend, "env": NOTES, "protocolVersion": "2026-07-28"}
        legacy_updates: list[str] = []

        async def on_message(message: object) -> None:
            if isinstance(message, ResourceUpdatedNotification):
                legacy_updates.append(str(message.params.uri))

        with proxy_for(tmp_path, {"one": one, "two": {"url": remote.url}}) as proxy:
            async with (
                http_client(proxy.url) as client,
                http_client(proxy.url, mode="legacy", message_handler=on_message) as legacy,
                http_client(remote.url) as direct,
            ):
                templates = [t.uri_template for t in (await client.list_resource_templates()).resource_templates]
                assert templates == ["one+note://proxy-test/notes/{name}", "two+note://proxy-test/notes/{name}"]
                for template in templates:  # expanded by the client, as any client would: mapped back exactly
                    uri = UriTemplate.parse(template).expand({"name": "a b/ü"})
                    contents = (await client.read_resource(uri)).contents
                    backend_uri = uri.split("+", 1)[1]
                    direct_contents = (await direct.read_resource(backend_uri)).contents
                    assert [c.uri for c in contents] == [uri]
                    assert contents[0].text == direct_contents[0].text  # type: ignore[union-attr]

                notes = sorted(str(r.uri) for r in (await client.list_resources()).resources)
                assert notes == ["one+note://proxy-test/note", "two+note://proxy-test/note"]
                # A tool's links to its server's resources can be read through the proxy; a link elsewhere is kept.
                linked = (await client.call_tool("two__link_note", {})).content
                uris = [str(b.uri) if b.type == "resource_link" else str(b.resource.uri) for b in linked]  # type: ignore[union-attr]
                assert uris == [
                    "two+note://proxy-test/note",
                    "https://example.com/elsewhere",
                    "two+note://proxy-test/note",
                ]
                assert (await client.read_resource(uris[0])).contents[0].text == "first"  # type: ignore[union-attr]
                await follow(legacy, "one+note://proxy-test/note")  # 2025-11-25: resources/subscribe
                async with client.listen(resource_subscriptions=["two+note://proxy-test/note"]) as stream:
                    assert stream.honored.resource_subscriptions == ["two+note://proxy-test/note"]
                    await client.call_tool("two__edit_note", {"text": "for two's followers"})
                    with anyio.fail_after(10):
                        assert await anext(aiter(stream)) == ResourceUpdated(uri="two+note://proxy-test/note")
                    await client.call_tool("one__edit_note", {"text": "for one's followers"})
                    await eventually(lambda: legacy_updates)
                    assert legacy_updates == ["one+note://proxy-test/note"]  # not two's, though its URI is the same
                    read = await legacy.read_resource("one+note://proxy-test/note")
                    assert read.contents[0].text == "for one's followers"  # type: ignore[union-attr]

                await follow(legacy, "one+note://proxy-test/note", stop=True)  # unsubscribe by the public URI
                await follow(legacy, "two+note://proxy-test/note")
                await client.call_tool("one__edit_note", {"text": "nobody follows this now"})
                await client.call_tool("two__edit_note", {"text": "but this"})
                await eventually(lambda: len(legacy_updates) == 2)
                assert legacy_updates == ["one+note://proxy-test/note", "two+note://proxy-test/note"]


async def follow(client: Any, uri: str, *, stop: bool = False) -> None:
    """`resources/subscribe` (or `unsubscribe`), which the SDK warns is gone in 2026-07-28: the point here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await (client.unsubscribe_resource(uri) if stop else client.subscribe_resource(uri))


# --- what still clashes: one line, wherever it is found ---------------------------------------------

ADVICE = 'give one of them a prefix of its own ("prefix" in its entry; "" means none)'
TWICE = f"servers 'one' and 'two' both offer every name (one server, entered twice under one prefix); {ADVICE}"


def test_one_server_entered_twice_under_one_prefix_is_one_line_at_check_and_at_start(tmp_path: Path) -> None:
    path = write(tmp_path / "twice.json", {"one": basic(prefix=""), "two": basic(prefix="")})
    check = run_server(FOLDER, "--check", "--config", str(path))
    start = run_server(FOLDER, "-t", "http", "--addr", "127.0.0.1:0", "--config", str(path))
    expected = f"server.py: error: $.mcpServers.two: {TWICE} (try --help)"
    assert (check.returncode, check.stderr.splitlines()) == (2, [expected])
    assert (start.returncode, start.stderr.splitlines()) == (2, [expected])


async def test_a_clash_found_when_the_backends_answer_is_one_line_at_start_and_at_reload(tmp_path: Path) -> None:
    """`--check` cannot know it (an HTTP backend offers what it offers); start and reload say it the same way."""
    with ServerProcess("01-basic-mcp") as remote:
        clashing = {"local": basic(prefix=""), "remote": {"url": remote.url, "prefix": ""}}
        path = write(tmp_path / "proxy.json", clashing)
        assert run_server(FOLDER, "--check", "--config", str(path)).returncode == 0
        start = run_server(FOLDER, "-t", "http", "--addr", "127.0.0.1:0", "--config", str(path))
        clash = (
            "servers 'local' and 'remote' both offer tool 'echo_message', tool 'add_numbers', tool 'countdown', "
            f"prompt 'explain_tool', resource 'workshop://about'; {ADVICE}"
        )
        assert start.returncode == 2
        assert start.stderr.splitlines()[-1] == f"server.py: error: {clash} (try --help)"
        assert "Traceback" not in start.stderr

        with ServerProcess(FOLDER, "--config", str(write(path, {"local": basic(prefix="")}))) as proxy:
            write(path, clashing)
            event = await eventually(lambda: [e for e in proxy.events() if e.get("event", "").startswith("name clash")])
            assert event == [{**event[0], "event": "name clash; the second server's are left out", "clash": clash}]
            async with http_client(proxy.url) as client:  # the first one keeps serving
                about = (await client.read_resource("workshop://about")).contents[0]
                assert about.text.startswith("# basic-mcp")  # type: ignore[union-attr]
            ready = httpx2.get(proxy.base_url + "/readyz")
            assert (ready.status_code, ready.json()["clashes"]) == (503, [clash])

            write(path, {"one": basic(prefix=""), "two": basic(prefix="")})  # known before it runs: not taken
            refused = await eventually(
                lambda: [e for e in proxy.events() if e.get("event", "").startswith("configuration not reloaded")]
            )
            assert refused[0]["error"] == f"$.mcpServers.two: {TWICE}"
