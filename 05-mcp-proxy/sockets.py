"""httpcore2's connections, made cheaper for a relay: each finds its socket once and sends a request in one write."""

from __future__ import annotations

import select
import ssl
from contextlib import suppress
from typing import Any

import httpcore2


class SocketStream(httpcore2.AsyncNetworkStream):
    """A pooled connection that looks its socket up once, and sends each request in one write.

    Before each request the pool asks every idle connection whether the
    server has closed it, which means finding its socket; anyio builds a fresh
    table of socket attributes for each such question, a real share of the
    proxy's time with many clients (bench/README.md). A connection's
    socket never changes, so it is found once, when the connection is made.

    httpcore2 writes a request's head and its body separately: two system
    calls, two TCP segments (the socket has no Nagle delay), and two wake-ups
    of the backend for one request. Writes are held until the response is
    read (or `WRITE_BATCH` bytes are waiting) and then go out together.
    """

    WRITE_BATCH = 64 * 1024

    def __init__(self, stream: httpcore2.AsyncNetworkStream) -> None:
        self.stream = stream
        self.socket = stream.get_extra_info("socket")
        self.poller = select.poll()
        if self.socket is not None:
            self.poller.register(self.socket, select.POLLIN)
        self.pending = bytearray()
        self.write_timeout: float | None = None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 - httpcore2's API
        if self.pending:
            # As httpcore2 does when a write fails: the server may have answered and closed early,
            # so the read still goes ahead and reports what happened.
            with suppress(httpcore2.WriteError):
                await self.flush()
        return await self.stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109 - httpcore2's API
        self.pending += buffer
        self.write_timeout = timeout
        if len(self.pending) >= self.WRITE_BATCH:
            await self.flush()

    async def flush(self) -> None:
        data = bytes(self.pending)
        self.pending.clear()
        await self.stream.write(data, self.write_timeout)

    async def aclose(self) -> None:
        self.pending.clear()  # a request never read for was abandoned with its connection
        await self.stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore2's API
    ) -> httpcore2.AsyncNetworkStream:
        return SocketStream(await self.stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            return self.socket
        if info == "is_readable":  # readable while idle: the server closed it, and the read would say so
            return self.socket is None or self.socket.fileno() < 0 or bool(self.poller.poll(0))
        return self.stream.get_extra_info(info)


class SocketBackend(httpcore2.AnyIOBackend):
    async def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore2.AsyncNetworkStream:
        return SocketStream(await super().connect_tcp(*args, **kwargs))
