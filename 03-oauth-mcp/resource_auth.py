"""How this MCP server checks who calls it, and gets tokens of its own for the APIs behind it.

- `JwtVerifier` validates access tokens locally against the issuer's JWKS.
- `ScopeGate` refuses a request without a valid token before reading its body, caps the body, and
  refuses, with a 403 step-up challenge, a tool call that needs more scope than the token has.
- `tool_scope_check` refuses the same calls again where the SDK dispatches them, whatever the gate parsed.
- `authentication` and `resource_metadata_routes` are the SDK's own pieces, wired as the SDK wires them
  when a server is built with `auth=`: here they are added when the server is served, not when it is built.
- `TokenExchange` trades the caller's token for one issued for another API (RFC 8693), so that the
  caller's own token never leaves this server.
"""

from __future__ import annotations

import json
import time
from functools import partial
from typing import Any, cast

import httpx2
import pydantic_core
import structlog
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact
from mcp import MCPError
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware, get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, BearerAuthBackend
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.routes import create_protected_resource_routes
from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE, RequestBodyLimitMiddleware
from mcp.shared.inbound import MCP_NAME_HEADER, decode_header_value
from mcp_types import INVALID_REQUEST
from pydantic import AnyHttpUrl
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import MCP_PATH, Caller, Rejected, Secret, Verifier

JWKS_REFETCH_SECONDS = 5  # at most this often, when a token names a key id we do not know
VERIFIED_CACHE_SIZE = 1024  # tokens remembered as valid until they expire

log = structlog.get_logger("oauth-mcp")


def access_token(token: str, claims: dict[str, Any], resource: str) -> AccessToken:
    """What the SDK needs to know of a verified token (it binds sessions to client, issuer and subject)."""
    return AccessToken(
        token=token,
        client_id=str(claims.get("client_id", "")),
        scopes=str(claims.get("scope", "")).split(),
        expires_at=int(claims["exp"]),
        resource=resource,
        subject=str(claims.get("sub")),
        claims=claims,
    )


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
        self.verified: dict[str, AccessToken] = {}

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
        # A client sends the same token with every request until it expires: check each token once,
        # then answer from memory until its `exp`. (Revocation needs --introspect either way.)
        remembered = self.verified.get(token)
        if remembered is not None and (remembered.expires_at or 0) > time.time():
            return remembered
        checked = await self.check(token)
        if checked is not None:
            if len(self.verified) >= VERIFIED_CACHE_SIZE:
                self.verified.pop(next(iter(self.verified)))  # the oldest goes first
            self.verified[token] = checked
        return checked

    async def check(self, token: str) -> AccessToken | None:
        try:
            # lab 03-audience: begin, starter: decoded = jwt.decode(token, await self.key_set(None), ["RS256"])
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
            # lab 03-audience: end
        except (JoseError, ValueError, httpx2.HTTPError) as exc:
            log.info("token refused", reason=type(exc).__name__)
            return None
        return access_token(token, decoded.claims, self.resource)


class IntrospectionVerifier(TokenVerifier):
    """Ask the authorization server about every token (RFC 7662).

    One more request per call than `JwtVerifier`, and in return a revoked
    token stops working at once instead of at its expiry.
    """

    def __init__(self, issuer: str, resource: str, client_id: str, client_secret: str) -> None:
        self.issuer, self.resource, self.auth = issuer, resource, (client_id, client_secret)

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            async with httpx2.AsyncClient(timeout=httpx2.Timeout(10)) as http:
                response = await http.post(f"{self.issuer}/introspect", data={"token": token}, auth=self.auth)
            claims = response.json() if response.status_code == 200 else {}
        except (httpx2.HTTPError, ValueError) as exc:
            log.warning("introspection failed", reason=type(exc).__name__)
            return None
        # lab 03-audience: begin, starter: ours = claims.get("iss") == self.issuer
        ours = claims.get("iss") == self.issuer and claims.get("aud") == self.resource
        # lab 03-audience: end
        if not claims.get("active") or not ours:  # an inactive token's answer carries nothing else
            return None
        return access_token(token, claims, self.resource)


