"""Per-request context: a request id for the logs and the caller's credential for tools.

Both live in contextvars. The transport sets them once per HTTP request (see
`RequestContextMiddleware`), and the SDK runs each tool call inside a copy of
the context of the request that carried it, sync tools on worker threads
included. So a tool reads *its own* caller's values, never a neighbour's, and
nothing it sets leaks into the next request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from contextvars import ContextVar

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class Secret:
    """A credential that will not print itself.

    `repr()` and `str()` are masked, so a token that ends up in a log call, an
    f-string or a traceback shows up as `**********`. Call `reveal()` at the
    one place that must send the real value.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def fingerprint(self) -> str:
        """A short, non-reversible id: enough to tell two tokens apart in a log."""
        return "sha256:" + hashlib.sha256(self._value.encode()).hexdigest()[:12]

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
caller_token: ContextVar[Secret | None] = ContextVar("caller_token", default=None)


def bearer_token(authorization: str | None) -> Secret | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return Secret(token.strip())


def new_request_id() -> str:
    return secrets.token_hex(8)  # 16 hex digits, as short as a log line wants and still unique enough


class RequestContextMiddleware:
    """ASGI middleware: give each HTTP request an id and carry its bearer token.

    A caller may send its own `X-Request-Id` (handy to follow one call across
    services); anything that is not a short safe string is replaced, since it
    ends up in every log line. The id is echoed in the response.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        offered = headers.get(REQUEST_ID_HEADER, "")
        rid = offered if _SAFE_REQUEST_ID.fullmatch(offered) else new_request_id()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = rid
            await send(message)

        rid_token = request_id.set(rid)
        tok_token = caller_token.set(bearer_token(headers.get("authorization")))
        try:
            with structlog.contextvars.bound_contextvars(request_id=rid):
                await self.app(scope, receive, send_with_id)
        finally:
            caller_token.reset(tok_token)
            request_id.reset(rid_token)
