"""03-oauth-mcp: an MCP server that only answers callers holding an access token issued for it.

    .venv/bin/python 03-oauth-mcp/authorization_server.py       # first: the stand-in identity provider on :9000
    .venv/bin/python 03-oauth-mcp/server.py -t http             # then: this server on http://127.0.0.1:8083/mcp

It checks each bearer token itself, against the authorization server's
published keys (no call to the authorization server per request): the
signature, the issuer, the audience (this server's own URL), the expiry and
the token type. A caller without a valid token gets 401 and a pointer to the
metadata that says where to get one (RFC 9728).

The tools below are plain MCP tools, as in 01; what makes this server
"protected" is `protected_app()`, which puts the token checks in front of
them when the server is served over HTTP.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import httpx2
import structlog
from mcp.server import MCPServer
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.mcpserver.exceptions import ToolError
from resource_auth import (
    IntrospectionVerifier,
    JwtVerifier,
    ScopeGate,
    TokenExchange,
    authentication,
    resource_metadata_routes,
    tool_scope_check,
    upstream_verifier,
)
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from shared import (
    EMBEDDED_ANYTHING,
    EMBEDDED_URL,
    Secret,
    ServerConfig,
    UpstreamReply,
    add_numbers,
    bound_address,
    build_http_app,
    build_parser,
    build_upstream_app,
    configure_logging,
    echo_message,
    listen,
    log_requests,
    mcp_url,
    parse_config,
    project_version,
    refuse_unknown_tools,
    run_uvicorn,
    send_message,
)

DEFAULT_PORT = 8083
DEFAULT_ISSUER = "http://127.0.0.1:9000"
REQUIRED_SCOPE = "mcp:read"
TOOL_SCOPES = {"list_oauth_clients": ["mcp:admin"]}  # what a tool needs beyond REQUIRED_SCOPE
MCP_SERVER_CLIENT_ID = "workshop-mcp-server"  # this server's own client at the authorization server

log = structlog.get_logger("oauth-mcp")

mcp = MCPServer(
    "oauth-mcp",
    version=project_version(),
    instructions="Tells you who you are, according to your OAuth access token.",
    # tool_scope_check refuses a call to a tool the token has too little scope for (see TOOL_SCOPES).
    middleware=[log_requests, tool_scope_check(TOOL_SCOPES)],
)
refuse_unknown_tools(mcp)
mcp.add_tool(echo_message)
mcp.add_tool(add_numbers)


def verified_token() -> AccessToken:
    """The caller's access token, as checked before the request reached the tool (the SDK keeps it per request)."""
    token = get_access_token()
    if token is None:
        raise ToolError("no verified token: this server is only served over HTTP with OAuth")
    return token


@mcp.tool()
def who_am_i() -> dict[str, Any]:
    """Tell who the caller is, according to their verified access token."""
    claims = verified_token().claims or {}
    return {key: claims.get(key) for key in ("sub", "client_id", "scope", "aud", "iss", "exp")}


@mcp.tool()
def show_auth_token() -> str:
    """Show a masked hint of the caller's access token (its length and fingerprint), never the token itself."""
    token = Secret(verified_token().token)
    return f"Bearer token of {len(token)} characters, fingerprint {token.fingerprint()}"


@dataclass(frozen=True)
class Upstream:
    """What the two tools that call other services need; fixed when the server starts."""

    issuer: str  # the authorization server, which also lists its clients
    exchange: TokenExchange | None  # None: this server has no secret of its own, so it cannot get tokens
    url: str  # the API make_authenticated_request calls
    embedded: Starlette  # the API served in-process when `url` is EMBEDDED_ANYTHING


# Handed to each request by `protected_app()`, the way the SDK hands it the caller's token.
UPSTREAM: ContextVar[Upstream | None] = ContextVar("upstream", default=None)


def upstream_exchange() -> tuple[Upstream, TokenExchange]:
    """The upstream, and how to get tokens for it; a tool error if this server was started without a secret."""
    upstream = UPSTREAM.get()
    if upstream is None or upstream.exchange is None:
        raise ToolError("token exchange is not configured: set MCP_SERVER_CLIENT_SECRET for this server")
    return upstream, upstream.exchange


@mcp.tool()
async def make_authenticated_request(message: str) -> UpstreamReply:
    """Send a message to the upstream API on the caller's behalf and report what the upstream saw."""
    caller = verified_token()
    upstream, exchange = upstream_exchange()
    # The caller's token was issued for this server, and it stays here. The upstream gets a token
    # minted for it by the authorization server: the caller as subject, this server as actor.
    upstream_token = await exchange.for_resource(caller.token, exchange.upstream_resource)
    return await send_message(upstream.url, upstream.embedded, upstream_token, message, "token-exchange")


