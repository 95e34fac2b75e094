"""Start the workshop's servers for real and point real clients at them.

Every module's tests use these helpers:

- `load_server(folder)` imports a module's `server.py` (folders such as
  `01-basic-mcp` are not importable names, and every module's file is
  `server.py`, so each gets a unique module name).
- `ServerProcess` runs a module's `server.py` as a subprocess over HTTP on a
  free port, waits until it logs that it is serving, and stops it by PID.
- `stdio_params(folder)` describes the same server as a stdio subprocess for
  the SDK `Client`.
- `serve_app(app)` runs a Starlette app on uvicorn inside the test's event loop.
- `inspector_cli(...)` and `conformance(...)` run the pinned npm peers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx2
import uvicorn
from mcp import Client, StdioServerParameters
from mcp.client.session import MessageHandlerFnT
from mcp.client.streamable_http import streamable_http_client
from starlette.types import ASGIApp

REPO = Path(__file__).resolve().parent.parent
NODE_BIN = REPO / "node_modules" / ".bin"
# The SDK's own client defaults; a bare httpx2 client would time out after 5 s.
HTTP_TIMEOUT = httpx2.Timeout(30, read=300)
START_TIMEOUT = 20.0
# Debian's Chromium, headless, as root, with nothing that reaches for the network this machine does not have.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Every credential a test hands to a server, and every stderr a test captured: at the end of the
# session, conftest.py checks that no captured log line contains any of those credentials.
SECRETS_USED: set[str] = set()
CAPTURED_LOGS: list[list[str]] = []  # one list of stderr lines per server process or command


def remember_secret(secret: str) -> str:
    SECRETS_USED.add(secret)
    return secret


def load_server(folder: str, script: str = "server.py") -> ModuleType:
    """Import `<folder>/server.py` (or another script of the module) under a name of its own, once.

    The folder goes on sys.path, as it does when the file runs as a script, so
    the server can import the files beside it; give those names that no other
    module uses (`demo_tokens.py`, not `tokens.py`). Scripts that several
    modules have (`client.py`) get the folder in their name here.
    """
    name = "workshop_" + folder.replace("-", "_") + ("" if script == "server.py" else "_" + script.removesuffix(".py"))
    if name in sys.modules:
        return sys.modules[name]
    if str(REPO / folder) not in sys.path:
        sys.path.insert(0, str(REPO / folder))
    spec = importlib.util.spec_from_file_location(name, REPO / folder / script)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_sibling(folder: str, name: str) -> ModuleType:
    """A file beside a module's `server.py`, as that server imports it (the same module object)."""
    load_server(folder)
    return importlib.import_module(name)


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a server subprocess gets: ours, minus the common flags' variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def stdio_params(folder: str, *args: str, env: Mapping[str, str] | None = None) -> StdioServerParameters:
    """A module's server as a stdio subprocess. The SDK passes only a few variables on, so name the rest."""
    return StdioServerParameters(
        command=sys.executable,
        args=[str(REPO / folder / "server.py"), "--log-format", "json", *args],
        env={"PYTHONUNBUFFERED": "1", **(env or {})},
        cwd=str(REPO),
    )


# Raw JSON-RPC lines, for tests that talk to a stdio server byte by byte.
INITIALIZE = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
)
INITIALIZED = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})


def request_line(rid: int, method: str, params: Any) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})


def tool_call_line(rid: int, tool: str, arguments: Any) -> str:
    return request_line(rid, "tools/call", {"name": tool, "arguments": arguments})


def run_server(
    folder: str,
    *args: str,
    lines: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 30,
    script: str = "server.py",
) -> subprocess.CompletedProcess[str]:
    """Run a module's `server.py` to the end: feed it `lines` on stdin (then close it), capture both streams."""
    command = [sys.executable, str(REPO / folder / script), *args]
    stdin_text = "".join(line + "\n" for line in lines) if lines is not None else None
    done = subprocess.run(
        command,
        input=stdin_text,
        stdin=subprocess.DEVNULL if stdin_text is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=server_env(env),
        check=False,
    )
    CAPTURED_LOGS.append(done.stderr.splitlines())
    return done


