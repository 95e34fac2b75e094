"""Serve MCP over stdio, adding the two things the SDK's stdio loop leaves out.

1. A line that is not JSON, or not a JSON-RPC message, is answered with a
   JSON-RPC error (-32700 or -32600) instead of being dropped in silence, so
   whoever sent it learns what was wrong.
2. Shutdown drains. When stdin closes or SIGINT/SIGTERM arrives, requests
   already read still get their answers (for up to the grace period), then
   the process exits 0. On its own the SDK cancels them, and a signal leaves
   it blocked on stdin.

Everything else (framing, the fd 1 diversion that keeps stray prints off the
wire) is the SDK's own `stdio_server`.
"""

from __future__ import annotations

import os
import selectors
import signal
import stat
from typing import Any, cast

import anyio
import anyio.abc
import structlog
from anyio.streams.memory import MemoryObjectSendStream
from mcp.server import MCPServer, Server
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp.types import ErrorData, JSONRPCError, JSONRPCNotification, JSONRPCRequest, JSONRPCResponse, RequestId
from pydantic import ValidationError

log = structlog.get_logger("shared.stdio")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600


def _pollable(fd: int) -> bool:
    """Whether the event loop can wait on `fd`.

    epoll refuses regular files and some devices, /dev/null among them (EPERM):
    those never block a read, so they are read without waiting.
    """
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return False
    with selectors.DefaultSelector() as selector:
        try:
            selector.register(fd, selectors.EVENT_READ)
        except OSError:
            return False
    return True


class StdinLines:
    """Lines of the process's stdin, read in a way a signal can interrupt.

    The SDK reads stdin on a worker thread, which nothing can cancel. Here the
    event loop waits until the descriptor is readable, so `stop()` ends the
    iteration at once. fd 0 itself is pointed at /dev/null meanwhile, so a
    child process cannot steal protocol bytes.
    """

    def __init__(self) -> None:
        self._fd = os.dup(0)
        self._pollable = _pollable(self._fd)
        self._saved_stdin = os.dup(0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        self._buffer = b""
        self._eof = False
        self._scope: anyio.CancelScope | None = None
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True
        if self._scope is not None:
            self._scope.cancel()

    def __aiter__(self) -> StdinLines:
        return self

    async def __anext__(self) -> str:
        with anyio.CancelScope() as self._scope:
            while b"\n" not in self._buffer and not self._eof and not self.stopped:
                if self._pollable:
                    await anyio.wait_readable(self._fd)
                chunk = os.read(self._fd, 65536)
                self._buffer += chunk
                self._eof = not chunk
        self._scope = None
        if self.stopped or not self._buffer:
            raise StopAsyncIteration
        line, sep, self._buffer = self._buffer.partition(b"\n")
        return (line + sep).decode("utf-8", errors="replace")

    def close(self) -> None:
        os.dup2(self._saved_stdin, 0)
        os.close(self._saved_stdin)
        os.close(self._fd)


class InFlight:
    """Ids of the requests read from stdin and not yet answered."""

    def __init__(self) -> None:
        self.ids: set[RequestId] = set()
        self._empty = anyio.Event()
        self._empty.set()

    def add(self, rid: RequestId) -> None:
        if not self.ids:
            self._empty = anyio.Event()
        self.ids.add(rid)

    def discard(self, rid: RequestId) -> None:
        self.ids.discard(rid)
        if not self.ids:
            self._empty.set()

    async def wait_empty(self) -> None:
        await self._empty.wait()


def invalid_message_error(exc: Exception) -> JSONRPCError:
    """The JSON-RPC answer to a line the SDK could not parse."""
    errors = exc.errors() if isinstance(exc, ValidationError) else []
    if any(e["type"] == "json_invalid" for e in errors):
        return JSONRPCError(
            jsonrpc="2.0", id=None, error=ErrorData(code=PARSE_ERROR, message="Parse error: not valid JSON")
        )
    # Valid JSON, but not a JSON-RPC request, notification or response. Echo its id when it has a usable one.
    raw = errors[0].get("input") if errors else None
    rid = raw.get("id") if isinstance(raw, dict) else None
    rid = rid if isinstance(rid, str | int) and not isinstance(rid, bool) else None
    message = (
        "Invalid Request: not a JSON-RPC 2.0 message (it needs jsonrpc '2.0' and a method, or a result/error and an id)"
    )
    return JSONRPCError(jsonrpc="2.0", id=rid, error=ErrorData(code=INVALID_REQUEST, message=message))


async def serve_stdio_async(mcp: MCPServer[Any] | Server[Any], grace_seconds: int) -> None:
    """Serve one stdio connection until stdin closes or a signal arrives, then drain and return."""
    # MCPServer has no public handle on the low-level server its transports drive;
    # we need it to sit between the wire and the server.
    server = mcp._lowlevel_server if isinstance(mcp, MCPServer) else mcp  # noqa: SLF001
    stdin = StdinLines()
    in_flight = InFlight()
    to_server, server_in = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    server_out, from_server = anyio.create_memory_object_stream[SessionMessage](0)
    try:
        async with stdio_server(stdin=cast(Any, stdin)) as (wire_in, wire_out), anyio.create_task_group() as tg:

            async def inbound() -> None:
                async with to_server:
                    async for item in wire_in:
                        if isinstance(item, Exception):
                            reply = invalid_message_error(item)
                            log.warning("invalid message", code=reply.error.code, rpc_id=reply.id)
                            await wire_out.send(SessionMessage(reply))
                            continue
                        message = item.message
                        if isinstance(message, JSONRPCRequest):
                            in_flight.add(message.id)
                        elif isinstance(message, JSONRPCNotification) and message.method == "notifications/cancelled":
                            in_flight.discard((message.params or {}).get("requestId", ""))  # no answer will come
                        await to_server.send(item)
                    # stdin is closed (or a signal stopped it): answer what was already asked.
                    with anyio.move_on_after(grace_seconds):
                        await in_flight.wait_empty()
                    if in_flight.ids:
                        log.warning("grace period over; abandoning requests", pending=len(in_flight.ids))

            async def outbound() -> None:
                async with wire_out, from_server:
                    async for item in from_server:
                        await wire_out.send(item)
                        if isinstance(item.message, JSONRPCResponse | JSONRPCError) and item.message.id is not None:
                            in_flight.discard(item.message.id)

            async def run_server(out: MemoryObjectSendStream[SessionMessage]) -> None:
                async with out:
                    await server.run(server_in, out, server.create_initialization_options())
                stdin.stop()  # the server is done: stop reading, so the SDK's reader task ends too
                watcher.cancel()

            async def stop_on_signal(*, task_status: anyio.abc.TaskStatus[anyio.CancelScope]) -> None:
                with anyio.CancelScope() as scope, anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    task_status.started(scope)
                    async for signum in signals:
                        if stdin.stopped:
                            tg.cancel_scope.cancel()  # a second signal: stop now
                        log.info("shutting down", signal=signal.Signals(signum).name, grace_seconds=grace_seconds)
                        stdin.stop()

            watcher = await tg.start(stop_on_signal)
            log.info("serving", transport="stdio")
            tg.start_soon(inbound)
            tg.start_soon(outbound)
            tg.start_soon(run_server, server_out)
    finally:
        stdin.close()
    log.info("stopped")
