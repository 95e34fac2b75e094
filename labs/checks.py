"""What each lab's `check` does: start the attendee's copy of the module for real and try what the lab is about.

Every check takes the folder of a copy of the module (the attendee's, under my-labs/, or the module itself)
and either returns one line saying what works, or raises `Missing` with one line saying what is still
missing or wrong. The attack labs (02-replay, 05-rug-pull) run their attack here too: `labs attack` prints
the story, `labs check` wants the attack stopped.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx2
from mcp import Client, MCPError
from mcp_types import CallToolResult, TextContent, TextResourceContents, Tool

from shared import Secret
from tests.harness import REPO, ServerProcess, http_client, parse_json_line, remember_secret

CHECK_TIMEOUT = 60.0  # seconds for a whole check: a server that hangs is a failure, not a wait
CHANGE_TIMEOUT = 10.0  # seconds the proxy gets to notice that a backend changed its tools
SHARED_TOOLS = {"echo_message", "add_numbers"}  # what 01 offers before the lab: not the attendee's own
BACKEND = REPO / "tests" / "proxy_backend.py"  # an MCP server that rug-pulls and renames on request
BACKEND_NAME = "friendly"
RUG_PULLED = "id_rsa"  # a word of the description proxy_backend.py's `rug_pull` gives `echo`


class Missing(Exception):
    """What the attendee's copy still lacks, in one line."""


TRACEBACK_PLACE = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)')


def one_line(error: BaseException) -> str:
    """A server that did not start says why in its last lines (a SyntaxError, a NameError): that, and where."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for event in filter(None, (parse_json_line(line) for line in lines)):
        if event.get("exception"):  # the server's own log line carries the traceback
            lines = str(event["exception"]).splitlines()
    places = [found for line in lines if (found := TRACEBACK_PLACE.search(line))]
    where = f" ({Path(places[-1]['file']).name}, line {places[-1]['line']})" if places else ""
    for line in reversed(lines):
        if re.match(r"^\w+(Error|Exception)\b", line.strip()):
            return line.strip() + where
    return lines[-1].strip() if lines else type(error).__name__


@contextlib.contextmanager
def running(folder: Path, *args: str) -> Iterator[ServerProcess]:
    """The copy's server.py over HTTP on a free port; one line, not a traceback, if it will not start."""
    try:  # the folder is absolute, so the harness's `REPO / folder` is the copy itself
        server = ServerProcess(str(folder), *args).start()
    except RuntimeError as exc:
        raise Missing(f"the server does not start: {one_line(exc)}") from None
    try:
        yield server
    finally:
        server.stop()


def text_of(result: CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, TextContent))


# --- 01-tool: a tool of your own, with a typed, bounded argument, that reports progress -----------------


def bounds(tool: Tool) -> tuple[str, int, int] | None:
    """The tool's first integer argument with a lowest and a highest value: (name, lowest, highest)."""
    for name, schema in (tool.input_schema.get("properties") or {}).items():
        if not isinstance(schema, dict) or schema.get("type") != "integer":
            continue
        low = schema.get("minimum", schema.get("exclusiveMinimum", None))
        high = schema.get("maximum", schema.get("exclusiveMaximum", None))
        if low is None or high is None:
            continue
        low += 1 if "minimum" not in schema else 0
        high -= 1 if "maximum" not in schema else 0
        return name, int(low), int(high)
    return None


async def check_01_tool(folder: Path) -> str:
    with running(folder) as server:
        async with http_client(server.url) as client:
            own = [tool for tool in (await client.list_tools()).tools if tool.name not in SHARED_TOOLS]
            if not own:
                raise Missing("no tool of your own yet: add an `async def` with `@mcp.tool()` in server.py")
            bounded = [(tool, found) for tool in own if (found := bounds(tool)) is not None]
            if not bounded:
                names = ", ".join(f"`{tool.name}`" for tool in own)
                raise Missing(f"{names} takes no bounded integer: type one as `Annotated[int, Field(ge=1, le=10)]`")
            tool, (argument, low, high) = bounded[0]
            required = set(tool.input_schema.get("required") or []) - {argument}
            if required:
                raise Missing(f"`{tool.name}` needs more than `{argument}`: give it that one argument only")
            try:
                refused = (await client.call_tool(tool.name, {argument: high + 1})).is_error
            except MCPError:
                refused = True
            if not refused:
                raise Missing(f"`{tool.name}` accepted {argument}={high + 1}, above its maximum {high}")
            seen: list[float] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append(progress)

            value = min(max(low, 1), high)
            result = await client.call_tool(tool.name, {argument: value}, progress_callback=on_progress)
            if result.is_error:
                raise Missing(f"`{tool.name}({argument}={value})` failed: {text_of(result)}")
            if not seen:
                raise Missing(f"`{tool.name}` reported no progress: `await ctx.report_progress(done, total, message)`")
    return f"`{tool.name}` takes {argument} from {low} to {high}, refuses {high + 1}, and reports progress"


# --- 02-fingerprint: read the caller's token from context, show only its fingerprint -----------------------


