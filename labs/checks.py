"""What each lab's `check` does: start the attendee's copy of the module for real and try what the lab is about.

Every check takes the folder of a copy of the module (the attendee's, under my-labs/, or the module itself)
and either returns one line saying what works, or raises `Missing` with one line saying what is still
missing or wrong. The attack labs (02-replay, 03-mix-up, 05-rug-pull) run their attack here too: `labs attack` prints
the story, `labs check` wants the attack stopped.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
from mcp import Client, MCPError
from mcp_types import CallToolResult, TextContent, TextResourceContents, Tool

from labs import mix_up, regions
from shared import Secret
from tests.harness import (
    INITIALIZE,
    REPO,
    ServerProcess,
    free_port,
    http_client,
    parse_json_line,
    remember_secret,
    serve_app,
    server_env,
)

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
def running(folder: Path, *args: str, env: Mapping[str, str] | None = None) -> Iterator[ServerProcess]:
    """The copy's server.py over HTTP on a free port; one line, not a traceback, if it will not start."""
    try:  # the folder is absolute, so the harness's `REPO / folder` is the copy itself
        server = ServerProcess(str(folder), *args, env=env).start()
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


# --- 03-audience: a token for another resource is refused; a tool that needs more scope answers 403 -------------

OAUTH_MODULE = "03-oauth-mcp"  # its authorization server runs from the module itself: the lab's lines are elsewhere
REQUIRED_SCOPE = "mcp:read"  # what every call to 03 needs, and all a client-credentials token gets
ADMIN_TOOL, ADMIN_SCOPE = "list_oauth_clients", "mcp:admin"  # 03's TOOL_SCOPES
CALLBACK = "http://127.0.0.1:3000/callback"  # the consent's redirect; nothing listens there, the check reads it


@dataclass(frozen=True)
class OAuthSecrets:
    """Fresh for every check, so that nothing an attendee runs by hand can answer for the check's servers."""

    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    machine: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    server: str = field(default_factory=lambda: secrets.token_urlsafe(16))

    def env(self) -> dict[str, str]:
        return {
            "DEMO_PASSWORD": self.password,
            "MACHINE_CLIENT_SECRET": self.machine,
            "MCP_SERVER_CLIENT_SECRET": self.server,
        }


def machine_token(issuer: str, resource: str, keys: OAuthSecrets) -> str:
    """A client-credentials token for `resource`: the quickest token there is, with the machine's scope (mcp:read)."""
    form = {"grant_type": "client_credentials", "resource": resource}
    response = httpx2.post(f"{issuer}/token", data=form, auth=("workshop-machine", keys.machine))
    response.raise_for_status()
    return remember_secret(response.json()["access_token"])


def admin_token(issuer: str, resource: str, keys: OAuthSecrets) -> str:
    """A person's token with mcp:admin: register, consent as the demo user, trade the code (PKCE) for the token."""
    client = {"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none", "client_name": "03-audience lab"}
    client_id = httpx2.post(f"{issuer}/register", json=client).raise_for_status().json()["client_id"]
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    asked = {"response_type": "code", "client_id": client_id, "redirect_uri": CALLBACK, "state": "lab"}
    asked |= {"code_challenge": challenge, "code_challenge_method": "S256", "resource": resource}
    page = httpx2.get(f"{issuer}/authorize", params={**asked, "scope": f"{REQUIRED_SCOPE} {ADMIN_SCOPE}"}).text
    answer = dict(re.findall(r'name="(request_id|csrf)" value="([^"]+)"', page))
    answer |= {"username": "demo", "password": keys.password, "decision": "allow"}
    consented = httpx2.post(f"{issuer}/authorize", data=answer)
    code = parse_qs(urlsplit(consented.headers["location"]).query)["code"][0]
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK, "client_id": client_id}
    form |= {"code_verifier": verifier, "resource": resource}
    return remember_secret(httpx2.post(f"{issuer}/token", data=form).raise_for_status().json()["access_token"])