def authentication(verifier: TokenVerifier, resource: str) -> list[Middleware]:
    """The SDK's token check: the verified token where `get_access_token()` finds it, and sessions bound to it.

    A token whose `resource` is not this server's is no token at all here (the
    SDK's `validate_token_resource`).
    """
    backend = BearerAuthBackend(verifier, resource_server_url=cast(AnyHttpUrl, resource))
    return [Middleware(AuthenticationMiddleware, backend=backend), Middleware(AuthContextMiddleware)]


def resource_metadata_routes(resource: str, issuer: str, scopes: list[str]) -> list[Route]:
    """RFC 9728 protected resource metadata: which authorization server issues tokens for this server."""
    # Plain strings, on purpose: a URL object would add a trailing slash that clients then reject.
    return create_protected_resource_routes(
        resource_url=cast(AnyHttpUrl, resource),
        authorization_servers=[cast(AnyHttpUrl, issuer)],
        scopes_supported=scopes,
    )


class TokenExchange:
    """Trade the caller's token for one another API accepts (RFC 8693), authenticating as this server."""

    def __init__(self, issuer: str, client_id: str, client_secret: str, upstream_resource: str) -> None:
        self.issuer = issuer
        self.auth = (client_id, client_secret)
        self.upstream_resource = upstream_resource

    async def for_resource(self, callers_token: str, resource: str) -> Secret:
        form = {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": callers_token,
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "resource": resource,
        }
        async with httpx2.AsyncClient(timeout=httpx2.Timeout(30)) as http:
            response = await http.post(f"{self.issuer}/token", data=form, auth=self.auth)
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


