"""03-oauth-mcp: an OAuth 2.1 authorization server that runs on your laptop, with no account anywhere.

    .venv/bin/python 03-oauth-mcp/authorization_server.py      # http://127.0.0.1:9000, prints the demo login

It issues the tokens that the MCP server (`server.py`) accepts: a person logs
in and consents in the browser (authorization code with PKCE), or a machine
authenticates as itself (client credentials). Access tokens are JWTs signed
with a key published at /jwks, for exactly one resource.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import html
import os
import secrets
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

import anyio
import redis
import structlog
from authlib.oauth2.base import OAuth2Error
from client_metadata import ClientMetadataDocuments, ClientMetadataError, looks_like_metadata_url
from machine_secret import secret_left_for_clients
from mcp.server.transport_security import RequestBodyLimitMiddleware
from oauth_core import TOKEN_EXCHANGE, FormRequest, KeyRing, OAuthServer
from oauth_store import Client, MemoryStore, Store, is_loopback_or_https, open_store, redirect_origin
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from shared import (
    EMBEDDED_URL,
    bearer_token,
    bound_address,
    build_parser,
    config_from_args,
    configure_logging,
    cors,
    listen,
    run_uvicorn,
    transport_security,
)

DEFAULT_PORT = 9000
DEFAULT_RESOURCE = "http://127.0.0.1:8083/mcp"
SCOPES = ["mcp:read", "mcp:admin"]
BASE_SCOPE = "mcp:read"  # what a client gets when it asks for nothing in particular
DEMO_USER = "demo"
MACHINE_CLIENT_ID = "workshop-machine"
MCP_SERVER_CLIENT_ID = "workshop-mcp-server"  # the MCP server itself, when it exchanges tokens
PENDING_SECONDS = 600
MAX_PENDING = 1000  # sign-in pages open at once; the oldest goes first
MAX_QUERY_BYTES = 4096  # an authorization request's query string, `state` included
MAX_BODY_BYTES = 64 * 1024  # registrations and forms are small; nothing bigger is read

log = structlog.get_logger("authorization-server")

# The consent page may not be framed (clickjacking), loads nothing from elsewhere, and posts only to us.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


class RateLimit:
    """At most `limit` events per key in any `window` seconds: enough for people, too few for a script.

    Keys whose events have all aged out are dropped, in a sweep whenever the
    table has doubled since the last one: a script that sends a new client_id
    each time must not grow it without end.
    """

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.events: dict[str, deque[float]] = {}
        self.sweep_at = 1024

    def count(self, key: str) -> int:
        events = self.events.get(key)
        if events is None:
            return 0
        now = time.monotonic()
        while events and events[0] <= now - self.window:
            events.popleft()
        if not events:
            del self.events[key]
        return len(events)

    def exceeded(self, key: str) -> bool:
        return self.count(key) >= self.limit

    def add(self, key: str) -> None:
        self.count(key)
        self.events.setdefault(key, deque()).append(time.monotonic())
        if len(self.events) >= self.sweep_at:
            for stale in list(self.events):
                self.count(stale)
            self.sweep_at = max(1024, 2 * len(self.events))


def too_many(window: float) -> JSONResponse:
    body = {"error": "slow_down", "error_description": "too many requests; try again later"}
    return JSONResponse(body, status_code=429, headers={"Retry-After": str(int(window))})


def repeated_parameter(items: Sequence[tuple[str, object]]) -> str | None:
    """The first parameter sent twice: RFC 6749 §3.1 makes such a request invalid, whatever the values."""
    seen: set[str] = set()
    for key, _ in items:
        if key in seen:
            return key
        seen.add(key)
    return None


def invalid_request(description: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": "invalid_request", "error_description": description}, status_code=status)


def same_text(expected: str, given: str) -> bool:
    """Constant-time comparison of any two strings (`hmac.compare_digest` refuses non-ASCII `str`)."""
    return hmac.compare_digest(expected.encode(), given.encode())


def basic_credentials(header: str) -> tuple[str, str] | None:
    """RFC 6749 §2.3.1 Basic credentials, or `None` if the header is not Basic; `ValueError` if malformed."""
    if not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip().encode("ascii"), validate=True).decode("utf-8")
    except (UnicodeError, binascii.Error):
        raise ValueError("malformed Basic credentials") from None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise ValueError("malformed Basic credentials")
    return unquote(client_id), unquote(secret)


@dataclass
class Pending:
    """An authorization request waiting for the user's answer on the consent page."""

    query: dict[str, str]
    csrf: str
    expires_at: float


