"""MCP Inspector's web UI, as `make inspector` opens it, in headless Chromium: every module, both transports.

One Inspector (run by scripts/inspector.py, the script behind `make inspector`) and one browser serve every
test here; the workshop's HTTP servers run on ports the OS picked, and the Inspector starts the stdio ones
itself. Each test flips an entry's switch, lists the tools, calls one, reads its result on the page, and
disconnects. The labels are the page's own, the ones the READMEs quote.

The screenshots in the READMEs (docs/*.png) are taken here: with UPDATE_SCREENSHOTS=1 the tests write them;
otherwise they check that each one exists and that the page reaches the state it shows.

The whole file takes 50 to 60 s on a busy machine, because it is the whole workshop: some twenty Python
processes start (the servers, 05's backends, the stdio servers the Inspector starts and 05's stdio copies
of its backends), and the Inspector's page takes a few seconds per connection (its lists, one by one).
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from tests.harness import (
    CAPTURED_LOGS,
    CHROMIUM,
    CHROMIUM_ARGS,
    REPO,
    START_TIMEOUT,
    ServerProcess,
    free_port,
    load_server,
    server_env,
)

DEMO_PASSWORD = "demo-password-for-the-inspector-test"  # printed by the authorization server on purpose
MACHINE_SECRET = "machine-secret-for-the-inspector-test"
# As `make run` gives them: 03's MCP server authenticates as itself for list_oauth_clients.
ENV = {
    "DEMO_PASSWORD": DEMO_PASSWORD,
    "MACHINE_CLIENT_SECRET": MACHINE_SECRET,
    "MCP_SERVER_CLIENT_SECRET": "mcp-server-secret-for-the-inspector-test",
}
SCREENSHOTS = REPO / "docs"
UPDATE_SCREENSHOTS = os.environ.get("UPDATE_SCREENSHOTS") == "1"
MODULES = ("01-basic-mcp", "02-token-passthrough", "03-oauth-mcp", "04-observability", "05-mcp-proxy")
VIEWPORT = {"width": 1280, "height": 760}
UI_TIMEOUT_MS = 20_000
expect.set_options(timeout=UI_TIMEOUT_MS)  # a stdio server, or 05 and its backends, take seconds to start here


@dataclass
class Inspector:
    url: str  # the page, with the Inspector's access token in its query
    base: str  # the same origin, without it
    pid: int


@pytest.fixture(scope="module")
def workshop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Every module over HTTP, as `make run` starts them, on free ports; yields the --url/--issuer flags' values."""
    mcp_port = free_port()
    resource = f"http://127.0.0.1:{mcp_port}/mcp"
    auth = ServerProcess("03-oauth-mcp", "--resource", resource, env=ENV, script="authorization_server.py").start()
    servers = [auth]
    try:
        servers.append(ServerProcess("03-oauth-mcp", "--addr", f"127.0.0.1:{mcp_port}", "--issuer", auth.url, env=ENV))
        servers += [ServerProcess(folder) for folder in ("01-basic-mcp", "02-token-passthrough", "04-observability")]
        proxy_env = {**ENV, "WORKSHOP_03_URL": resource, "WORKSHOP_03_ISSUER": auth.url}
        servers.append(ServerProcess("05-mcp-proxy", env=proxy_env))
        with ThreadPoolExecutor() as pool:  # each start waits for its server: wait for all at once
            list(pool.map(ServerProcess.start, servers[1:]))
        wait_for_backends(servers[-1].base_url)
        urls = {server.folder: server.url for server in servers[1:]}
        yield {**urls, "issuer": auth.url}
    finally:
        for server in reversed(servers):
            server.stop()


def wait_for_backends(proxy: str) -> None:
    """05 answers before its backends are up; its /readyz says when they are."""
    deadline = time.monotonic() + START_TIMEOUT
    while httpx2.get(proxy + "/readyz").status_code != 200:
        assert time.monotonic() < deadline, httpx2.get(proxy + "/readyz").text
        time.sleep(0.1)


