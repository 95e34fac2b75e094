"""Graceful shutdown over HTTP: answer the calls in flight first, then end the streams that never end.

The SDK writes its SSE responses with sse-starlette, which by default ends
*every* open SSE response within half a second of uvicorn being told to stop.
That suits the standalone GET stream of a 2025-11-25 session, which never
ends by itself and would otherwise hold uvicorn for the whole grace period.
But the POST stream a running tool call answers on is an SSE response too:
ended early, the call's result has nowhere to go, uvicorn sees no open
connection left, and the session manager's shutdown cancels the call
(`shutdown error response ... gave up`). MCP Inspector and the SDK client
both hit it on any 2025-11-25 session.

So the servers end those streams by hand: `InFlight` counts the requests that
end by themselves (everything but a GET of the MCP endpoint), and once none
is left, `end_streams_when_answered` raises sse-starlette's own flag to end
the rest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import anyio
from sse_starlette.sse import AppStatus
from starlette.types import ASGIApp, Receive, Scope, Send


class InFlight:
    """How many requests that end by themselves are running, and a way to wait until none is."""

    def __init__(self) -> None:
        self.count = 0
        self._idle: anyio.Event | None = None

    def started(self) -> None:
        self.count += 1

    def finished(self) -> None:
        self.count -= 1
        if not self.count and self._idle is not None:
            self._idle.set()

    async def wait_until_idle(self) -> None:
        while self.count:
            self._idle = anyio.Event()
            await self._idle.wait()

    async def end_streams_when_answered(self) -> None:
        """Wait for the running requests to send their answers, then end every open SSE stream."""
        await self.wait_until_idle()
        AppStatus.should_exit = True  # sse-starlette's signal: each open SSE response ends within half a second


class CountRequests:
    """ASGI middleware: every HTTP request but a GET of the MCP endpoint (a stream that never ends) is counted."""

    def __init__(self, app: ASGIApp, in_flight: InFlight, stream_path: str) -> None:
        self.app, self.in_flight, self.stream_path = app, in_flight, stream_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"] == "GET" and scope["path"] == self.stream_path):
            await self.app(scope, receive, send)
            return
        self.in_flight.started()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight.finished()


@contextlib.contextmanager
def streams_ended_by_hand() -> Iterator[None]:
    """While a server runs, sse-starlette ends its streams only when told; its state is put back afterwards."""
    saved = AppStatus.enable_automatic_graceful_drain, AppStatus.should_exit
    AppStatus.enable_automatic_graceful_drain = False  # what its (untyped) disable_automatic_graceful_drain() sets
    try:
        yield
    finally:
        AppStatus.enable_automatic_graceful_drain, AppStatus.should_exit = saved