def post_mcp(url: str, token: str, body: str) -> httpx2.Response:
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    return httpx2.post(url, content=body, headers={**headers, "authorization": f"Bearer {token}"})


async def call_with(url: str, token: str, tool: str) -> CallToolResult:
    async with http_client(url, headers={"Authorization": f"Bearer {token}"}) as client:
        return await client.call_tool(tool, {})


async def audience_kept(url: str, mode: str, foreign: str, right: str) -> None:
    """A token issued for another resource gets 401; one issued for this server gets through."""
    where = {"JWT": "JwtVerifier.check", "introspection": "IntrospectionVerifier.verify_token"}[mode]
    if post_mcp(url, foreign, INITIALIZE).status_code != 401:
        raise Missing(f"a token for another resource gets in ({mode}): {where} must require `aud` == self.resource")
    try:
        who = await call_with(url, right, "who_am_i")
    except Exception as refused:  # the SDK's client raises on a 401: one line is what the attendee needs
        raise Missing(f"a token issued for this server is refused ({mode}): {one_line(refused)}") from None
    if who.is_error:
        raise Missing(f"who_am_i fails with a token issued for this server ({mode}): {text_of(who)}")


async def check_03_audience(folder: Path) -> str:
    keys = OAuthSecrets()
    jwt_port, introspect_port, other_port = free_port(), free_port(), free_port()
    resource, introspected, other = (f"http://127.0.0.1:{port}/mcp" for port in (jwt_port, introspect_port, other_port))
    resources = [arg for url in (resource, introspected, other) for arg in ("--resource", url)]
    with ServerProcess(OAUTH_MODULE, *resources, env=keys.env(), script="authorization_server.py") as issuer:
        served = ("--issuer", issuer.url, "--addr")
        with (
            running(folder, *served, f"127.0.0.1:{jwt_port}", env=keys.env()) as jwt_server,
            running(folder, *served, f"127.0.0.1:{introspect_port}", "--introspect", env=keys.env()) as introspecting,
        ):
            right, foreign = machine_token(issuer.url, resource, keys), machine_token(issuer.url, other, keys)
            await audience_kept(jwt_server.url, "JWT", foreign, right)
            await audience_kept(
                introspecting.url, "introspection", foreign, machine_token(issuer.url, introspected, keys)
            )
            call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": ADMIN_TOOL, "arguments": {}}}
            refused = post_mcp(jwt_server.url, right, json.dumps(call))
            challenge = refused.headers.get("www-authenticate", "")
            if refused.status_code != 403 or 'error="insufficient_scope"' not in challenge:
                raise Missing(
                    f"{ADMIN_TOOL} without {ADMIN_SCOPE} gets HTTP {refused.status_code}, not 403 insufficient_scope: "
                    "refuse it in ScopeGate.check_scopes, so that the client can step up"
                )
            asked = re.search(r'scope="([^"]*)"', challenge)
            if asked is None or ADMIN_SCOPE not in asked[1].split():
                raise Missing(f"the 403 for {ADMIN_TOOL} does not name {ADMIN_SCOPE} in its challenge's scope")
            listed = await call_with(jwt_server.url, admin_token(issuer.url, resource, keys), ADMIN_TOOL)
            if listed.is_error:
                raise Missing(f"{ADMIN_TOOL} fails even with {ADMIN_SCOPE}: {text_of(listed)}")
    return (
        f"a token for another resource gets 401 (JWT and introspection), one without {ADMIN_SCOPE} gets 403 "
        f"naming it, and the right tokens work"
    )


# --- 03-mix-up: an evil authorization server gets the code the real one issued (RFC 9207) ----------------------

FAKE_BROWSER = REPO / "tests" / "fake_browser.py"  # signs in as the demo user, following redirects as a browser does
CLIENT_TIMEOUT = 60.0  # seconds for one run of client.py, sign-in included


