"""The READMEs show code that really runs and output that really comes out.

- Every ```python block in a README is a verbatim excerpt of the code next to it (or of shared/).
- Every ```console block is run: the line after `$ ` is the command, the rest is what it prints.
  Nothing may come out on stderr either: it reaches the reader's terminal too, so a block that
  would print more than it shows must say how it hides it (`2>/dev/null`, the Inspector's `-q`).
  Commands that talk to a module over HTTP (127.0.0.1:<default port>) are pointed at a server the
  test starts on a free port instead. JSON output is compared as JSON; anything else line by line.
- The client configuration files at the root start and reach the real server.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from tests.harness import REPO, ServerProcess, free_port, server_env

pytestmark = pytest.mark.anyio

READMES = sorted([REPO / "README.md", *REPO.glob("0*-*/README.md"), REPO / "bench" / "README.md"])
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
# The server behind each port the READMEs use, for console blocks that reach a server over HTTP.
PORTS: dict[str, tuple[str, ...]] = {
    "8081": ("01-basic-mcp",),
    "8082": ("02-token-passthrough",),
    "8092": ("02-token-passthrough", "--mode", "passthrough"),
    "8084": ("04-observability",),
}


def blocks(readme: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(readme.read_text()) if lang == language]


def console_examples() -> Iterator[Any]:
    for readme in READMES:
        for i, body in enumerate(blocks(readme, "console")):
            command, _, output = body.partition("\n")
            assert command.startswith("$ "), f"{readme}: a console block starts with '$ command'"
            yield pytest.param(command[2:], output, id=f"{readme.parent.name}-{i}")


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.parent.name)
def test_python_blocks_are_excerpts_of_real_code(readme: Path) -> None:
    module_files = readme.parent.glob("*/*.py") if readme.parent.name.startswith("0") else ()  # a subfolder's too
    sources = [*readme.parent.glob("*.py"), *module_files, *(REPO / "shared").glob("*.py")]
    code = "\n".join(path.read_text() for path in sources)
    for block in blocks(readme, "python"):
        assert block in code, f"{readme} shows code that is not in {readme.parent.name}:\n{block}"


# 03's two servers must know each other's address, and share the MCP server's own secret.
OAUTH_ENV = {"MACHINE_CLIENT_SECRET": "docs-machine-secret", "MCP_SERVER_CLIENT_SECRET": "docs-server-secret"}


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, ServerProcess]]:
    running = {port: ServerProcess(folder, *args).start() for port, (folder, *args) in PORTS.items()}
    try:
        mcp_port = free_port()
        resource = ("--resource", f"http://127.0.0.1:{mcp_port}/mcp")
        running["9000"] = ServerProcess("03-oauth-mcp", *resource, script="authorization_server.py", env=OAUTH_ENV)
        running["9000"].start()
        issuer = ("--issuer", running["9000"].url, "--addr", f"127.0.0.1:{mcp_port}")
        running["8083"] = ServerProcess("03-oauth-mcp", *issuer, env=OAUTH_ENV).start()
        yield running
    finally:
        for proc in running.values():
            proc.stop()


@pytest.mark.parametrize(("command", "expected"), list(console_examples()))
def test_console_examples_print_what_the_readme_shows(
    command: str, expected: str, servers: dict[str, ServerProcess]
) -> None:
    for port, proc in servers.items():
        command = command.replace(f"127.0.0.1:{port}", f"127.0.0.1:{proc.port}")
        expected = expected.replace(f"127.0.0.1:{port}", f"127.0.0.1:{proc.port}")
    env = server_env()
    env.pop("MACHINE_CLIENT_SECRET", None)  # as in a new shell: 03's examples find the secret the server left
    done = subprocess.run(
        ["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert not done.stderr, f"the command also writes to the terminal, which the README does not show:\n{done.stderr}"
    try:
        actual, wanted = json.loads(done.stdout), json.loads(expected)
    except json.JSONDecodeError:
        actual, wanted = done.stdout.splitlines(), expected.splitlines()
    assert matches(wanted, actual), f"README shows:\n{expected}\nbut the command printed:\n{done.stdout}"


def matches(wanted: Any, actual: Any) -> bool:
    """Equality, except that `...` stands for any text inside a shown string, or for any value on its own."""
    if wanted == "...":
        return True
    if isinstance(wanted, str) and "..." in wanted and isinstance(actual, str):
        pattern = ".*?".join(re.escape(part) for part in wanted.split("..."))
        return re.fullmatch(pattern, actual, re.DOTALL) is not None
    if isinstance(wanted, dict) and isinstance(actual, dict):
        return wanted.keys() == actual.keys() and all(matches(wanted[k], actual[k]) for k in wanted)
    if isinstance(wanted, list) and isinstance(actual, list):
        return len(wanted) == len(actual) and all(matches(w, a) for w, a in zip(wanted, actual, strict=True))
    return bool(wanted == actual)


def local_config(path: str) -> Any:
    """A client config file, with its placeholder paths pointed at this checkout."""
    text = (
        (REPO / path).read_text().replace("${workspaceFolder}", str(REPO)).replace("/path/to/mcp-workshop", str(REPO))
    )
    return json.loads(text)


@pytest.mark.parametrize(
    ("path", "key"), [(".vscode/mcp.json", "servers"), ("claude_desktop_config.json", "mcpServers")]
)
async def test_client_configs_start_the_stdio_server(path: str, key: str) -> None:
    entry = local_config(path)[key]["workshop-01-stdio"]
    async with Client(StdioServerParameters(command=entry["command"], args=entry["args"])) as client:
        result = await client.call_tool("echo_message", {"message": "from a client config"})
    assert result.content[0].text == "Echo: from a client config"  # type: ignore[union-attr]


def test_vscode_http_entry_is_the_default_address() -> None:
    assert local_config(".vscode/mcp.json")["servers"]["workshop-01-http"] == {
        "type": "http",
        "url": "http://127.0.0.1:8081/mcp",
    }


async def test_claude_http_entry_bridges_with_the_pinned_mcp_remote(servers: dict[str, ServerProcess]) -> None:
    """Claude Desktop speaks stdio to its servers; the project's own mcp-remote bridges it to 01 over HTTP.

    The entry runs as written, with the Node and the mcp-remote that `make install` put in this
    checkout: nothing from the registry, no Node on the system.
    """
    entry = local_config("claude_desktop_config.json")["mcpServers"]["workshop-01-http"]
    assert entry["command"] == str(REPO / ".venv" / "bin" / "node")
    assert entry["args"] == [str(REPO / "node_modules" / ".bin" / "mcp-remote"), "http://127.0.0.1:8081/mcp"]
    url = entry["args"][1].replace("127.0.0.1:8081", f"127.0.0.1:{servers['8081'].port}")
    bridge = StdioServerParameters(command=entry["command"], args=[entry["args"][0], url])
    async with Client(bridge) as client:
        result = await client.call_tool("echo_message", {"message": "bridged"})
    assert result.content[0].text == "Echo: bridged"  # type: ignore[union-attr]


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.parent.name)
def test_tests_named_in_readmes_exist(readme: Path) -> None:
    for path, name in re.findall(r"(tests/test_\w+\.py)::(\w+)", readme.read_text()):
        assert f"def {name}(" in (REPO / path).read_text(), f"{readme} names {path}::{name}, which does not exist"


def layout() -> dict[str, str]:
    """The root README's layout block: each entry (a line that starts in column one) with its description."""
    text = (REPO / "README.md").read_text()
    body = re.search(r"^## Layout\n\n```\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert body, "the root README has a ## Layout block"
    entries: dict[str, str] = {}
    for line in body[1].splitlines():
        if not line.startswith(" "):
            name, _, description = line.partition(" ")
            entries[name] = description
        else:
            entries[name] += line
    return entries


TRANSLATION = re.compile(r"\.zh-(?:TW|CN)\.md$")


def test_the_root_readme_layout_is_the_tree() -> None:
    """Every tracked top-level entry is listed (and nothing that is not there), every file of a module named."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    tracked = [path for path in tracked if not TRANSLATION.search(path)]  # said once, for every README
    entries = layout()
    top = {path.split("/")[0] + ("/" if "/" in path else "") for path in tracked if not path.startswith(".")}
    listed = {name.split("/")[0] + ("/" if "/" in name else "") for name in entries if not name.startswith(".")}
    assert listed == top - {"README.md"}
    assert all((REPO / name).exists() for name in entries)
    for folder in sorted(name for name in entries if name.startswith("0")):
        files = {path.removeprefix(folder) for path in tracked if path.startswith(folder)}
        named = set(re.findall(r"[\w/-]+\.(?:py|json|md)\b", entries[folder]))  # a subfolder's files by path
        assert named == files, f"{folder}: the layout names {sorted(named)}, the folder holds {sorted(files)}"


# A measured figure: a time in µs, a rate, a count of instructions, or a throughput ratio.
FIGURE = re.compile(r"\d(?:\.\d+)? ?(?:µs|ms/call|calls/s)|\d(?:\.\d+)? ?[MK] instructions|\d %? of (?:direct|01)")


def test_performance_figures_live_in_bench_readme() -> None:
    """Code and lesson READMEs give a reason and a link; the numbers, with their date and machine, are in one place."""
    places = [*REPO.glob("0*-*/*.py"), *(REPO / "shared").glob("*.py"), *READMES]
    for path in places:
        if path.parent.name != "bench":
            found = FIGURE.findall(path.read_text())
            assert not found, f"{path.relative_to(REPO)} quotes {found}: move the figures to bench/README.md"


MODULE_READMES = sorted(REPO.glob("0*-*/README.md"))
ORDER_ROW = re.compile(r"^\| *(\d+) *\| *`([^`]+)` *\|([^|]+)\| *(\d+) *\|$")


def reading_order(readme: Path) -> list[str]:
    """The files of a README's "Read it in this order" table, first to last."""
    sections = re.split(r"^## ", readme.read_text(), flags=re.MULTILINE)
    titles = [section.partition("\n")[0] for section in sections]
    assert "Read it in this order" in titles, f"{readme} has no '## Read it in this order' section"
    index = titles.index("Read it in this order")
    assert titles[index - 1] == "What you learn", f"{readme}: the reading order comes right after 'What you learn'"
    rows = [ORDER_ROW.match(line) for line in sections[index].splitlines() if line.startswith("| ")]
    found = [row for row in rows if row]
    assert [int(row[1]) for row in found] == list(range(1, len(found) + 1)), f"{readme}: rows are numbered 1, 2, …"
    assert len(found) == len(rows) - 1, f"{readme}: every row is `| n | `file` | its one job | minutes |`"
    return [row[2] for row in found]


@pytest.mark.parametrize("readme", MODULE_READMES, ids=lambda p: p.parent.name)
def test_every_module_readme_gives_a_reading_order_of_its_files(readme: Path) -> None:
    """Each listed file exists, and every Python file of the module is listed: nothing to read is left out."""
    folder = readme.parent
    listed = reading_order(readme)
    assert all((folder / name).is_file() for name in listed), f"{readme} lists a file that does not exist: {listed}"
    tracked = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=folder, capture_output=True, text=True, check=True
    ).stdout.split()
    assert set(tracked) <= set(listed), f"{readme} leaves out {sorted(set(tracked) - set(listed))}"


def test_no_formatter_escape_hatches() -> None:
    """ruff formats every line: a reader never meets lines packed by hand behind a formatter escape comment."""
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    marker = "# fmt" + ": "  # split, so that this file does not find itself
    found = [path for path in tracked.split() if marker in (REPO / path).read_text()]
    assert not found, f"{found} use {marker}skip or {marker}off"
