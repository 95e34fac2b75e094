"""03-oauth-mcp: an MCP server that only answers callers holding an access token issued for it.

    .venv/bin/python 03-oauth-mcp/authorization_server.py       # first: the authorization server on :9000
    .venv/bin/python 03-oauth-mcp/server.py -t http             # then: this server on http://127.0.0.1:8083/mcp

It checks each bearer token itself, against the authorization server's
published keys (no call to the authorization server per request): the
signature, the issuer, the audience (this server's own URL), the expiry and
the token type. A caller without a valid token gets 401 and a pointer to the
metadata that says where to get one (RFC 9728).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any, cast

import httpx2
import structlog
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact
from mcp.server import MCPServer
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import AnyHttpUrl

from shared import Secret, configure_logging, parse_config
from shared.config import build_parser
from shared.logs import log_requests
from shared.serve import bound_address, build_http_app, listen, mcp_url, run_uvicorn
from shared.tools import add_numbers, echo_message
from shared.upstream import (
    EMBEDDED_ANYTHING,
    EMBEDDED_URL,
    Caller,
    Rejected,
    UpstreamReply,
    Verifier,
    build_upstream_app,
    send_message,
)

DEFAULT_PORT = 8083
DEFAULT_ISSUER = "http://127.0.0.1:9000"
REQUIRED_SCOPE = "mcp:read"
MCP_SERVER_CLIENT_ID = "workshop-mcp-server"  # this server's own client at the authorization server
JWKS_REFETCH_SECONDS = 30  # at most this often, when a token names a key id we do not know

log = structlog.get_logger("oauth-mcp")


class JwtVerifier(TokenVerifier):
    """Validate RFC 9068 JWT access tokens locally, with the issuer's keys from its JWKS endpoint.

    Every check is spelled out, because a JWT library's decode alone checks
    only the signature: an expired token, or one issued for another
    service, would pass.
    """

    def __init__(self, issuer: str, resource: str, jwks_url: str | None = None) -> None:
        self.issuer, self.resource = issuer, resource
        self.jwks_url = jwks_url or f"{issuer}/jwks"
        self.keys: KeySet | None = None
        self.fetched_at = 0.0

    async def key_set(self, kid: str | None) -> KeySet:
        """The cached keys; fetched again when a token names a key id not among them (the issuer rotated)."""
        known = self.keys is not None and any(key.kid == kid for key in self.keys.keys)
        if self.keys is None or (not known and time.monotonic() - self.fetched_at > JWKS_REFETCH_SECONDS):
            async with httpx2.AsyncClient(timeout=httpx2.Timeout(10)) as http:
                response = await http.get(self.jwks_url)
                response.raise_for_status()
            self.keys, self.fetched_at = KeySet.import_key_set(response.json()), time.monotonic()
        return self.keys

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            header = extract_compact(token.encode()).headers()
            if header.get("typ") != "at+jwt":  # not an ID token, not some other JWT
                return None
            decoded = jwt.decode(token, await self.key_set(header.get("kid")), algorithms=["RS256"])
            jwt.JWTClaimsRegistry(
                leeway=30,
                iss={"essential": True, "value": self.issuer},
                aud={"essential": True, "value": self.resource},
                exp={"essential": True},
                sub={"essential": True},
            ).validate(decoded.claims)
        except (JoseError, ValueError, httpx2.HTTPError) as exc:
            log.info("token refused", reason=type(exc).__name__)
            return None
        claims = decoded.claims
        return AccessToken(
            token=token,
            client_id=str(claims.get("client_id", "")),
            scopes=str(claims.get("scope", "")).split(),
            expires_at=int(claims["exp"]),
            resource=self.resource,
            subject=str(claims["sub"]),
            claims=claims,
        )


def verified_token() -> AccessToken:
    token = get_access_token()
    if token is None:
        raise ToolError("no verified token: this server is only served over HTTP with OAuth")
    return token


def who_am_i() -> dict[str, Any]:
    """Tell who the caller is, according to their verified access token."""
    claims = verified_token().claims or {}
    return {key: claims.get(key) for key in ("sub", "client_id", "scope", "aud", "iss", "exp")}


def show_auth_token() -> str:
    """Show a masked hint of the caller's access token (its length and fingerprint), never the token itself."""
    token = Secret(verified_token().token)
    return f"Bearer token of {len(token)} characters, fingerprint {token.fingerprint()}"


class TokenExchange:
    """Trade the caller's token for one the upstream API accepts (RFC 8693), authenticating as this server."""

    def __init__(self, issuer: str, client_id: str, client_secret: str, upstream_resource: str) -> None:
        self.token_endpoint = f"{issuer}/token"
        self.auth = (client_id, client_secret)
        self.upstream_resource = upstream_resource

    async def for_upstream(self, callers_token: str) -> Secret:
        form = {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": callers_token,
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "resource": self.upstream_resource,
        }
        async with httpx2.AsyncClient(timeout=httpx2.Timeout(30)) as http:
            response = await http.post(self.token_endpoint, data=form, auth=self.auth)
        if response.status_code != 200:
            raise ToolError(f"the authorization server refused the token exchange: {response.json().get('error')}")
        return Secret(response.json()["access_token"])


def upstream_verifier(issuer: str, upstream_resource: str) -> Verifier:
    """How the embedded upstream API checks tokens: issued by our authorization server, for the upstream."""
    verifier = JwtVerifier(issuer, upstream_resource)

    async def verify(token: str) -> Caller:
        checked = await verifier.verify_token(token)
        if checked is None:
            raise Rejected(f"not a valid access token for {upstream_resource}")
        actor = (checked.claims or {}).get("act") or {}
        return Caller(str(checked.subject), checked.client_id, actor.get("sub"))

    return verify


def create_server(
    issuer: str, resource: str, exchange: TokenExchange | None = None, upstream_url: str = EMBEDDED_ANYTHING
) -> MCPServer[Any]:
    """The MCP server for one canonical URL: the audience its tokens must carry."""
    mcp: MCPServer[Any] = MCPServer(
        "oauth-mcp",
        instructions="Tells you who you are, according to your OAuth access token.",
        middleware=[log_requests],
        token_verifier=JwtVerifier(issuer, resource),
        auth=AuthSettings(
            # Plain strings, on purpose: a URL object would add a trailing slash that clients then reject.
            issuer_url=cast(AnyHttpUrl, issuer),
            resource_server_url=cast(AnyHttpUrl, resource),
            required_scopes=[REQUIRED_SCOPE],
            validate_token_resource=True,
        ),
    )
    for tool in (who_am_i, show_auth_token, echo_message, add_numbers):
        mcp.add_tool(tool)
    upstream_app = build_upstream_app(
        upstream_verifier(issuer, exchange.upstream_resource if exchange else EMBEDDED_URL)
    )

    @mcp.tool()
    async def make_authenticated_request(message: str) -> UpstreamReply:
        """Send a message to the upstream API on the caller's behalf and report what the upstream saw."""
        caller = verified_token()
        if exchange is None:
            raise ToolError("token exchange is not configured: set MCP_SERVER_CLIENT_SECRET for this server")
        # The caller's token was issued for this server, and it stays here. The upstream gets a token
        # minted for it by the authorization server: the caller as subject, this server as actor.
        upstream_token = await exchange.for_upstream(caller.token)
        return await send_message(upstream_url, upstream_app, upstream_token, message, "token-exchange")

    return mcp


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
    mcp = create_server(issuer, resource, exchange, args.upstream_url)
    run_uvicorn(build_http_app(mcp, config), sock, config, resource)


if __name__ == "__main__":
    main()