def last_error(stderr: bytes) -> str:
    """The exception client.py ended with, without its traceback or its module path."""
    lines = [line.strip(" |+-") for line in stderr.decode(errors="replace").splitlines()]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    if not errors:
        return next((line for line in reversed(lines) if line), "nothing")
    name, message = errors[-1].split(": ", 1)
    return f"{name.rsplit('.', 1)[-1]}: {message}"


async def sign_in_with(folder: Path, server_url: str, keys: OAuthSecrets) -> subprocess.CompletedProcess[bytes]:
    """The copy's client.py signs the demo user in to `server_url` through a browser, with a token store of its own."""
    with tempfile.TemporaryDirectory(prefix="lab-03-tokens-") as tokens:
        env = {"MCP_WORKSHOP_TOKEN_DIR": tokens, "DEMO_PASSWORD": keys.password}
        env["BROWSER"] = f"{sys.executable} {FAKE_BROWSER} %s"
        with anyio.fail_after(CLIENT_TIMEOUT):
            return await anyio.run_process(
                [sys.executable, str(folder / "client.py"), server_url], env=server_env(env), check=False
            )


async def mix_up_03(folder: Path, defended: bool) -> tuple[bool, list[str]]:
    """Whether the attacker got a token for the real MCP server with the user's code; and the story to print."""
    keys = OAuthSecrets()
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    with contextlib.ExitStack() as stack:
        if not defended:  # the module's client without the lab's line, as the starter has it
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lab-03-mix-up-"))) / OAUTH_MODULE
            shutil.copytree(REPO / OAUTH_MODULE, folder, ignore=shutil.ignore_patterns("__pycache__"))
            (folder / "client.py").write_text(regions.starter((folder / "client.py").read_text(), "03-mix-up"))
        honest = stack.enter_context(
            ServerProcess(OAUTH_MODULE, "--resource", resource, env=keys.env(), script="authorization_server.py")
        )
        real = stack.enter_context(ServerProcess(OAUTH_MODULE, "--addr", f"127.0.0.1:{port}", "--issuer", honest.url))
        attacker = mix_up.Attacker(honest.url, resource)
        async with serve_app(attacker.app()) as evil:
            story = [
                f"client.py ({'with' if defended else 'without'} the iss check) signs in to the attacker's MCP server "
                f"{evil}/mcp; its authorization server sends the browser on to the real one, {honest.url}."
            ]
            done = await sign_in_with(folder, f"{evil}/mcp", keys)
        if not attacker.loot:
            story.append(f"ATTACK STOPPED: the attacker got no token; client.py ended with {last_error(done.stderr)}")
            return False, story
        who = await call_with(real.url, remember_secret(attacker.loot[0]), "who_am_i")
    story.append("The real server sent the browser back to client.py with a code; client.py took the code and its")
    story.append("PKCE verifier to the attacker's token endpoint, and the attacker redeemed both at the real server.")
    caller = (who.structured_content or {}).get("sub")
    story.append(f"ATTACK WORKED: the attacker calls the real MCP server's who_am_i, and it answers {caller!r}.")
    return True, story


async def attack_03_mix_up(folder: Path, defended: bool) -> list[str]:
    return (await mix_up_03(folder, defended))[1]


async def check_03_mix_up(folder: Path) -> str:
    worked, _ = await mix_up_03(folder, defended=True)
    if worked:
        raise Missing("the mix-up still works: hand the SDK the `iss` of the authorization response")
    keys = OAuthSecrets()
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    with (
        ServerProcess(OAUTH_MODULE, "--resource", resource, env=keys.env(), script="authorization_server.py") as honest,
        ServerProcess(OAUTH_MODULE, "--addr", f"127.0.0.1:{port}", "--issuer", honest.url) as real,
    ):
        done = await sign_in_with(folder, real.url, keys)
    if done.returncode != 0 or json.loads(done.stdout or b"{}").get("sub") != "demo":
        raise Missing(f"client.py no longer signs in to the real server: {last_error(done.stderr)}")
    return "the attacker's authorization server gets no token, and signing in to the real server still works"


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


