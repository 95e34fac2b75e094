"""Start every workshop module over HTTP on 127.0.0.1 and say how to connect to them.

This is what `make run` runs. Each module is its own process (its own
`server.py -t http`), exactly as you would start it by hand; this script only
starts them, waits until each answers (and the proxy has reached its
backends), prints where they are, what to sign in with and what to do next,
and on Ctrl-C stops them all and waits for them to finish their in-flight calls.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

import httpx2

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 30.0
PROXY_READY_TIMEOUT = 20.0  # the proxy's backends start after it answers; wait for them, then print the banner
DEMO_USER = "demo"  # 03's authorization server's one user
MACHINE_CLIENT_ID = "workshop-machine"


def no_args(_offset: int) -> list[str]:
    return []


@dataclass(frozen=True)
class Module:
    folder: str
    port: int
    summary: str
    script: str = "server.py"
    args: Callable[[int], list[str]] = no_args  # given the port offset, the module's own flags
    offset: int = 0

    def moved(self, offset: int) -> Module:
        return replace(self, offset=offset)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port + self.offset}"

    @property
    def url(self) -> str:
        return f"http://{self.address}" + ("/mcp" if self.script == "server.py" else "")


# Each module joins the stack as it lands. The two halves of 03 must know each other's address.
STACK = [
    Module("01-basic-mcp", 8081, "tools, a resource and a prompt"),
    Module("02-token-passthrough", 8082, "the caller's token in context (safe mode)"),
    Module(
        "03-oauth-mcp",
        9000,
        "the authorization server: sign in with the demo login below",
        "authorization_server.py",
        lambda offset: ["--resource", f"http://127.0.0.1:{8083 + offset}/mcp"],
    ),
    Module(
        "03-oauth-mcp",
        8083,
        "needs an access token from the authorization server",
        "server.py",
        lambda offset: ["--issuer", f"http://127.0.0.1:{9000 + offset}"],
    ),
    Module("04-observability", 8084, "traces, metrics at /metrics, correlated logs"),
    Module("05-mcp-proxy", 9090, "one endpoint: its own stdio copies of 01, 02 and 04, and the 03 above over HTTP"),
]


def start(module: Module, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # A session of its own, so Ctrl-C reaches only this script, which then stops each server once.
    command = [sys.executable, str(REPO / module.folder / module.script), "-t", "http", "--addr", module.address]
    command += module.args(module.offset)
    return subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, start_new_session=True)


def wait_ready(module: Module, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if httpx2.get(f"http://{module.address}/healthz", timeout=1).status_code == 200:
                return True
        except httpx2.TransportError:
            pass
        time.sleep(0.1)
    return False


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait()


def wait_for_backends(proxy: Module) -> None:
    """Until every backend of the proxy is up (or a while has passed), so their start-up logs come before the banner."""
    deadline = time.monotonic() + PROXY_READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            backends = httpx2.get(f"http://{proxy.address}/readyz", timeout=1).json().get("backends", {})
            if backends and all(state.get("state") == "up" for state in backends.values()):
                return
        except (httpx2.TransportError, ValueError):
            pass
        time.sleep(0.2)


def banner(stack: list[Module], env: dict[str, str]) -> str:
    width = max(len(m.folder) for m in stack)
    rows = "\n".join(f"  {m.folder:<{width}}  {m.url:<28}  {m.summary}" for m in stack)
    first = stack[0].url
    secret = env["MACHINE_CLIENT_SECRET"]
    return f"""
The MCP workshop is running: {len(stack)} servers on 127.0.0.1, each its own process, logging above.

{rows}

  03's demo login (browser sign-in):  {DEMO_USER} / {env["DEMO_PASSWORD"]}
  03's machine client:                {MACHINE_CLIENT_ID} / {secret}
    for 03's client-credentials examples, in the shell you run them from:
    export MACHINE_CLIENT_SECRET={secret}

Next: open 01-basic-mcp/README.md and follow "Try it". To connect MCP Inspector:
  in the browser:       make inspector   (in a second terminal; it prints the page to open)
  on the command line:  .venv/bin/node node_modules/.bin/mcp-inspector --cli {first} --method tools/list

Press Ctrl-C to stop everything.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-offset", type=int, default=0, help="add this to every default port, if they are taken")
    stack = [module.moved(parser.parse_args().port_offset) for module in STACK]
    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    # 03's MCP server authenticates to its authorization server for token exchange, and the proxy (05) as
    # the machine client for a token of its own: one secret for each pair, made up for this run.
    # The demo password too, so that the banner can show it (the authorization server would make one up).
    env = {
        "DEMO_PASSWORD": secrets.token_urlsafe(9),
        "MCP_SERVER_CLIENT_SECRET": secrets.token_urlsafe(24),
        "MACHINE_CLIENT_SECRET": secrets.token_urlsafe(24),
        **os.environ,
        # Where the proxy finds 03 and its authorization server, moved too.
        "WORKSHOP_03_URL": f"http://127.0.0.1:{8083 + stack[0].offset}/mcp",
        "WORKSHOP_03_ISSUER": f"http://127.0.0.1:{9000 + stack[0].offset}",
    }
    processes: list[subprocess.Popen[bytes]] = []
    for module in stack:
        process = start(module, env)
        processes.append(process)
        if not wait_ready(module, process):
            print(f"run_workshop: {module.folder} did not start (see its log above)", file=sys.stderr)
            stop(processes)
            return 1
    wait_for_backends(stack[-1])
    print(banner(stack, env), flush=True)

    while not stopping:
        for module, process in zip(stack, processes, strict=True):
            if process.poll() is not None:
                print(f"run_workshop: {module.folder} exited with {process.returncode}; stopping", file=sys.stderr)
                stop(processes)
                return 1
        time.sleep(0.2)
    print("run_workshop: stopping all servers", file=sys.stderr, flush=True)
    stop(processes)
    failed = [m.folder for m, p in zip(stack, processes, strict=True) if p.returncode != 0]
    if failed:
        print(f"run_workshop: did not stop cleanly: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
