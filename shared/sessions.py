"""A share of the 2025-11-25 session table per client address.

The SDK keeps at most `max_sessions` stateful sessions and answers 503 to
every new one beyond that, until idle ones are reaped (30 minutes). Opening
a session costs one unauthenticated `initialize`, so a single client could
fill the table and lock everyone else out. This middleware, in front of the
SDK's app, lets one address hold at most a tenth of it.

It keeps its own account of the sessions the SDK opened, by watching the
traffic (the SDK has no hook for sessions opening or ending): a session
opens when an answer carries a new `Mcp-Session-Id`, and ends when it is
deleted, answers 404, or has had no request in flight for the same idle
timeout the SDK reaps it after. Seeing a request end a moment after the SDK
does, it never counts fewer sessions than the SDK holds.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SHARE_PER_ADDRESS = 10  # one address may hold 1/SHARE_PER_ADDRESS of the table
# A real client follows its initialize with `notifications/initialized` at once; a session that sent
# nothing more for this long is ended when its place is wanted.
HALF_OPEN_SECONDS = 10.0
KEPT_HEADERS = frozenset({b"host", b"authorization", b"mcp-protocol-version"})
SWEEP_SECONDS = 60.0


@dataclass
class Session:
    address: str
    opening: Scope  # the request that opened it, to end it the way its own client would
    opened_at: float
    in_flight: int = 1
    idle_since: float = 0.0
    used: bool = False  # sent something after its initialize


class SessionQuota:
    """Refuse a new 2025-11-25 session to an address that already holds its share of the table."""

    def __init__(self, app: ASGIApp, path: str, max_sessions: int, idle_timeout: float) -> None:
        self.app, self.path = app, path
        self.max_sessions = max_sessions
        self.per_address = max(1, max_sessions // SHARE_PER_ADDRESS)
        self.idle_timeout = idle_timeout
        self.sessions: dict[str, Session] = {}
        self.by_address: dict[str, set[str]] = defaultdict(set)
        self.opening: dict[str, int] = defaultdict(int)  # admitted requests not yet answered, per address
        self.last_sweep = time.monotonic()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        session_id = headers.get("mcp-session-id")
        if session_id is not None:
            await self.within_session(session_id, scope, receive, send)
        elif scope["method"] == "POST" and opens_session(headers):
            await self.opening_session(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def opening_session(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        address = client[0] if client else ""
        if self.full(address):
            await self.end_half_open(address)
        if self.full(address):
            refusal = {"jsonrpc": "2.0", "id": None, "error": {"code": -32603, "message": "Too many open sessions"}}
            await JSONResponse(refusal, status_code=503, headers={"Retry-After": "60"})(scope, receive, send)
            return
        opened: list[str] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400:
                session_id = Headers(raw=message["headers"]).get("mcp-session-id")
                if session_id is not None:
                    self.sessions[session_id] = Session(address, scope, time.monotonic())
                    self.by_address[address].add(session_id)
                    opened.append(session_id)
                    self.unreserve(address)  # the reservation is now a session
            await send(message)

        self.opening[address] += 1
        try:
            await self.app(scope, receive, watch)
        finally:
            if not opened:
                self.unreserve(address)
            for session_id in opened:
                self.finished(session_id)

    def unreserve(self, address: str) -> None:
        self.opening[address] -= 1
        if not self.opening[address]:
            del self.opening[address]

    async def within_session(self, session_id: str, scope: Scope, receive: Receive, send: Send) -> None:
        session = self.sessions.get(session_id)
        if session is None:
            await self.app(scope, receive, send)
            return
        status = 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        session.in_flight += 1
        session.used = True
        try:
            await self.app(scope, receive, watch)
        finally:
            self.finished(session_id)
            if status == 404 or (scope["method"] == "DELETE" and 200 <= status < 300):
                self.forget(session_id)

    def finished(self, session_id: str) -> None:
        session = self.sessions.get(session_id)
        if session is not None:
            session.in_flight -= 1
            session.idle_since = time.monotonic()

    def full(self, address: str) -> bool:
        """Whether a new session for `address` would pass its share, or the whole table."""
        opening = sum(self.opening.values())
        return self.held_by(address) >= self.per_address or len(self.sessions) + opening >= self.max_sessions

    async def end_half_open(self, address: str) -> None:
        """End the sessions, of `address` if it holds its share (else of anyone), that never went past initialize.

        Each gets the DELETE its client could have sent, with the credential
        that opened it, so the SDK frees its place too.
        """
        now = time.monotonic()
        at_share = self.held_by(address) >= self.per_address
        candidates = list(self.by_address.get(address, ()) if at_share else self.sessions)
        for session_id in candidates:
            session = self.sessions.get(session_id)
            if session is None or session.used or session.in_flight or now - session.opened_at < HALF_OPEN_SECONDS:
                continue
            self.forget(session_id)
            headers = [(k, v) for k, v in session.opening["headers"] if k in KEPT_HEADERS]
            headers.append((b"mcp-session-id", session_id.encode()))
            delete = {**session.opening, "method": "DELETE", "headers": headers}
            await self.app(delete, no_body, discard)

    def held_by(self, address: str) -> int:
        """Sessions `address` holds or is opening, after forgetting those the SDK has reaped by now."""
        now = time.monotonic()
        sweep = self.sessions if now - self.last_sweep > SWEEP_SECONDS else self.by_address.get(address, ())
        if sweep is self.sessions:
            self.last_sweep = now
        for session_id in [sid for sid in sweep if self.expired(self.sessions[sid], now)]:
            self.forget(session_id)
        return len(self.by_address.get(address, ())) + self.opening.get(address, 0)

    def forget(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is not None:
            held = self.by_address[session.address]
            held.discard(session_id)
            if not held:
                del self.by_address[session.address]

    def expired(self, session: Session, now: float) -> bool:
        return session.in_flight == 0 and now - session.idle_since >= self.idle_timeout


def opens_session(headers: Headers) -> bool:
    """Whether the SDK treats a request without a session id as a 2025-11-25 one, which may open a session."""
    version = headers.get("mcp-protocol-version")
    return version is None or version in HANDSHAKE_PROTOCOL_VERSIONS


async def no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def discard(_message: Message) -> None:
    """Where the answer to a DELETE the quota sent itself goes."""