@pytest.fixture(scope="module")
def inspector(workshop: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Inspector]:
    """`make inspector`'s script, on a free port, with a home of its own (nothing of yours is read or written)."""
    home = tmp_path_factory.mktemp("inspector-home")
    port = free_port()
    env = server_env(
        {
            "HOME": str(home),
            "CLIENT_PORT": str(port),  # the Inspector needs a fixed port: its allowed origins are derived from it
            "MCP_SANDBOX_PORT": "0",
            "MCP_APP_ORIGIN_PORT": "0",
            "MCP_AUTO_OPEN_ENABLED": "false",
            "MACHINE_CLIENT_SECRET": MACHINE_SECRET,  # as the README says: exported in the shell first
        }
    )
    command = [sys.executable, str(REPO / "scripts" / "inspector.py"), "--catalog", str(home / "servers.json")]
    command += [f"--url={folder}={url}" for folder, url in workshop.items() if folder != "issuer"]
    command += ["--issuer", workshop["issuer"]]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    CAPTURED_LOGS.append(lines)
    try:
        assert process.stdout
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            found = re.search(r"(http://127\.0\.0\.1:\d+)\?MCP_INSPECTOR_API_TOKEN=\w+", line)
            if found:
                break
        assert found, "the Inspector never printed its URL:\n" + "\n".join(lines)
        yield Inspector(found[0], found[1], process.pid)
    finally:
        process.terminate()
        process.wait(timeout=20)
        if process.stdout:
            lines += process.stdout.read().splitlines()
            process.stdout.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        yield launch(playwright)


def launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


@pytest.fixture
def page(browser: Browser, inspector: Inspector) -> Iterator[Page]:
    """A fresh tab on the Inspector's page, showing its server list."""
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    context.set_default_timeout(UI_TIMEOUT_MS)
    tab = context.new_page()
    tab.goto(inspector.url)
    expect(tab.get_by_role("heading", name="Servers")).to_be_visible()
    yield tab
    context.close()


def screenshot(page: Page, name: str) -> None:
    """Write a README's picture (UPDATE_SCREENSHOTS=1), or check that the README's picture is there."""
    path = SCREENSHOTS / name
    if UPDATE_SCREENSHOTS:
        path.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(path))
    assert path.is_file(), f"{path} is missing: run this test with UPDATE_SCREENSHOTS=1"


def connect(page: Page, server: str) -> None:
    """Flip the entry's switch and wait for the card to say Connected."""
    card_switch = page.get_by_role("switch", name=f'Connect or disconnect "{server}"')
    card_switch.check(force=True)  # Mantine draws its track over the input
    expect(card_switch).to_be_checked()


