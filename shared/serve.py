"""Serve an `MCPServer` over stdio or streamable HTTP, the same way in every module.

`mcp.run()` would do for a demo; this runner adds what the workshop needs on
top, each for a reason the SDK notes spell out:

- Over HTTP, the app is built here (not by `mcp.run`) so that we can add a
  health route, CORS for the browser MCP Inspector, a request id per request,
  and a bounded shutdown grace period (uvicorn otherwise waits forever on an
  in-flight tool call).
- DNS-rebinding protection is always configured explicitly: the SDK switches
  it *off* for any non-loopback host, including 0.0.0.0.
- The listening socket is bound before uvicorn starts, so a taken port is one
  clear error line and `--addr :0` can pick a free port (the tests use that).
- Ctrl-C and SIGTERM stop the server and exit 0, over both transports. Open
  `subscriptions/listen` streams are ended the way the spec calls graceful
  first: uvicorn would otherwise wait the whole grace period for them. The
  calls in flight are answered before a 2025-11-25 session's GET stream is
  ended (`shared/drain.py`): ended first, it takes their answers with it.
- Abuse limits: forwarded headers are believed only from `--trusted-proxies`
  (uvicorn believes any from 127.0.0.1), one client address holds at most a
  tenth of the 2025-11-25 session table (`shared/sessions.py`), and a request
  whose headers take longer than HEADER_TIMEOUT is cut off.
- HTTP is parsed by httptools (C) and the event loop is uvloop where it
  exists, uvicorn's own fast path: measurably cheaper per call than the
  pure-Python h11 and asyncio's loop (bench/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import re
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import anyio
import structlog
import uvicorn
from mcp.server import MCPServer, Server
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shared.config import Address, ServerConfig
from shared.context import REQUEST_ID_HEADER, RequestContextMiddleware
from shared.drain import CountRequests, InFlight, streams_ended_by_hand
from shared.event_store import MemoryEventStore
from shared.finite import refuse_non_finite
from shared.sessions import SessionQuota
from shared.stdio import serve_stdio_async

log = structlog.get_logger("shared.serve")

MCP_PATH = "/mcp"
LOOPBACK_HOST_PATTERNS = ("127.0.0.1:*", "localhost:*", "[::1]:*")
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - names to warn about, not to bind
SESSION_IDLE_SECONDS = 30 * 60  # the SDK's default, passed on so that SessionQuota counts by the same clock
HEADER_TIMEOUT = 5.0  # seconds a client has to send a request's headers; a real one needs milliseconds
RESUME_AFTER_MS = 1000  # a resumable server's SSE `retry`: how soon a client whose stream was cut comes back


def mcp_url(addr: Address) -> str:
    """The URL a client on this machine uses to reach the server's MCP endpoint."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(addr.host, addr.host)  # noqa: S104 - a lookup, not a bind
    return f"http://{Address(host, addr.port)}{MCP_PATH}"


def transport_security(config: ServerConfig) -> TransportSecuritySettings:
    """Which Host and Origin headers the MCP endpoint accepts.

    A browser page on another site can reach a server on your loopback
    interface through DNS rebinding; checking Host and Origin stops it.
    Loopback names are always allowed, a specific bind address too, and
    anything else only when listed with `--allowed-hosts`.
    """
    hosts = list(LOOPBACK_HOST_PATTERNS)
    if not config.addr.is_loopback and config.addr.host not in WILDCARD_HOSTS:
        hosts.append(f"{config.addr.host_literal}:*")
    hosts.extend(config.allowed_hosts)
    origins = [f"{scheme}://{host}" for host in hosts for scheme in ("http", "https")]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


def origin_regex(security: TransportSecuritySettings) -> str:
    """CORS must admit exactly the origins the transport admits, or the browser and server disagree."""
    patterns = [
        re.escape(origin.removesuffix(":*")) + (r"(:\d+)?" if origin.endswith(":*") else "")
        for origin in security.allowed_origins
    ]
    return "^(" + "|".join(patterns) + ")$"