class ServerProcess:
    """A module's `server.py` running over HTTP in a subprocess, on a port the OS picked.

    The server is told `--addr 127.0.0.1:0 --log-format json`; its stderr is
    read on a thread, so every line stays available to assertions (`logs`),
    and the URL comes from its `serving` log event.
    """

    def __init__(
        self, folder: str, *args: str, env: Mapping[str, str] | None = None, script: str = "server.py"
    ) -> None:
        self.folder = folder
        self.argv = [sys.executable, str(REPO / folder / script), "-t", "http", "--addr", "127.0.0.1:0"]
        self.argv += ["--log-format", "json", *args]
        self.env = server_env(env)
        self.lines: list[str] = []
        CAPTURED_LOGS.append(self.lines)
        self.url = ""
        self._ready = threading.Event()
        self._logged = threading.Condition()
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> ServerProcess:
        self.proc = subprocess.Popen(
            self.argv,
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.folder} did not start:\n" + "\n".join(self.lines))
        return self

    def _read_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        for line in self.proc.stderr:
            with self._logged:
                self.lines.append(line.rstrip("\n"))
                self._logged.notify_all()
            event = parse_json_line(line)
            if event and event.get("event") == "serving" and "url" in event:
                self.url = str(event["url"])
                self._ready.set()

    @property
    def base_url(self) -> str:
        return self.url.removesuffix("/mcp")

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def events(self) -> list[dict[str, Any]]:
        """The JSON log events the server wrote so far."""
        return [e for e in map(parse_json_line, list(self.lines)) if e is not None]

    def wait_for_event(self, event: str, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """Block until the server logs `event`; returns it."""
        with self._logged:
            found = self._logged.wait_for(
                lambda: next((e for e in self.events() if e.get("event") == event), None), timeout
            )
        if found is None:
            raise AssertionError(f"{self.folder} never logged {event!r}:\n" + "\n".join(self.lines))
        return found

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.proc
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def wait(self, timeout: float = 20) -> int:
        assert self.proc
        code = self.proc.wait(timeout)
        if self._reader:
            self._reader.join(timeout=5)  # reads to EOF, so every last log line is kept
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
        return code

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it will not go; returns the exit code."""
        if self.proc is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    """A port that was free a moment ago, for the rare server that must know another's port before it starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def parse_json_line(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@contextlib.asynccontextmanager
async def serve_app(app: ASGIApp) -> AsyncIterator[str]:
    """Serve an ASGI app on uvicorn in this event loop, on a free 127.0.0.1 port; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on", timeout_graceful_shutdown=2))
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with anyio.fail_after(START_TIMEOUT):
                while not server.started:  # noqa: ASYNC110 - uvicorn has no "started" event to await
                    await anyio.sleep(0.01)
            try:
                yield f"http://127.0.0.1:{sock.getsockname()[1]}"
            finally:
                server.should_exit = True
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def http_client(
    url: str,
    *,
    mode: str = "auto",
    headers: Mapping[str, str] | None = None,
    message_handler: MessageHandlerFnT | None = None,
) -> AsyncIterator[Client]:
    """An SDK `Client` over streamable HTTP, with the SDK's timeouts, optional extra headers, and optionally
    a handler for what the server sends unasked (notifications on a 2025-11-25 session)."""
    async with (
        httpx2.AsyncClient(timeout=HTTP_TIMEOUT, headers=headers) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode, message_handler=message_handler) as client,
    ):
        yield client


def node_tool(name: str) -> list[str]:
    """The command line of a pinned npm tool, run by the Node 22 the dev extras install."""
    tool = NODE_BIN / name
    node = Path(sys.executable).parent / "node"
    if not tool.exists() or not node.exists():
        raise RuntimeError(f"{tool} or {node} is missing: run `make test`, which installs them")
    return [str(node), str(tool.resolve())]


def node_env() -> dict[str, str]:
    env = {**server_env(), "NO_COLOR": "1", "CI": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_node_tool(name: str, args: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*node_tool(name), *args],
        cwd=REPO,
        env=node_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    CAPTURED_LOGS.append(done.stderr.splitlines())  # a stdio server's logs arrive on the peer's stderr
    return done


def inspector_cli(*args: str, timeout: float = 120) -> Any:
    """Run the MCP Inspector CLI; returns its JSON output, or fails with what it printed."""
    result = run_node_tool("mcp-inspector", ["--cli", *args], timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(
            f"inspector exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return json.loads(result.stdout)


def start_inspector_cli(*args: str) -> subprocess.Popen[str]:
    """Start the MCP Inspector CLI without waiting for it, for a test that acts while its call runs."""
    return subprocess.Popen(
        [*node_tool("mcp-inspector"), "--cli", *args],
        cwd=REPO,
        env=node_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def conformance(url: str, scenario: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run one server scenario of the official conformance suite against `url`."""
    return run_node_tool("conformance", ["server", "--url", url, "--scenario", scenario], timeout=timeout)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A real redis-server on a free loopback port, for as long as the block runs; yields its URL."""
    if not shutil.which("redis-server"):
        raise RuntimeError("redis-server is missing: `make test` installs it (Debian package redis-server)")
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                    connection.sendall(b"PING\r\n")
                    if connection.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
