"""shared/: the CLI, logging, request context and HTTP app every module is built on."""

from __future__ import annotations

import ast
import io
import json
import logging
from pathlib import Path
from typing import Any

import httpx2
import pytest
import structlog
from mcp.server import MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import shared
from shared.config import Address, ConfigError, ServerConfig, parse_addr, parse_config
from shared.context import RequestContextMiddleware, Secret, bearer_token, caller_token, request_id
from shared.logs import REDACTED, configure_logging
from shared.serve import bind_socket, build_http_app, mcp_url, origin_regex, stream_closer, transport_security
from tests.harness import serve_app

pytestmark = pytest.mark.anyio


# --- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":8081", Address("127.0.0.1", 8081)),
        ("8085", Address("127.0.0.1", 8085)),
        ("", Address("127.0.0.1", 9999)),
        ("localhost", Address("localhost", 9999)),
        ("0.0.0.0:80", Address("0.0.0.0", 80)),
        ("[::1]:8081", Address("::1", 8081)),
        ("[::1]", Address("::1", 9999)),
        ("127.0.0.1:0", Address("127.0.0.1", 0)),
    ],
)
def test_parse_addr(text: str, expected: Address) -> None:
    assert parse_addr(text, default_port=9999) == expected


@pytest.mark.parametrize("text", ["::1:8081", "host:http", "host:70000", "[::1", "[nothost]:1", "70000"])
def test_parse_addr_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_addr(text, default_port=1)


def test_defaults_are_stdio_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MCP_TRANSPORT", "MCP_ADDR", "MCP_LOG_LEVEL", "MCP_LOG_FORMAT", "MCP_SHUTDOWN_GRACE"):
        monkeypatch.delenv(name, raising=False)
    config, _ = parse_config([], default_port=8081)
    assert config == ServerConfig(transport="stdio", addr=Address("127.0.0.1", 8081), log_level="info")


def test_environment_mirrors_flags_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_TRANSPORT", "http")
    monkeypatch.setenv("MCP_ADDR", ":9000")
    monkeypatch.setenv("MCP_LOG_FORMAT", "json")
    monkeypatch.setenv("MCP_SHUTDOWN_GRACE", "3")
    from_env, _ = parse_config([], default_port=8081)
    assert (from_env.transport, from_env.addr.port, from_env.log_format, from_env.grace_seconds) == (
        "http",
        9000,
        "json",
        3,
    )
    from_flags, _ = parse_config(["-t", "stdio", "--addr", ":9001"], default_port=8081)
    assert (from_flags.transport, from_flags.addr.port) == ("stdio", 9001)


# --- request context ------------------------------------------------------------------------


def test_secret_never_prints_itself() -> None:
    token = Secret("s3cr3t-token-value")
    assert "s3cr3t" not in repr(token) + str(token) + f"{token}" + repr([token])
    assert token.reveal() == "s3cr3t-token-value"
    assert token == Secret("s3cr3t-token-value") and token != Secret("other")
    assert token.fingerprint().startswith("sha256:") and "s3cr3t" not in token.fingerprint()


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc.def", "abc.def"), ("bearer  xyz ", "xyz"), ("Basic dXNlcg==", None), ("Bearer ", None), (None, None)],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    parsed = bearer_token(header)
    assert (parsed.reveal() if parsed else None) == token


async def test_request_context_reaches_the_handler_and_is_echoed() -> None:
    async def whoami(_request: Request) -> JSONResponse:
        token = caller_token.get()
        return JSONResponse({"request_id": request_id.get(), "token": token.reveal() if token else None})

    app = RequestContextMiddleware(Starlette(routes=[Route("/", whoami)]))
    async with serve_app(app) as base, httpx2.AsyncClient(base_url=base) as http:
        mine = await http.get("/", headers={"authorization": "Bearer t-1", "x-request-id": "abc-123"})
        anonymous = await http.get("/", headers={"x-request-id": "no good!"})
    assert mine.json() == {"request_id": "abc-123", "token": "t-1"}
    assert mine.headers["x-request-id"] == "abc-123"
    assert anonymous.json()["token"] is None
    assert anonymous.json()["request_id"] == anonymous.headers["x-request-id"] != "no good!"


# --- logging --------------------------------------------------------------------------------


@pytest.fixture
def json_log() -> Any:
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    yield stream
    configure_logging("warning", "json", stream=io.StringIO())  # leave no handler on a closed stream


def test_stdlib_and_structlog_lines_share_one_json_format(json_log: io.StringIO) -> None:
    structlog.get_logger("mine").info("hello", user="ada")
    logging.getLogger("uvicorn.error").warning("from %s", "uvicorn")
    first, second = (json.loads(line) for line in json_log.getvalue().splitlines())
    assert (first["event"], first["user"], first["level"], first["logger"]) == ("hello", "ada", "info", "mine")
    assert (second["event"], second["level"], second["logger"]) == ("from uvicorn", "warning", "uvicorn.error")


