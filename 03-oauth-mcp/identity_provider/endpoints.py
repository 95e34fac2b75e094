"""The authorization server's endpoints, except the sign-in page: what clients and servers call.

- /.well-known/oauth-authorization-server and /jwks: where to go, and the keys tokens are signed with.
- /register: dynamic client registration (RFC 7591), for clients not known by a metadata document URL.
- /token: codes, refresh tokens, client credentials and token exchange, through authlib.
- /introspect and /revoke (RFC 7662, RFC 7009), and /admin/clients, the small API that
  `list_oauth_clients` in server.py reads with an exchanged token.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Sequence

import anyio
import structlog
from authlib.oauth2.base import OAuth2Error
from mcp.server.transport_security import RequestBodyLimitMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from identity_provider.checks import (
    RateLimit,
    basic_credentials,
    invalid_request,
    repeated_parameter,
    too_many,
    unusable_client_metadata,
)
from identity_provider.client_metadata import ClientMetadataDocuments
from identity_provider.oauth_core import TOKEN_EXCHANGE, FormRequest, KeyRing, OAuthServer
from identity_provider.oauth_store import Client, MemoryStore, Store, is_loopback_or_https
from identity_provider.sign_in import SignIn
from shared import bearer_token

SCOPES = ["mcp:read", "mcp:admin"]
BASE_SCOPE = "mcp:read"  # what a client gets when it asks for nothing in particular
MAX_BODY_BYTES = 64 * 1024  # registrations and forms are small; nothing bigger is read

log = structlog.get_logger("authorization-server")


class AuthorizationServerApp:
    """The HTTP side: metadata, JWKS, registration, the token endpoint, introspection, revocation.

    The page where a person signs in is `SignIn` (sign_in.py); the OAuth
    protocol work is authlib's, tightened in oauth_core.py.
    """

    def __init__(
        self,
        issuer: str,
        resources: list[str],
        users: dict[str, str],
        store: Store | None = None,
        allow_loopback_client_metadata: bool = False,
        registrations_per_minute: int = 20,
    ) -> None:
        self.issuer = issuer
        self.store = store or MemoryStore()
        self.keys = KeyRing(self.store)
        self.documents = ClientMetadataDocuments(" ".join(SCOPES), allow_loopback_client_metadata)
        self.oauth = OAuthServer(issuer, resources, SCOPES, self.store, self.keys, self.documents.cached)
        self.sign_in = SignIn(issuer, users, self.oauth, self.store, self.documents)
        self.registrations = RateLimit(limit=registrations_per_minute, window=60)  # per address: floods
        self.failed_client_auth = RateLimit(limit=10, window=60)  # per client: secret guessing

    def app(self, rotate_keys_every: float = 0, middleware: Sequence[Middleware] = ()) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[None]:
            async with anyio.create_task_group() as tg:
                if rotate_keys_every > 0:
                    tg.start_soon(self.rotate_keys, rotate_keys_every)
                yield
                tg.cancel_scope.cancel()

        return Starlette(
            lifespan=lifespan,
            # Nothing is read whole beyond this, before any credential is looked at.
            middleware=[*middleware, Middleware(RequestBodyLimitMiddleware, max_body_size=MAX_BODY_BYTES)],
            routes=[
                Route("/.well-known/oauth-authorization-server", self.metadata),
                Route("/jwks", self.jwks),
                Route("/register", self.register, methods=["POST"]),
                Route("/authorize", self.sign_in.authorize, methods=["GET", "POST"]),
                Route("/token", self.token, methods=["POST"]),
                Route("/introspect", self.introspect, methods=["POST"]),
                Route("/revoke", self.revoke, methods=["POST"]),
                Route("/admin/clients", self.list_clients),
                Route("/healthz", lambda _: JSONResponse({"status": "ok"})),
            ],
        )

    async def rotate_keys(self, every: float) -> None:
        """A new signing key now and then; the previous one stays published for the tokens it signed."""
        while True:
            await anyio.sleep(every)
            self.keys.rotate()
            log.info("signing key rotated", kid=self.keys.current.kid)

    async def metadata(self, _request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "issuer": self.issuer,  # the exact string clients compare with: no trailing slash added
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "registration_endpoint": f"{self.issuer}/register",
                "jwks_uri": f"{self.issuer}/jwks",
                "introspection_endpoint": f"{self.issuer}/introspect",
                "revocation_endpoint": f"{self.issuer}/revoke",
                "scopes_supported": SCOPES,
                "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials", TOKEN_EXCHANGE],
                "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
                "code_challenge_methods_supported": ["S256"],
                "authorization_response_iss_parameter_supported": True,
                "client_id_metadata_document_supported": True,
            }
        )

    async def jwks(self, _request: Request) -> JSONResponse:
        return JSONResponse(self.keys.jwks())

    async def register(self, request: Request) -> JSONResponse:
        """RFC 7591 dynamic client registration (deprecated by MCP 2026-07-28, still what most clients do)."""
        address = request.client.host if request.client else "unknown"
        if self.registrations.exceeded(address):
            return too_many(self.registrations.window)
        self.registrations.add(address)
        try:
            body = await request.json()
        except ValueError:
            return self.registration_error("invalid_client_metadata", "the body must be a JSON object")
        if not isinstance(body, dict):
            return self.registration_error("invalid_client_metadata", "the body must be a JSON object")
        redirect_uris = body.get("redirect_uris")
        if (
            not isinstance(redirect_uris, list)
            or not redirect_uris
            or not all(isinstance(u, str) for u in redirect_uris)
        ):
            return self.registration_error("invalid_redirect_uri", "redirect_uris must be a non-empty list of URLs")
        if not all(is_loopback_or_https(uri) for uri in redirect_uris):
            return self.registration_error("invalid_redirect_uri", "redirect URIs must use HTTPS or point to loopback")
        method = body.get("token_endpoint_auth_method", "client_secret_basic")
        if method not in ("none", "client_secret_basic", "client_secret_post"):
            return self.registration_error(
                "invalid_client_metadata", f"unsupported token_endpoint_auth_method {method}"
            )
        grant_types = body.get("grant_types") or ["authorization_code", "refresh_token"]
        if not isinstance(grant_types, list) or not all(isinstance(g, str) for g in grant_types):
            return self.registration_error("invalid_client_metadata", "grant_types must be a list of strings")
        if not set(grant_types) <= {"authorization_code", "refresh_token"}:
            return self.registration_error("invalid_client_metadata", "only authorization_code and refresh_token")
        scope = body.get("scope") or BASE_SCOPE
        if not isinstance(scope, str) or not set(scope.split()) <= set(SCOPES):
            return self.registration_error("invalid_client_metadata", f"scope must be among {' '.join(SCOPES)}")
        client = Client(
            client_id=secrets.token_urlsafe(16),  # never an https:// URL: those name metadata documents
            client_name=str(body.get("client_name") or "unnamed client")[:100],
            redirect_uris=redirect_uris,
            grant_types=list(grant_types),
            token_endpoint_auth_method=method,
            # What it gets when it asks for nothing: the base scope unless it registered for more. More is
            # still only a request: the user consents to each scope, which is how step-up works.
            scope=" ".join(dict.fromkeys(scope.split())),
            client_secret=None if method == "none" else secrets.token_urlsafe(32),
        )
        self.store.save_client(client)
        log.info("client registered", client_id=client.client_id, client_name=client.client_name)
        return JSONResponse(client.public_metadata() | {"client_id_issued_at": int(time.time())}, status_code=201)

    @staticmethod
    def registration_error(error: str, description: str) -> JSONResponse:
        return JSONResponse({"error": error, "error_description": description}, status_code=400)

    @property
    def admin_resource(self) -> str:
        """The audience of tokens for this server's own small admin API."""
        return f"{self.issuer}/admin"

    async def list_clients(self, request: Request) -> JSONResponse:
        """The registered clients, without their secrets: for a token issued for this API with `mcp:admin`."""
        token = bearer_token(request.headers.get("authorization"))
        try:
            claims = self.oauth.verify_own_access_token(token.reveal() if token else "")
        except OAuth2Error:
            claims = {}
        if claims.get("aud") != self.admin_resource:
            return JSONResponse({"error": "invalid_token"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        if "mcp:admin" not in str(claims.get("scope", "")).split():
            challenge = 'Bearer error="insufficient_scope", scope="mcp:admin"'
            return JSONResponse(
                {"error": "insufficient_scope"}, status_code=403, headers={"WWW-Authenticate": challenge}
            )
        clients = [
            {k: v for k, v in client.public_metadata().items() if k != "client_secret"}
            for client in self.store.all_clients()
        ]
        return JSONResponse({"clients": clients})

    def authenticated_client(self, request: Request, form: dict[str, str]) -> Client | None:
        """The client a request authenticates as: HTTP Basic for confidential clients, client_id for public ones."""
        try:
            credentials = basic_credentials(request.headers.get("authorization", ""))
        except ValueError:
            return None
        if credentials is not None:
            client = self.store.get_client(credentials[0])
            return client if client is not None and client.check_client_secret(credentials[1]) else None
        client = self.store.get_client(form.get("client_id", ""))
        return client if client is not None and client.client_secret is None else None  # a public client

    async def introspect(self, request: Request) -> JSONResponse:
        """RFC 7662: is this access token active, and what does it say? Only for authenticated clients."""
        form = {k: str(v) for k, v in (await request.form()).items()}
        client = self.authenticated_client(request, form)
        if client is None or client.client_secret is None:
            headers = {"WWW-Authenticate": "Basic"}
            return JSONResponse({"error": "invalid_client"}, status_code=401, headers=headers)
        try:
            claims = self.oauth.verify_own_access_token(form.get("token", ""))
        except OAuth2Error:
            return JSONResponse({"active": False})  # refresh tokens, revoked, expired, or not ours: all inactive
        return JSONResponse({"active": True, "token_type": "access_token", **claims})

    async def revoke(self, request: Request) -> JSONResponse:
        """RFC 7009: revoke a refresh token (its whole grant goes with it) or an access token."""
        form = {k: str(v) for k, v in (await request.form()).items()}
        client = self.authenticated_client(request, form)
        if client is None:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        token = form.get("token", "")
        refresh = self.store.get_refresh_token(token)
        if refresh is not None and refresh.client_id == client.client_id:
            self.store.revoke_family(refresh.family)
            log.info("grant revoked", client_id=client.client_id)
        else:
            try:
                claims = self.oauth.verify_own_access_token(token)
            except OAuth2Error:
                claims = {}
            if claims.get("client_id") == client.client_id:
                self.store.revoke_access_token(str(claims["jti"]))
                log.info("access token revoked", client_id=client.client_id)
        return JSONResponse({})  # the same answer whatever the token was: nothing to probe

    async def token(self, request: Request) -> Response:
        fields = (await request.form()).multi_items()
        if repeated := repeated_parameter([*fields, *request.query_params.multi_items()]):
            return invalid_request(f"the parameter {repeated} is sent more than once")
        try:
            basic_credentials(request.headers.get("authorization", ""))
        except ValueError as exc:
            body = {"error": "invalid_client", "error_description": str(exc)}
            return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Basic"})
        form = {k: str(v) for k, v in fields}
        if refusal := await unusable_client_metadata(self.documents, self.store, form.get("client_id")):
            return refusal
        claimed = self.claimed_client_id(request, form)
        if self.failed_client_auth.exceeded(claimed):
            # Even the right secret waits until the window has passed: guessing must not pay.
            return too_many(self.failed_client_auth.window)
        oauth_request = FormRequest("POST", str(request.url), request.headers, dict(request.query_params), form)
        response: Response = self.oauth.create_token_response(oauth_request)
        if response.status_code == 401:
            self.failed_client_auth.add(claimed)
        return response

    @staticmethod
    def claimed_client_id(request: Request, form: dict[str, str]) -> str:
        """The client a token request says it is, before anything is verified."""
        try:
            credentials = basic_credentials(request.headers.get("authorization", ""))
        except ValueError:
            return "malformed"
        return credentials[0] if credentials is not None else form.get("client_id", "unknown")
