"""How this MCP server checks who calls it, and gets tokens of its own for the APIs behind it.

- `JwtVerifier` validates access tokens locally against the issuer's JWKS.
- `ScopeGate` refuses, with a 403 step-up challenge, a tool call that needs more scope than the token has.
- `TokenExchange` trades the caller's token for one issued for another API (RFC 8693), so that the
  caller's own token never leaves this server.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx2
import structlog
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.mcpserver.exceptions import ToolError
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import Secret
from shared.context import bearer_token
from shared.upstream import Caller, Rejected, Verifier

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
        if not claims.get("active") or claims.get("iss") != self.issuer or claims.get("aud") != self.resource:
            return None
        return access_token(token, claims, self.resource)


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
    """ASGI middleware: answer 403 `insufficient_scope` before a tool that needs more than the token grants.

    The SDK checks one set of scopes for the whole endpoint. A tool that needs
    more must be refused at the HTTP level, with a challenge naming every scope
    the call needs, so that the client can ask the user for them (step-up
    authorization). A refusal from inside the tool would be an HTTP 200 that
    no client treats as a reason to re-authorize.
    """

    def __init__(
        self,
        app: ASGIApp,
        verifier: TokenVerifier,
        resource_metadata: str,
        base_scope: str,
        tool_scopes: dict[str, list[str]],
    ) -> None:
        self.app, self.verifier, self.resource_metadata = app, verifier, resource_metadata
        self.base_scope, self.tool_scopes = base_scope, tool_scopes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/mcp":
            await self.app(scope, receive, send)
            return
        body, replay = await read_body(receive)
        # Parse only a body that can name a guarded tool: most calls need nothing beyond the base scope.
        mentions = any(name.encode() in body for name in self.tool_scopes)
        needed = self.tool_scopes.get(called_tool(body) or "", []) if mentions else []
        token = bearer_token(Headers(scope=scope).get("authorization"))
        access = await self.verifier.verify_token(token.reveal()) if needed and token else None
        if access is not None and not set(needed) <= set(access.scopes):
            wanted = " ".join(dict.fromkeys([self.base_scope, *needed]))
            challenge = (
                f'Bearer error="insufficient_scope", scope="{wanted}", '
                f'resource_metadata="{self.resource_metadata}", error_description="this tool needs {wanted}"'
            )
            response = JSONResponse({"error": "insufficient_scope"}, 403, headers={"WWW-Authenticate": challenge})
            await response(scope, receive, send)
            return
        await self.app(scope, replay, send)


async def read_body(receive: Receive) -> tuple[bytes, Receive]:
    """Read a request body to look at it, and a `receive` that hands it on unchanged."""
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


def called_tool(body: bytes) -> str | None:
    """The tool a JSON-RPC `tools/call` body names, if it is one."""
    try:
        message = json.loads(body)
    except ValueError:
        return None
    if isinstance(message, dict) and message.get("method") == "tools/call":
        name = (message.get("params") or {}).get("name")
        return name if isinstance(name, str) else None
    return None