def demo_tokens() -> ModuleType:
    """02's tiny token issuer, on its own: importing its server would set up logging in this process."""
    if "demo_tokens" not in sys.modules:  # the name 02's server imports it by, so both share one module
        spec = importlib.util.spec_from_file_location("demo_tokens", REPO / "02-token-passthrough" / "demo_tokens.py")
        assert spec and spec.loader
        sys.modules["demo_tokens"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["demo_tokens"])
    return sys.modules["demo_tokens"]


def mint(subject: str, audience: str, client_id: str) -> str:
    """A demo token, as 02-token-passthrough/demo_tokens.py issues them; `audience` names its constant."""
    tokens = demo_tokens()
    return remember_secret(tokens.mint(subject, getattr(tokens, audience), client_id=client_id))


async def show_token(url: str, token: str | None) -> CallToolResult:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with http_client(url, headers=headers) as client:
        return await client.call_tool("show_auth_token", {})


async def check_02_fingerprint(folder: Path) -> str:
    alice, bob = mint("alice", "MCP_AUDIENCE", "inspector"), mint("bob", "MCP_AUDIENCE", "inspector")
    with running(folder) as server:
        shown: dict[str, str] = {}

        async def show(token: str) -> None:
            shown[token] = text_of(await show_token(server.url, token))

        async with anyio.create_task_group() as group:  # at once: each must see its own token, not the other's
            for token in (alice, bob):
                group.start_soon(show, token)
        for token, answer in shown.items():
            if token[12:24] in answer or token[-12:] in answer:
                raise Missing("show_auth_token shows (part of) the raw token: show only `token.fingerprint()`")
            if Secret(token).fingerprint() not in answer:
                raise Missing(f"show_auth_token does not show the caller's fingerprint yet (it answered {answer!r})")
        nobody = await show_token(server.url, None)
        if not nobody.is_error:
            raise Missing("with no token, show_auth_token must fail: get the token with `callers_token()`")
    return "two callers at once each see their own token's fingerprint, and no token is shown or missed silently"


# --- 02-replay: a token stolen for the upstream, replayed through the MCP server -------------------------------


async def replay_02(folder: Path, defended: bool) -> tuple[str, list[str]]:
    """Alice's token for the upstream, stolen, sent to the MCP server: "forwarded", "accepted" or "refused"."""
    stolen = mint("alice", "UPSTREAM_AUDIENCE", "alices-own-app")
    mode = "safe" if defended else "passthrough"
    story = [f"02 in {mode} mode; the attacker holds alice's token for the upstream (not for this server)."]
    with running(folder, "--mode", mode) as server:
        async with http_client(server.url, headers={"Authorization": f"Bearer {stolen}"}) as client:
            result = await client.call_tool("make_authenticated_request", {"message": "replayed"})
    reply = result.structured_content or {}
    if result.is_error:
        story.append(f"ATTACK STOPPED: the MCP server refused the call: {text_of(result)}")
        return "refused", story
    if reply.get("credential_seen") == Secret(stolen).fingerprint():
        story.append(f"ATTACK WORKED: the upstream took the stolen token and served {reply.get('caller_seen')}.")
        return "forwarded", story
    story.append(
        f"HALF STOPPED: the token was not forwarded, but the server took it and called as {reply.get('caller_seen')}."
    )
    return "accepted", story


async def attack_02_replay(folder: Path, defended: bool) -> list[str]:
    return (await replay_02(folder, defended))[1]


async def check_02_replay(folder: Path) -> str:
    outcome, _ = await replay_02(folder, defended=True)
    if outcome == "forwarded":
        raise Missing("the replay still works in safe mode: check the token is for this server, then call as itself")
    if outcome == "accepted":
        raise Missing("safe mode accepts a token issued for the upstream: check it is for this server first")
    alice = mint("alice", "MCP_AUDIENCE", "inspector")
    with running(folder, "--mode", "safe") as server:
        async with http_client(server.url, headers={"Authorization": f"Bearer {alice}"}) as client:
            result = await client.call_tool("make_authenticated_request", {"message": "hello"})
    reply = result.structured_content or {}
    if result.is_error:
        raise Missing(f"safe mode refuses alice's own token for this server: {text_of(result)}")
    if reply.get("credential_seen") == Secret(alice).fingerprint():
        raise Missing("safe mode still hands the caller's token on: send `own_upstream_credential()` instead")
    return f"the stolen token is refused; alice's own call reaches the upstream as {reply.get('caller_seen')}"


# --- 04-telemetry: a span attribute and a metric of your own ----------------------------------------------------