@mcp.tool()
async def list_oauth_clients() -> list[dict[str, Any]]:
    """List the OAuth clients registered at the authorization server (needs the mcp:admin scope)."""
    # ScopeGate has already refused callers without mcp:admin, with a 403 their client can act on.
    caller = verified_token()
    upstream, exchange = upstream_exchange()
    admin_token = await exchange.for_resource(caller.token, f"{upstream.issuer}/admin")
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(30)) as http:
        response = await http.get(
            f"{upstream.issuer}/admin/clients", headers={"Authorization": f"Bearer {admin_token.reveal()}"}
        )
    if response.status_code != 200:
        raise ToolError(f"the authorization server refused the listing (HTTP {response.status_code})")
    return [
        {"client_id": c["client_id"], "client_name": c["client_name"], "grant_types": c["grant_types"]}
        for c in response.json()["clients"]
    ]


def with_upstream(app: ASGIApp, upstream: Upstream) -> ASGIApp:
    """ASGI middleware: put `upstream` in reach of the tools for every request."""

    async def call(scope: Scope, receive: Receive, send: Send) -> None:
        UPSTREAM.set(upstream)  # each request runs in a context of its own: nothing leaks to the next
        await app(scope, receive, send)

    return call


def protected_app(
    config: ServerConfig, issuer: str, resource: str, verifier: TokenVerifier, upstream: Upstream
) -> Starlette:
    """`mcp` over HTTP, for callers holding a token issued for `resource` by `issuer`.

    In front of `/mcp`, outermost first: the SDK's own authentication, which
    checks the token once and keeps it where `get_access_token()` finds it
    (and binds each session to its caller), then `ScopeGate` (401 without a
    valid token, 403 with a step-up challenge for too little scope). Beside
    it, the protected resource metadata that tells clients where to get a
    token.
    """
    gate = Middleware(
        ScopeGate,
        resource_metadata=resource.replace("/mcp", "/.well-known/oauth-protected-resource/mcp"),
        base_scope=REQUIRED_SCOPE,
        tool_scopes=TOOL_SCOPES,
    )
    return build_http_app(
        mcp,
        config,
        routes=resource_metadata_routes(resource, issuer, [REQUIRED_SCOPE]),
        middleware=[*authentication(verifier, resource), gate, Middleware(with_upstream, upstream=upstream)],
    )


def warn_if_unreachable(issuer: str) -> None:
    """Say so at start if the authorization server is not up: every caller would be refused, and clients fail."""
    try:
        reachable = httpx2.get(f"{issuer}/.well-known/oauth-authorization-server", timeout=2).status_code == 200
    except httpx2.TransportError:
        reachable = False
    if not reachable:
        log.warning(
            "cannot reach the authorization server: no caller can get a token until it runs "
            "(start .venv/bin/python 03-oauth-mcp/authorization_server.py)",
            issuer=issuer,
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser(__doc__, DEFAULT_PORT)
    parser.add_argument(
        "--upstream-url",
        default=os.environ.get("UPSTREAM_URL", EMBEDDED_ANYTHING),
        help="the API make_authenticated_request calls (default: the embedded one; env UPSTREAM_URL)",
    )
    parser.add_argument(
        "--upstream-resource",
        default=os.environ.get("UPSTREAM_RESOURCE", EMBEDDED_URL),
        help=f"that API's resource identifier at the authorization server (default: {EMBEDDED_URL})",
    )
    parser.add_argument(
        "--introspect",
        action="store_true",
        help="ask the authorization server about every token (revocation takes effect at once) "
        "instead of checking JWTs locally; needs MCP_SERVER_CLIENT_SECRET",
    )
    parser.add_argument(
        "--issuer",
        default=os.environ.get("OAUTH_ISSUER", DEFAULT_ISSUER),
        help=f"the authorization server whose tokens to accept (default: {DEFAULT_ISSUER}; env OAUTH_ISSUER)",
    )
    config, args = parse_config(argv, default_port=DEFAULT_PORT, parser=parser)
    if config.transport != "http":
        parser.error(
            "OAuth protects HTTP endpoints; a stdio server takes its credentials from the environment (see 02)"
        )
    configure_logging(config.log_level, config.log_format)
    sock = listen(config.addr)
    resource = mcp_url(bound_address(sock, config))  # this server's canonical URL, the audience of its tokens
    issuer = args.issuer.rstrip("/")
    secret = os.environ.get("MCP_SERVER_CLIENT_SECRET")
    exchange = TokenExchange(issuer, MCP_SERVER_CLIENT_ID, secret, args.upstream_resource) if secret else None
    verifier: TokenVerifier = JwtVerifier(issuer, resource)
    if args.introspect:
        if not secret:
            parser.error("--introspect authenticates to the authorization server: set MCP_SERVER_CLIENT_SECRET")
        verifier = IntrospectionVerifier(issuer, resource, MCP_SERVER_CLIENT_ID, secret)
    embedded = build_upstream_app(upstream_verifier(issuer, args.upstream_resource))
    upstream = Upstream(issuer, exchange, args.upstream_url, embedded)
    app = protected_app(config, issuer, resource, verifier, upstream)
    warn_if_unreachable(issuer)
    run_uvicorn(app, sock, config, resource)


if __name__ == "__main__":
    main()