class ScopeGate:
    """ASGI middleware in front of `/mcp`: who may send a request, how large it may be, which tools it may call.

    - A request without a valid token is refused from its headers alone,
      before a byte of its body is read: an anonymous caller must not make
      this server hold a body of any size.
    - A body larger than `max_body` is refused (413) before it is read whole, by the SDK's
      `RequestBodyLimitMiddleware`, which this gate puts behind its token check.
    - The SDK checks one set of scopes for the whole endpoint. A tool that needs
      more must be refused at the HTTP level, with a challenge naming every
      scope the call needs, so that the client can ask the user for them
      (step-up authorization). A refusal from inside the tool would be an HTTP
      200 that no client treats as a reason to re-authorize.

    The token is checked once, by the SDK's own authentication in front of
    this gate (`authentication()`); the gate reads its answer, so the two
    cannot disagree about who the caller is.
    """

    def __init__(
        self,
        app: ASGIApp,
        resource_metadata: str,
        base_scope: str,
        tool_scopes: dict[str, list[str]],
        max_body: int = DEFAULT_MAX_REQUEST_BODY_SIZE,  # the SDK's own limit
    ) -> None:
        self.app, self.resource_metadata, self.max_body = app, resource_metadata, max_body
        self.base_scope, self.tool_scopes = base_scope, tool_scopes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != MCP_PATH:
            await self.app(scope, receive, send)
            return
        refusal, granted = self.authenticate(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
        elif scope["method"] == "POST":
            # Only now, for a caller we know, is the body read: capped by the SDK's own middleware.
            scope_check = partial(self.check_scopes, granted)
            await RequestBodyLimitMiddleware(scope_check, self.max_body)(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def authenticate(self, scope: Scope) -> tuple[Response | None, set[str]]:
        """A refusal from the headers alone, or the scopes the caller's token grants."""
        authorization = Headers(scope=scope).get("authorization", "")
        if not authorization.lower().startswith("bearer "):
            # RFC 6750 section 3.1: a request without credentials gets no error code, only how to get some.
            return self.challenge(401, None, [self.base_scope], "an access token is required"), set()
        user = scope.get("user")  # what the SDK's authentication, in front, made of the token
        if not isinstance(user, AuthenticatedUser):
            return self.challenge(401, "invalid_token", [self.base_scope], "the access token is not valid here"), set()
        granted = set(user.scopes)
        if self.base_scope not in granted:
            needs = f"this server needs {self.base_scope}"
            return self.challenge(403, "insufficient_scope", [self.base_scope], needs), granted
        return None, granted

    async def check_scopes(self, granted: set[str], scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse a body that calls a tool needing more than `granted`; hand any other on unchanged."""
        body, replay = await read_body(receive)
        # An `Mcp-Name` header that names another tool than the body can only ask for more scope, never less.
        named = {decode_header_value(value) or value for value in Headers(scope=scope).getlist(MCP_NAME_HEADER)}
        needed = [s for name in sorted(called_tools(body) | named) for s in self.tool_scopes.get(name, [])]
        # lab 03-audience: begin
        if not set(needed) <= granted:
            wanted = list(dict.fromkeys([self.base_scope, *needed]))
            refusal = self.challenge(403, "insufficient_scope", wanted, f"this tool needs {' '.join(wanted)}")
            await refusal(scope, replay, send)
            return
        # lab 03-audience: end
        await self.app(scope, replay, send)

    def challenge(self, status: int, error: str | None, scopes: list[str], description: str) -> Response:
        """A `WWW-Authenticate: Bearer` challenge that names the scope needed (MCP authorization: SHOULD)."""
        params = [f'error="{error}"'] if error else []
        params += [f'scope="{" ".join(scopes)}"', f'resource_metadata="{self.resource_metadata}"']
        if error:
            params.append(f'error_description="{description}"')
        body = {"error": error, "error_description": description} if error else {"error_description": description}
        return JSONResponse(body, status, headers={"WWW-Authenticate": "Bearer " + ", ".join(params)})


async def read_body(receive: Receive) -> tuple[bytes, Receive]:
    """Read a request body to look at it, and a `receive` that hands it on unchanged.

    Its size is already capped by the `RequestBodyLimitMiddleware` in front.
    """
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body, sent = b"".join(chunks), False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # after the body: a disconnect, when it comes
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return body, replay


def called_tools(body: bytes) -> set[str]:
    """Every tool name the SDK could dispatch this body to.

    The SDK parses a 2025-11-25 body with pydantic's JSON parser and a
    2026-07-28 body with `json`: both decode escapes and keep the last of
    duplicate keys, and both are asked here, so that no spelling of a name
    reads one way in this gate and another in the SDK.
    """
    names: set[str] = set()
    for parse in (pydantic_core.from_json, json.loads):
        try:
            parsed = parse(body)
        except (ValueError, RecursionError):
            continue
        for message in parsed if isinstance(parsed, list) else [parsed]:
            if not isinstance(message, dict) or message.get("method") != "tools/call":
                continue
            params = message.get("params")
            name = params.get("name") if isinstance(params, dict) else None
            if isinstance(name, str):
                names.add(name)
    return names


def tool_scope_check(tool_scopes: dict[str, list[str]]) -> ServerMiddleware[Any]:
    """MCP middleware: refuse a tool call the token has too little scope for, on the very name the SDK dispatches.

    `ScopeGate` answers first, with the 403 a client can act on; this is the
    decision that holds even if the gate ever read a body differently.
    """

    async def require_tool_scopes(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        name = ctx.params.get("name") if ctx.method == "tools/call" and isinstance(ctx.params, dict) else None
        needed = tool_scopes.get(name, []) if isinstance(name, str) else []
        token = get_access_token()
        if needed and not set(needed) <= set(token.scopes if token else []):
            raise MCPError(code=INVALID_REQUEST, message=f"{name} needs the scope {' '.join(needed)}")
        return await call_next(ctx)

    return require_tool_scopes