async def check_04_telemetry(folder: Path) -> str:
    with running(folder) as server:
        async with http_client(server.url) as client:
            await client.call_tool("divide_numbers", {"dividend": 1, "divisor": 2})
            spans: list[Mapping[str, Any]] = []
            with anyio.move_on_after(5):  # the SDK ends the call's span just after it answers
                while not spans:
                    contents = (await client.read_resource("telemetry://recent-spans")).contents[0]
                    assert isinstance(contents, TextResourceContents)
                    found = json.loads(contents.text)
                    spans = [span for span in found if span["name"] == "tools/call divide_numbers"]
                    await anyio.sleep(0.1)
        if not spans:
            raise Missing("no span for the divide_numbers call reached telemetry://recent-spans")
        own = sorted(key for key in spans[-1]["attributes"] if key.startswith("workshop."))
        if not own:
            raise Missing("divide_numbers's span has no attribute of your own: set `workshop.…` on the current span")
        scraped = httpx2.get(server.base_url + "/metrics").text
        lines = scraped.splitlines()
        metrics = sorted({line.split("{")[0].split(" ")[0] for line in lines if line.startswith("workshop_")})
        if not metrics:
            raise Missing("/metrics shows no metric of your own: create a `workshop.…` counter, add to it in the tool")
    return f"the span carries {', '.join(own)}; /metrics shows {', '.join(metrics)}"


# --- 05-rug-pull: a backend changes a tool, then renames one, behind the proxy ----------------------------------


@contextlib.asynccontextmanager
async def proxy_with_backend(folder: Path, defended: bool) -> AsyncIterator[Client]:
    """The copy's proxy in front of one backend that can change its tools, and a client of the proxy."""
    backend = {"command": sys.executable, "args": [str(BACKEND)], "env": {"PYTHONUNBUFFERED": "1"}}
    if not defended:
        backend["pinning"] = "off"
    with tempfile.TemporaryDirectory(prefix="lab-05-") as scratch:
        config = Path(scratch) / "proxy.json"  # the pins file goes beside it: proxy.pins.json
        config.write_text(json.dumps({"mcpProxy": {}, "mcpServers": {BACKEND_NAME: backend}}))
        with running(folder, "--config", str(config)) as proxy:
            async with http_client(proxy.url) as client:
                yield client


async def tools(client: Client) -> dict[str, Tool]:
    return {tool.name: tool for tool in (await client.list_tools(cache_mode="bypass")).tools}


async def settled(look: Callable[[], Awaitable[str | None]], what: str) -> str:
    """Ask until the proxy has taken the backend's change one way or the other; returns which."""
    with anyio.move_on_after(CHANGE_TIMEOUT):
        while True:
            if (outcome := await look()) is not None:
                return outcome
            await anyio.sleep(0.1)
    raise Missing(f"after the {what}, the proxy neither served nor quarantined the tool within {CHANGE_TIMEOUT:.0f} s")


async def rug_pull_05(folder: Path, defended: bool) -> tuple[list[str], list[str]]:
    """The two attacks, each either "worked" or "stopped"; and the story to print."""
    echo, renamed, bystander = f"{BACKEND_NAME}__echo", f"{BACKEND_NAME}__delete_everything", f"{BACKEND_NAME}__whoami"
    story = [f"The proxy (pinning {'on' if defended else 'off'}) in front of `{BACKEND_NAME}`, a backend that turns."]
    async with proxy_with_backend(folder, defended) as client:
        listed = await tools(client)
        if echo not in listed:
            raise Missing(f"the proxy does not serve {echo} at first: a backend's first listing is trusted (pin it)")
        story.append(f"At first it offers {echo}: {listed[echo].description!r}.")

        await client.call_tool(f"{BACKEND_NAME}__rug_pull", {})

        async def after_rug_pull() -> str | None:
            now = await tools(client)
            if echo not in now:
                return "stopped"
            return "worked" if RUG_PULLED in (now[echo].description or "") else None

        outcomes = [await settled(after_rug_pull, "rug pull")]
        if outcomes[0] == "worked":
            changed = (await tools(client))[echo].description
            story.append(f"Rug pull: ATTACK WORKED, the model now reads {changed!r}.")
        else:
            story.append(f"Rug pull: ATTACK STOPPED, {echo} is quarantined until someone approves the change.")

        await client.call_tool(f"{BACKEND_NAME}__rename", {"name": "delete_everything"})

        async def after_rename() -> str | None:
            if renamed in await tools(client):
                return "worked"
            try:
                await client.call_tool(renamed, {"text": "hi"})
            except MCPError as refused:
                return "stopped" if "quarantined" in refused.error.message else None
            return "worked"

        outcomes.append(await settled(after_rename, "rename"))
        if outcomes[1] == "worked":
            story.append(f"Rename: ATTACK WORKED, {renamed} is served without anyone approving it.")
        else:
            story.append(f"Rename: ATTACK STOPPED, {renamed} is quarantined: the backend did not offer it when pinned.")
        if bystander not in await tools(client):
            raise Missing(f"{bystander} is gone too, though it never changed: only a different definition may wait")
    return outcomes, story


async def attack_05_rug_pull(folder: Path, defended: bool) -> list[str]:
    return (await rug_pull_05(folder, defended))[1]


async def check_05_rug_pull(folder: Path) -> str:
    outcomes, _ = await rug_pull_05(folder, defended=True)
    if outcomes[0] == "worked":
        raise Missing("the rug pull still works: a tool whose sha256 differs from its pin must not return []")
    if outcomes[1] == "worked":
        raise Missing("the rename still works: a tool a pinned backend did not offer before must not return []")
    return "a changed tool and a renamed one both wait for approval; the unchanged tools keep serving"