async def healthz(_request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def build_http_app(
    mcp: MCPServer[Any] | Server[Any],
    config: ServerConfig,
    *,
    routes: Sequence[BaseRoute] = (),
    middleware: Sequence[Middleware] = (),
    resumable: bool = False,
) -> Starlette:
    """The Starlette app for one server start.

    Build a new one per start: the SDK's session manager behind it can run
    only once. `resumable` keeps every SSE event in memory (shared/event_store.py),
    so that a stream the server cuts mid-call can be resumed: for a server
    whose calls can be cut under it (05, when a backend cuts its own), not
    for one whose calls never are.
    """
    refuse_non_finite(mcp)
    security = transport_security(config)
    mcp_app = mcp.streamable_http_app(
        streamable_http_path=MCP_PATH,
        transport_security=security,
        host=config.addr.host,
        max_sessions=config.max_sessions,
        session_idle_timeout=SESSION_IDLE_SECONDS,
        event_store=MemoryEventStore() if resumable else None,
        retry_interval=RESUME_AFTER_MS if resumable else None,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # A mounted app's own lifespan never runs; without this every /mcp request is a 500.
        async with mcp.session_manager.run():
            yield

    in_flight = InFlight()
    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            *routes,
            Mount("/", app=SessionQuota(mcp_app, MCP_PATH, config.max_sessions, SESSION_IDLE_SECONDS)),
        ],
        middleware=[
            Middleware(CountRequests, in_flight=in_flight, stream_path=MCP_PATH),
            cors(security),
            Middleware(RequestContextMiddleware),
            *middleware,
        ],
        lifespan=lifespan,
    )
    app.state.end_streams = stream_closer(mcp)
    app.state.in_flight = in_flight
    return app


def stream_closer(mcp: MCPServer[Any] | Server[Any]) -> Callable[[], None] | None:
    """What ends every open `subscriptions/listen` stream at once, if the server's handler can (the SDK's can).

    A listen stream is a response that never finishes on its own, so on
    shutdown uvicorn waits out its whole grace period for each one. Closed
    first, each stream sends its final result and ends, and the client knows
    it was a deliberate close, not a dropped connection.
    """
    # MCPServer keeps the low-level server to itself; the SDK offers no other way to reach its handlers.
    # Looked up defensively: an SDK release that renames it costs the quick shutdown, not the start (a test
    # in tests/test_shared.py fails by name then).
    server = getattr(mcp, "_lowlevel_server", None) if isinstance(mcp, MCPServer) else mcp
    if not isinstance(server, Server):
        return None
    entry = server.get_request_handler("subscriptions/listen")
    close = getattr(entry.handler, "close", None) if entry is not None else None
    return close if callable(close) else None


def cors(security: TransportSecuritySettings) -> Middleware:
    """CORS for browser clients such as MCP Inspector, admitting exactly the origins the transport admits."""
    return Middleware(
        CORSMiddleware,
        allow_origin_regex=origin_regex(security),
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=["*"],
        # The browser hides response headers from page scripts unless told.
        expose_headers=["Mcp-Session-Id", "Mcp-Protocol-Version", "WWW-Authenticate", REQUEST_ID_HEADER],
    )


