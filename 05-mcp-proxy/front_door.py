"""The HTTP doors around /mcp: who may call (the front door's tokens), from which host, and `/readyz`."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from proxy import Proxy
from proxy_config import ProxyConfig
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from shared import MCP_PATH, bearer_token

SCOPE_KEY = "mcp_proxy.servers"  # where the front door leaves which backends the caller's token opens


def opened(request: Request | Scope | None) -> frozenset[str] | None:
    """Which backends the caller's token opens (None: all of them), as the front door left it in the request."""
    scope = request.scope if isinstance(request, Request) else request or {}
    allowed: frozenset[str] | None = scope.get("state", {}).get(SCOPE_KEY)
    return allowed


class FrontDoor:
    """ASGI middleware: with `authTokens` configured, /mcp answers only callers presenting one of them.

    Compared in constant time, so the answer's timing says nothing about how
    much of a guess was right. A token may open only some backends; which,
    is left in the request scope for the handlers. The tokens open the proxy
    only: they are never passed on to a backend.
    """

    def __init__(self, app: ASGIApp, proxy_config: Callable[[], ProxyConfig]) -> None:
        self.app, self.proxy_config = app, proxy_config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tokens = self.proxy_config().auth_tokens
        if scope["type"] == "http" and scope["path"].startswith("/mcp") and tokens:
            offered = bearer_token(Headers(scope=scope).get("authorization"))
            presented = offered.reveal().encode() if offered else b""
            opens: frozenset[str] | bool | None = False
            for token, servers in tokens:  # every token is compared, so timing does not tell which matched
                if hmac.compare_digest(presented, token.encode()):
                    opens = servers
            if opens is False:
                refusal = JSONResponse({"error": "invalid_token"}, 401, headers={"WWW-Authenticate": "Bearer"})
                await refusal(scope, receive, send)
                return
            scope.setdefault("state", {})[SCOPE_KEY] = opens
        await self.app(scope, receive, send)


class HostGuard:
    """ASGI middleware: DNS-rebinding protection on every route, not only /mcp (which the SDK guards itself).

    `/readyz` and `/metrics` tell which backends run, their pids and their
    errors; a web page the user visits must not read them through a rebound
    name. Same allowed hosts and origins as /mcp, checked by the SDK's code.
    """

    def __init__(self, app: ASGIApp, security: TransportSecuritySettings) -> None:
        self.app, self.guard = app, TransportSecurityMiddleware(security)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(MCP_PATH):
            refusal = await self.guard.validate_request(Request(scope))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def readiness(running: Callable[[], Proxy | None]) -> Callable[[Request], Awaitable[JSONResponse]]:
    """`/readyz`: each backend's state, last error and tool count; 503 while a required backend is not up."""

    async def readyz(_request: Request) -> JSONResponse:
        proxy = running()
        if proxy is None:
            return JSONResponse({"ready": False, "backends": {}}, status_code=503)
        backends = {name: c.health() for name, c in proxy.connections.items()}
        required = [c for c in proxy.connections.values() if c.backend.required]
        conflicts = proxy.catalogue.conflicts
        ready = bool(backends) and all(c.state == "up" for c in required) and not conflicts
        quarantined = sorted(proxy.catalogue.quarantined)
        body = {"ready": ready, "backends": backends, "quarantined": quarantined, "clashes": conflicts}
        return JSONResponse(body, status_code=200 if ready else 503)

    return readyz