def call_tool(page: Page, tool: str, arguments: dict[str, str]) -> None:
    """Open Tools, pick the tool, fill its form, press Execute Tool; wait for Results."""
    page.get_by_text("Tools", exact=True).click()
    expect(page.get_by_role("heading", name=re.compile(r"^Tools \(\d+\)$"))).to_be_visible()
    page.get_by_role("button", name=tool, exact=True).click()
    for label, value in arguments.items():
        page.get_by_role("textbox", name=label, exact=True).fill(value)
    page.get_by_role("button", name="Execute Tool").click()
    expect(page.get_by_role("heading", name="Results")).to_be_visible()


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    parents: dict[int, int] = {}
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(status.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def disconnect(page: Page, inspector: Inspector) -> None:
    """Press Disconnect from server; whatever the Inspector started for this entry ends with it."""
    started = descendants(inspector.pid)
    page.get_by_role("button", name="Disconnect from server").click()
    expect(page.get_by_role("heading", name="Servers")).to_be_visible()
    deadline = time.monotonic() + START_TIMEOUT
    while alive := {pid for pid in started if Path(f"/proc/{pid}").exists() and not zombie(pid)}:
        assert time.monotonic() < deadline, f"still running after the disconnect: {alive}"
        time.sleep(0.1)


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


# The entry, a tool, its form, and what its result says on the page.
CALLS = [
    ("01-basic-mcp-http", "echo_message", {"Message": "hello"}, "Echo: hello"),
    ("01-basic-mcp-stdio", "add_numbers", {"Num1": "2", "Num2": "3"}, "5.0"),
    ("02-token-passthrough-http", "show_auth_token", {}, "Valid for this server: alice (client demo-client)."),
    ("02-token-passthrough-stdio", "show_auth_token", {}, "Valid for this server: alice (client demo-client)."),
    ("04-observability-stdio", "divide_numbers", {"Dividend": "6", "Divisor": "3"}, "2.0"),
    ("05-mcp-proxy-http", "oauth__who_am_i", {}, '"workshop-machine"'),
    ("05-mcp-proxy-stdio", "oauth__who_am_i", {}, '"workshop-machine"'),
]


@pytest.mark.parametrize(("server", "tool", "arguments", "shown"), CALLS, ids=[c[0] for c in CALLS])
def test_the_inspector_page_calls_a_tool(
    page: Page, inspector: Inspector, server: str, tool: str, arguments: dict[str, str], shown: str
) -> None:
    """Connect, list the tools, call one, read the result; the page shows what the module's README says."""
    connect(page, server)
    call_tool(page, tool, arguments)
    expect(page.get_by_text(shown).first).to_be_visible()
    if server == "01-basic-mcp-http":
        screenshot(page, "inspector-01-connected.png")
    disconnect(page, inspector)


def test_the_inspector_page_signs_in_to_03(page: Page, inspector: Inspector, workshop: dict[str, str]) -> None:
    """03 answers 401; the Inspector discovers 03's authorization server, registers, and sends the tab to sign in."""
    connect(page, "03-oauth-mcp-http")
    expect(page.get_by_role("heading", name="Sign in and allow access")).to_be_visible()
    assert page.url.startswith(workshop["issuer"] + "/authorize?")
    consent = page.locator("body")
    expect(consent).to_contain_text(f"MCP Inspector wants to use the MCP server {workshop['03-oauth-mcp']} as you.")
    expect(consent).to_contain_text(f"After you decide, you go back to {inspector.base.removeprefix('http://')}.")
    screenshot(page, "inspector-03-consent.png")
    page.get_by_role("textbox", name="Username").fill("demo")
    page.get_by_role("textbox", name="Password").fill(DEMO_PASSWORD)
    page.get_by_role("button", name="Allow").click()
    expect(page.get_by_text("Connected", exact=True)).to_be_visible()
    call_tool(page, "who_am_i", {})
    expect(page.get_by_text('"demo"').first).to_be_visible()  # the claims, as JSON: sub is the demo user
    page.get_by_role("button", name="list_oauth_clients", exact=True).click()
    page.get_by_role("button", name="Execute Tool").click()
    step_up = page.get_by_role("dialog", name="Additional permissions required")
    expect(step_up).to_contain_text("This operation needs additional scope: mcp:admin.")
    step_up.get_by_role("button", name="Authorize").click()
    expect(page.get_by_role("heading", name="Sign in and allow access")).to_be_visible()
    expect(page.locator("body")).to_contain_text("mcp:admin")
    page.get_by_role("textbox", name="Username").fill("demo")
    page.get_by_role("textbox", name="Password").fill(DEMO_PASSWORD)
    page.get_by_role("button", name="Allow").click()
    expect(page.get_by_role("alert")).to_contain_text("Step-up authorization succeeded. Retry your action.")
    page.get_by_role("button", name="Execute Tool").click()
    expect(page.get_by_text("workshop-machine").first).to_be_visible()  # the registered clients, the machine's too
    disconnect(page, inspector)


def test_the_inspector_page_shows_04s_spans(page: Page, inspector: Inspector) -> None:
    """A failing call, then Resources → recent-spans: the call is there as a span, with its error."""
    connect(page, "04-observability-http")
    call_tool(page, "divide_numbers", {"Dividend": "1", "Divisor": "0"})
    expect(page.get_by_text("cannot divide by zero").first).to_be_visible()
    page.get_by_text("Resources", exact=True).click()
    page.get_by_role("button", name="recent-spans").click()
    expect(page.get_by_text("telemetry://recent-spans").first).to_be_visible()
    # The newest span is the last: go to the end of the JSON, as Ctrl+End does for a person.
    page.get_by_role("textbox", name=re.compile(r"^JSON content")).first.press("Control+End")
    expect(page.get_by_text('"tools/call divide_numbers"').first).to_be_visible()
    expect(page.get_by_text('"tool_error"').first).to_be_visible()
    screenshot(page, "inspector-04-recent-spans.png")
    disconnect(page, inspector)


def test_the_inspector_keeps_its_access_token_on(inspector: Inspector) -> None:
    """The page's API answers only with the token from the printed link: another local page cannot drive it."""
    assert httpx2.get(inspector.base + "/api/config").status_code == 401
    token = inspector.url.split("MCP_INSPECTOR_API_TOKEN=")[1]  # printed by the Inspector on purpose
    answer = httpx2.get(inspector.base + "/api/config", headers={"x-mcp-remote-auth": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text


def test_the_server_list_is_yours_to_edit(page: Page, tmp_path: Path) -> None:
    """The page offers Add Servers and Edit (no read-only session); a server you add survives the next start."""
    expect(page.get_by_role("button", name="Add Servers")).to_be_enabled()
    expect(page.get_by_role("button", name="Edit").first).to_be_enabled()
    expect(page.get_by_text("Read-only session")).to_have_count(0)
    catalog = tmp_path / "servers.json"
    catalog.write_text(
        json.dumps({"mcpServers": {"mine": {"type": "streamable-http", "url": "http://127.0.0.1:1/mcp"}}})
    )
    inspector_script = load_server("scripts", "inspector.py")
    servers = inspector_script.workshop_servers({m: "http://127.0.0.1:1/mcp" for m in MODULES}, "http://x", {})
    inspector_script.write_catalog(catalog, servers)
    written = json.loads(catalog.read_text())["mcpServers"]
    assert set(written) == {"mine", *servers}
    assert stat.S_IMODE(catalog.stat().st_mode) == 0o600  # it holds 02's token