def test_tokens_are_masked_whoever_logs_them(json_log: io.StringIO) -> None:
    structlog.get_logger().info(
        "call", token="raw-1", headers={"Authorization": "Bearer raw-2"}, secret=Secret("raw-3")
    )
    logging.getLogger("httpx2").warning("sent Authorization: Bearer raw-4")
    structlog.get_logger().info("upstream said", detail="basic raw-5-credential")
    logging.getLogger("authlib").warning("Issue token %r", {"access_token": "raw-6", "refresh_token": "raw-7"})
    logging.getLogger("x").warning("got eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJyYXctOCJ9.c2lnbmF0dXJl-raw-8 back")
    structlog.get_logger().info("form", body="grant_type=refresh_token&refresh_token=raw-9&client_secret=raw-10")
    structlog.get_logger().info("shouted", Authorization="raw-11", detail="BEARER raw-12-credential")
    out = json_log.getvalue()
    for raw in (f"raw-{n}" for n in range(1, 13)):
        assert raw not in out
    assert REDACTED in out


class KeepRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_log_records_skip_the_lookups_no_line_prints(json_log: io.StringIO) -> None:
    """`configure_logging` sets the standard library's private `logging._srcfile`, as the logging HOWTO
    advises: a Python that renames it fails here by name, instead of quietly looking up every caller again."""
    keep, logger = KeepRecords(), logging.getLogger("tests.lookups")
    logger.addHandler(keep)
    try:
        logger.warning("where from?")
    finally:
        logger.removeHandler(keep)
    [record] = keep.records
    assert (record.pathname, record.lineno) == ("(unknown file)", 0), "logging._srcfile no longer stops the lookup"
    assert (record.thread, record.process) == (None, None)


def test_tracebacks_carry_no_local_variables(json_log: io.StringIO) -> None:
    password = "hunter2-in-a-local"
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        structlog.get_logger().exception("failed")
    assert password not in json_log.getvalue()
    assert "boom" in json_log.getvalue()


# --- the HTTP app ---------------------------------------------------------------------------


def test_loopback_gets_a_loopback_allowlist() -> None:
    security = transport_security(ServerConfig(transport="http", addr=Address("127.0.0.1", 1)))
    assert security.enable_dns_rebinding_protection
    assert security.allowed_hosts == ["127.0.0.1:*", "localhost:*", "[::1]:*"]


def test_all_interfaces_keeps_protection_on() -> None:
    """The SDK turns protection off for 0.0.0.0; the runner keeps it on and only adds what you list."""
    config = ServerConfig(transport="http", addr=Address("0.0.0.0", 1), allowed_hosts=("mcp.example.com",))
    security = transport_security(config)
    assert security.enable_dns_rebinding_protection
    assert security.allowed_hosts[-1] == "mcp.example.com"
    assert "https://mcp.example.com" in security.allowed_origins
    assert mcp_url(config.addr) == "http://127.0.0.1:1/mcp"


def test_a_specific_address_is_allowed_with_any_port() -> None:
    security = transport_security(ServerConfig(transport="http", addr=Address("10.1.2.3", 80)))
    assert "10.1.2.3:*" in security.allowed_hosts


def test_cors_and_transport_admit_the_same_origins() -> None:
    import re

    pattern = re.compile(origin_regex(transport_security(ServerConfig(transport="http"))))
    assert pattern.match("http://localhost:6274") and pattern.match("http://[::1]:5173")
    assert not pattern.match("http://localhost.evil.example:6274") and not pattern.match("http://evil.example")


async def test_app_serves_health_and_extra_routes_beside_mcp() -> None:
    async def hello(_request: Request) -> JSONResponse:
        return JSONResponse({"hello": "world"})

    mcp = MCPServer("t")
    app = build_http_app(mcp, ServerConfig(transport="http"), routes=[Route("/hello", hello)])
    async with serve_app(app) as base, httpx2.AsyncClient(base_url=base) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/hello")).json() == {"hello": "world"}
        assert (await http.get("/mcp", headers={"accept": "application/json"})).status_code != 404


def test_open_listen_streams_can_be_ended_at_shutdown() -> None:
    """`stream_closer` reaches `MCPServer`'s private `_lowlevel_server`, defensively: a release that renames it
    would only slow shutdown down, so this test is what notices."""
    assert callable(stream_closer(MCPServer("quick shutdown"))), "MCPServer._lowlevel_server moved: see shared/serve.py"


def test_listening_socket_disables_nagle() -> None:
    """Without TCP_NODELAY every 2026-07-28 response waited ~40 ms for a delayed ACK (bench/ found it)."""
    import socket

    sock = bind_socket(Address("127.0.0.1", 0))
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        sock.close()


def test_modules_import_only_the_shared_surface() -> None:
    """A module names what it uses of shared/ through the package, and the package offers nothing no module uses."""
    repo = Path(__file__).resolve().parent.parent
    used: set[str] = set()
    for path in sorted(repo.glob("0*-*/*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "shared":
                assert node.module == "shared", f"{path.relative_to(repo)} imports from {node.module}: use shared"
                used |= {alias.name for alias in node.names}
    assert used <= set(shared.__all__), f"not in shared.__all__: {sorted(used - set(shared.__all__))}"
    assert set(shared.__all__) <= used, f"in shared.__all__ but used by no module: {sorted(set(shared.__all__) - used)}"