def with_params(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = "&".join(filter(None, [parts.query, urlencode(params)]))
    return urlunsplit(parts._replace(query=query))


class AuthorizationServerApp:
    """The HTTP side: metadata, JWKS, registration, the consent page and the token endpoint."""

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
        self.users = users
        self.store = store or MemoryStore()
        self.keys = KeyRing(self.store)
        self.documents = ClientMetadataDocuments(" ".join(SCOPES), allow_loopback_client_metadata)
        self.oauth = OAuthServer(issuer, resources, SCOPES, self.store, self.keys, self.documents.cached)
        self.pending: dict[str, Pending] = {}  # in insertion order, so the oldest is first
        self.registrations = RateLimit(limit=registrations_per_minute, window=60)  # per address: floods
        self.failed_client_auth = RateLimit(limit=10, window=60)  # per client: secret guessing
        self.failed_sign_ins = RateLimit(limit=5, window=60)  # per page, per client, per address: passwords

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
                Route("/authorize", self.authorize, methods=["GET", "POST"]),
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

    async def authorize(self, request: Request) -> Response:
        """GET shows the sign-in and consent page; POST carries the user's answer."""
        if request.method == "POST":
            return await self.answer(request)
        if repeated := repeated_parameter(request.query_params.multi_items()):
            return invalid_request(f"the parameter {repeated} is sent more than once")  # no redirect: which one?
        if len(request.url.query) > MAX_QUERY_BYTES:
            return invalid_request("the authorization request is too large", 414)
        query = dict(request.query_params)
        if refusal := await self.load_client_metadata(query.get("client_id")):
            return refusal
        oauth_request = FormRequest("GET", str(request.url), request.headers, query, {})
        try:
            grant = self.oauth.get_consent_grant(oauth_request)  # client, redirect URI, PKCE, resource, scope
        except OAuth2Error as error:
            return self.add_iss(self.oauth.handle_error_response(oauth_request, error))
        request_id, csrf = secrets.token_urlsafe(16), secrets.token_urlsafe(32)
        self.remember(request_id, Pending(query, csrf, time.time() + PENDING_SECONDS))
        return self.consent_page(grant.client, query, request_id, csrf)

    def remember(self, request_id: str, pending: Pending) -> None:
        """Keep a sign-in page's request: expired ones go, and past MAX_PENDING the oldest goes too."""
        now = time.time()
        for stale in [key for key, value in self.pending.items() if value.expires_at < now]:
            del self.pending[stale]
        while len(self.pending) >= MAX_PENDING:
            del self.pending[next(iter(self.pending))]
        self.pending[request_id] = pending

    async def answer(self, request: Request) -> Response:
        fields = (await request.form()).multi_items()
        if repeated_parameter(fields):
            return HTMLResponse("This form was not sent by the sign-in page.", 400, PAGE_HEADERS)
        form = {k: str(v) for k, v in fields}
        request_id = form.get("request_id", "")
        pending = self.pending.get(request_id)
        if pending is None or pending.expires_at < time.time():
            return HTMLResponse("This sign-in page has expired. Start again from your app.", 400, PAGE_HEADERS)
        if not same_text(pending.csrf, form.get("csrf", "")):
            return HTMLResponse("This form was not sent by the sign-in page.", 403, PAGE_HEADERS)
        if refusal := await self.load_client_metadata(pending.query.get("client_id")):
            return refusal
        oauth_request = FormRequest("GET", str(request.url), request.headers, pending.query, {})
        try:
            grant = self.oauth.get_consent_grant(oauth_request)
        except OAuth2Error as error:
            return self.add_iss(self.oauth.handle_error_response(oauth_request, error))
        user: str | None = None
        if form.get("decision") == "allow":
            address = request.client.host if request.client else "unknown"
            keys = [f"page:{request_id}", f"client:{grant.client.client_id}", f"address:{address}"]
            if any(self.failed_sign_ins.exceeded(key) for key in keys):
                # Even the right password waits until the window has passed: guessing must not pay.
                message = "Too many wrong passwords. Wait a minute, then try again."
                return self.consent_page(grant.client, pending.query, request_id, pending.csrf, message, 429)
            user = form.get("username", "")
            if not same_text(self.users.get(user, secrets.token_hex(8)), form.get("password", "")):
                log.warning("sign-in failed", username=user[:50])
                for key in keys:
                    self.failed_sign_ins.add(key)
                message = "Wrong username or password."
                return self.consent_page(grant.client, pending.query, request_id, pending.csrf, message)
            log.info("authorization granted", subject=user, client_id=grant.client.client_id)
        del self.pending[request_id]  # one answer per page
        # No user means "denied": the client gets error=access_denied.
        return self.add_iss(self.oauth.create_authorization_response(oauth_request, grant_user=user, grant=grant))

    def add_iss(self, response: Response) -> Response:
        """RFC 9207: every authorization response names its issuer, so a client can spot a mix-up."""
        location = response.headers.get("location")
        if response.status_code in (302, 303) and location:
            return RedirectResponse(with_params(location, iss=self.issuer), status_code=302)
        return response

    def consent_page(
        self, client: Client, query: dict[str, str], request_id: str, csrf: str, error: str = "", status: int = 401
    ) -> Response:
        esc = html.escape
        # The registered redirect URI the request names (authlib checked it), as its checked origin.
        origin = redirect_origin(query.get("redirect_uri") or client.get_default_redirect_uri() or "")
        if origin is None:
            return invalid_request("the redirect URI is not a usable URL")
        redirect_host = urlsplit(origin).netloc
        scopes = "".join(f"<li>{esc(s)}</li>" for s in self.oauth.scope_for(client, query.get("scope")).split())
        warning = ""
        loopback = ("127.0.0.1", "localhost", "::1")
        if looks_like_metadata_url(client.client_id) and all(
            urlsplit(uri).hostname in loopback for uri in client.redirect_uris
        ):
            warning = (
                f'<p class="error">{esc(urlsplit(client.client_id).netloc)} describes this app, but the app runs '
                "on your own machine: allow it only if you started it yourself.</p>"
            )
        body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in to the workshop</title>
<style>body{{font-family:sans-serif;max-width:32rem;margin:3rem auto}} .error{{color:#b00}}</style></head>
<body>
<h1>Sign in and allow access</h1>
<p><strong>{esc(client.client_name)}</strong> wants to use the MCP server
<code>{esc(query.get("resource") or self.oauth.resources[0])}</code> as you.</p>
<p>After you decide, you go back to <strong>{esc(redirect_host)}</strong>.</p>{warning}
<p>It asks for:</p><ul>{scopes}</ul>
<p class="error">{esc(error)}</p>
<form method="post" action="/authorize">
  <input type="hidden" name="request_id" value="{esc(request_id)}">
  <input type="hidden" name="csrf" value="{esc(csrf)}">
  <label>Username <input name="username" autocomplete="username"></label><br>
  <label>Password <input name="password" type="password" autocomplete="current-password"></label><br>
  <button name="decision" value="allow">Allow</button>
  <button name="decision" value="deny">Deny</button>
</form>
</body></html>"""
        # The form posts here, and the answer redirects to the client: browsers check both against form-action.
        # The origin is rebuilt from a parsed, checked URL, never copied from what the client sent.
        csp = PAGE_HEADERS["Content-Security-Policy"].replace("form-action 'self'", f"form-action 'self' {origin}")
        headers = PAGE_HEADERS | {"Content-Security-Policy": csp}
        return HTMLResponse(body, status_code=status if error else 200, headers=headers)

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

    async def load_client_metadata(self, client_id: str | None) -> Response | None:
        """Fetch and check the document of a client known by URL; an error page if it cannot be used.

        No redirect on failure: until the document is checked, its redirect
        URIs are not trusted.
        """
        if client_id is None or not looks_like_metadata_url(client_id) or self.store.get_client(client_id):
            return None
        try:
            await self.documents.resolve(client_id)
        except ClientMetadataError as exc:
            log.warning("client metadata document refused", reason=str(exc))
            return JSONResponse({"error": "invalid_client", "error_description": str(exc)}, status_code=400)
        except ValueError:  # a URL that does not parse (`[::1`), or a host IDNA refuses: not a URL at all
            log.warning("client metadata document refused", reason="client_id is not a URL")
            return JSONResponse({"error": "invalid_client", "error_description": "client_id is not a URL"}, 400)
        return None

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
        if refusal := await self.load_client_metadata(form.get("client_id")):
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser(__doc__, DEFAULT_PORT, http_only=True)
    parser.add_argument(
        "--allow-loopback-client-metadata",
        action="store_true",
        help="development only: accept client metadata documents served over plain HTTP on this machine",
    )
    parser.add_argument(
        "--registrations-per-minute",
        type=int,
        default=20,
        help="dynamic client registrations allowed from one address per minute (default: 20)",
    )
    parser.add_argument(
        "--store",
        default=os.environ.get("OAUTH_STORE", "memory:"),
        help="where to keep clients, codes, refresh tokens and keys: memory: or redis://HOST:PORT/DB "
        "(default: memory:; env OAUTH_STORE)",
    )
    parser.add_argument(
        "--rotate-keys-every",
        type=float,
        default=float(os.environ.get("KEY_ROTATION_SECONDS", 24 * 3600)),
        metavar="SECONDS",
        help="how often to start signing with a new key (default: a day; env KEY_ROTATION_SECONDS)",
    )
    parser.add_argument(
        "--upstream-resource",
        default=EMBEDDED_URL,
        help=f"the API behind the MCP server, which it may get tokens for by exchange (default: {EMBEDDED_URL})",
    )
    parser.add_argument(
        "--resource",
        action="append",
        default=None,
        help=f"the MCP server URL tokens may be issued for; repeat for several (default: {DEFAULT_RESOURCE})",
    )
    args = parser.parse_args(argv)
    config = config_from_args(args, DEFAULT_PORT)
    configure_logging(config.log_level, config.log_format)
    sock = listen(config.addr)
    issuer = f"http://{bound_address(sock, config)}"  # no trailing slash: clients compare it byte for byte
    os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain HTTP is only acceptable on loopback
    password = os.environ.get("DEMO_PASSWORD") or secrets.token_urlsafe(9)
    mcp_servers = args.resource or [DEFAULT_RESOURCE]
    resources = [*mcp_servers, args.upstream_resource, f"{issuer}/admin"]
    try:
        store = open_store(args.store)
    except (ValueError, OSError, redis.RedisError) as exc:
        parser.error(f"cannot use the store {args.store!r}: {exc}")
    server = AuthorizationServerApp(
        issuer,
        resources,
        {DEMO_USER: password},
        store,
        args.allow_loopback_client_metadata,
        args.registrations_per_minute,
    )
    machine_secret = os.environ.get("MACHINE_CLIENT_SECRET") or secrets.token_urlsafe(24)
    server.store.save_client(
        Client(MACHINE_CLIENT_ID, "workshop machine client", [], ["client_credentials"], "client_secret_basic",
               "mcp:read", machine_secret)
    )  # fmt: skip
    # The MCP server's own client: it may exchange the tokens issued for it (and only those) for upstream tokens.
    if mcp_server_secret := os.environ.get("MCP_SERVER_CLIENT_SECRET"):
        server.store.save_client(
            Client(MCP_SERVER_CLIENT_ID, "the workshop MCP server", [], [TOKEN_EXCHANGE], "client_secret_basic",
                   "mcp:read", mcp_server_secret, audiences=list(mcp_servers))
        )  # fmt: skip
    # Browser clients (MCP Inspector's web UI) call the metadata, registration and token endpoints themselves.
    browser_access = cors(transport_security(config))
    with secret_left_for_clients(issuer, machine_secret) as secret_path:
        # Printed, not logged: these are the demo's credentials, for you to type, and logs mask secrets.
        print(
            f"authorization server {issuer}\n  demo login: {DEMO_USER} / {password}\n"
            f"  machine client: {MACHINE_CLIENT_ID} / {machine_secret}\n"
            f"    while this server runs, the secret is also in {secret_path} (mode 0600),"
            " where client.py --client-credentials finds it",
            file=sys.stderr,
            flush=True,
        )
        run_uvicorn(server.app(args.rotate_keys_every, [browser_access]), sock, config, issuer)


if __name__ == "__main__":
    main()