# --- 05-backend: a backend of your own behind the proxy, with a prefix and a tool filter --------------------------

LAB_BACKEND = "lab_backend.py"
LAB_BACKEND_NAME = "mine"  # its name in the check's configuration: the proxy's default prefix is `mine__`
OPERATORS_TOOL = "reset_everything"  # what lab_backend.py offers that no client may see or call
SAMPLE_ARGUMENT = {"string": "hello", "integer": 2, "number": 2.5, "boolean": True}


READ_ENTRY = "import json, runpy, sys; print(json.dumps(runpy.run_path(sys.argv[1]).get('PROXY_ENTRY')))"


def proxy_entry(folder: Path) -> Mapping[str, object]:
    """The copy's PROXY_ENTRY, read in a process of its own: building an MCP server sets up that process's logging."""
    read = subprocess.run(
        [sys.executable, "-c", READ_ENTRY, str(folder / LAB_BACKEND)], capture_output=True, text=True, check=False
    )
    if read.returncode != 0:
        raise Missing(f"{LAB_BACKEND} does not load: {one_line(RuntimeError(read.stderr))}")
    entry = json.loads(read.stdout)
    if not isinstance(entry, dict):
        raise Missing(f"{LAB_BACKEND} has no PROXY_ENTRY dict: the proxy's entry for it, e.g. {{'prefix': 'lab_'}}")
    return entry


def sample_arguments(tool: Tool) -> dict[str, object]:
    """A value for each required argument of a simple type, so the check can call a tool it has never seen."""
    properties = tool.input_schema.get("properties") or {}
    arguments: dict[str, object] = {}
    for name in tool.input_schema.get("required") or []:
        kind = (properties.get(name) or {}).get("type")
        if kind not in SAMPLE_ARGUMENT:
            raise Missing(f"`{tool.name}` needs `{name}` of a type the check cannot make up: use text or numbers")
        arguments[name] = SAMPLE_ARGUMENT[kind]
    return arguments


async def check_05_backend(folder: Path) -> str:
    entry = proxy_entry(folder)
    backend = {**entry, "command": sys.executable, "args": [str(folder / LAB_BACKEND)]}
    with tempfile.TemporaryDirectory(prefix="lab-05-backend-") as scratch:
        config = Path(scratch) / "proxy.json"
        config.write_text(json.dumps({"mcpProxy": {}, "mcpServers": {LAB_BACKEND_NAME: backend}}))
        with running(folder, "--config", str(config)) as proxy:
            async with http_client(proxy.url) as client:
                listed = await tools(client)
                own = [name for name in listed if not name.endswith(OPERATORS_TOOL)]
                if not own:
                    raise Missing(
                        f"no tool of your own behind the proxy yet: add one with `@mcp.tool()` in {LAB_BACKEND}"
                    )
                prefix = entry.get("prefix")
                if not isinstance(prefix, str) or not prefix or prefix == f"{LAB_BACKEND_NAME}__":
                    raise Missing(
                        f'PROXY_ENTRY gives no prefix: the proxy serves `{own[0]}`; set "prefix", e.g. "lab_"'
                    )
                hidden = prefix + OPERATORS_TOOL
                if hidden in listed:
                    raise Missing(f'the proxy lists `{hidden}`: keep {OPERATORS_TOOL} out with a "toolFilter"')
                try:
                    called = not (await client.call_tool(hidden, {})).is_error
                except MCPError:
                    called = False
                if called:
                    raise Missing(f"`{hidden}` is not listed but still answers a call: filter it, do not only hide it")
                tool = listed[own[0]]
                result = await client.call_tool(tool.name, sample_arguments(tool))
                if result.is_error:
                    raise Missing(f"`{tool.name}` fails through the proxy: {text_of(result)}")
    return (
        f"your backend serves {', '.join(own)} through the proxy, and {OPERATORS_TOOL} is neither listed nor callable"
    )