def bind_socket(addr: Address) -> socket.socket:
    """Bind (but do not yet serve) the listening socket; raises OSError if the port is taken."""
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit this: without it, a response written in two parts waits for the
        # client's delayed ACK (Nagle's algorithm) on every 2026-07-28 request (how long: bench/README.md).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((addr.host, addr.port))
    except OSError:
        sock.close()
        raise
    # Not inheritable (Python's default, PEP 446): uvicorn serves it in this process, and a child that held
    # it (05's stdio backends) would keep the port taken after the server exits.
    return sock


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with header values trimmed and a deadline for the headers.

    RFC 9110 (section 5.5) says a field value excludes the spaces and tabs
    around it, and the MCP conformance suite sends `Mcp-Name:  echo  ` to check
    that a server compares `echo`. llhttp, the parser inside httptools, leaves
    the trailing ones in; h11, uvicorn's other parser, strips both, but costs
    far more per request than this one line (bench/README.md, "Hand-written code").

    uvicorn has no header timeout in either parser: a connection that never
    finishes its request line and headers stays open for good, so a few
    hundred of them hold the server's sockets (slowloris). Each request's
    headers, and a new connection's first byte, get HEADER_TIMEOUT seconds.
    """

    header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_deadline()

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value.strip(b" \t"))

    def on_headers_complete(self) -> None:
        self._disarm_header_deadline()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        if self.header_deadline is None:
            self.header_deadline = self.loop.call_later(HEADER_TIMEOUT, self._headers_too_slow)

    def _disarm_header_deadline(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _headers_too_slow(self) -> None:
        self.header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


class _Uvicorn(uvicorn.Server):
    """uvicorn with three workshop tweaks: a log line when ready, calls answered first, and exit 0 on a signal.

    Stock uvicorn re-raises SIGINT/SIGTERM after its graceful shutdown, so the
    process dies with 130/143; for a server asked to stop, stopping is success.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        url: str,
        grace: int,
        end_streams: Callable[[], None] | None,
        in_flight: InFlight | None,
    ) -> None:
        super().__init__(config)
        self.url = url
        self.grace = grace
        self.end_streams = end_streams
        self.in_flight = in_flight or InFlight()  # an app without a count (03's authorization server) has no calls

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        with streams_ended_by_hand():
            await super().serve(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:  # a lifespan that refused to serve asked to stop
            log.info("serving", transport="http", url=self.url)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        log.info("shutting down", grace_seconds=self.grace)
        if self.end_streams is not None:
            self.end_streams()
        async with anyio.create_task_group() as streams:
            # Runs beside uvicorn's own drain, which waits (up to the grace period) for every connection to close.
            streams.start_soon(self.in_flight.end_streams_when_answered)
            await super().shutdown(sockets)
            streams.cancel_scope.cancel()
        log.info("stopped")


def listen(addr: Address) -> socket.socket:
    """Bind the listening socket, or exit with one line that says why (a taken port, usually)."""
    try:
        sock = bind_socket(addr)
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        sys.exit(f"{_prog()}: error: cannot listen on {addr}: {reason}")
    if addr.host in WILDCARD_HOSTS:
        log.warning("listening on all interfaces: anyone who can reach this machine can call its tools", addr=str(addr))
    return sock


def bound_address(sock: socket.socket, config: ServerConfig) -> Address:
    """The address actually bound: `--addr :0` asked the OS for a free port."""
    return Address(config.addr.host, sock.getsockname()[1])


def run_uvicorn(app: Starlette, sock: socket.socket, config: ServerConfig, url: str) -> None:
    """Serve `app` on `sock` until Ctrl-C or SIGTERM, then drain for at most the grace period."""
    uv_config = uvicorn.Config(
        app,
        log_config=None,  # keep our handler; uvicorn's loggers propagate to it
        lifespan="on",
        timeout_graceful_shutdown=config.grace_seconds,
        server_header=False,
        http=HttpProtocol,  # the event loop stays uvicorn's "auto": uvloop where it is installed
        # uvicorn believes X-Forwarded-For from 127.0.0.1 by default, so any local client could pose as any
        # address to a per-address limit; only proxies the user names are believed.
        proxy_headers=bool(config.trusted_proxies),
        forwarded_allow_ips=list(config.trusted_proxies),
    )
    # Both set by build_http_app.
    end_streams, in_flight = getattr(app.state, "end_streams", None), getattr(app.state, "in_flight", None)
    _Uvicorn(uv_config, url, config.grace_seconds, end_streams, in_flight).run(sockets=[sock])


def serve_http(app: Starlette, config: ServerConfig) -> None:
    """Serve an MCP server's app over HTTP at `config.addr`."""
    sock = listen(config.addr)
    run_uvicorn(app, sock, config, mcp_url(bound_address(sock, config)))


def serve(
    mcp: MCPServer[Any] | Server[Any],
    config: ServerConfig,
    *,
    routes: Sequence[BaseRoute] = (),
    middleware: Sequence[Middleware] = (),
    resumable: bool = False,
) -> None:
    """Run `mcp` with the transport the config names. Blocks until the server stops."""
    if config.transport == "stdio":
        refuse_non_finite(mcp)
        anyio.run(serve_stdio_async, mcp, config.grace_seconds)
    else:
        serve_http(build_http_app(mcp, config, routes=routes, middleware=middleware, resumable=resumable), config)


def _prog() -> str:
    return sys.argv[0].rsplit("/", 1)[-1] or "server"
