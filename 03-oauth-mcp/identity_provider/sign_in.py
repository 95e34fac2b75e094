"""The authorization endpoint: the page where a person signs in and allows a client, and their answer.

GET /authorize checks the request (client, redirect URI, PKCE, resource,
scope) through authlib and shows the page; POST /authorize carries the
answer, and redirects back to the client with a code, or with
`error=access_denied`. Every redirect names this issuer (RFC 9207).
"""

from __future__ import annotations

import html
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

import structlog
from authlib.oauth2.base import OAuth2Error
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from identity_provider.checks import (
    RateLimit,
    invalid_request,
    repeated_parameter,
    same_text,
    unusable_client_metadata,
)
from identity_provider.client_metadata import ClientMetadataDocuments, looks_like_metadata_url
from identity_provider.oauth_core import FormRequest, OAuthServer
from identity_provider.oauth_store import Client, Store, redirect_origin

PENDING_SECONDS = 600
MAX_PENDING = 1000  # sign-in pages open at once; the oldest goes first
MAX_QUERY_BYTES = 4096  # an authorization request's query string, `state` included

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


class SignIn:
    """GET and POST /authorize, with the sign-in pages still waiting for an answer."""

    def __init__(
        self, issuer: str, users: dict[str, str], oauth: OAuthServer, store: Store, documents: ClientMetadataDocuments
    ) -> None:
        self.issuer, self.users, self.oauth, self.store, self.documents = issuer, users, oauth, store, documents
        self.pending: dict[str, Pending] = {}  # in insertion order, so the oldest is first
        self.failed_sign_ins = RateLimit(limit=5, window=60)  # per page, per client, per address: passwords

    async def authorize(self, request: Request) -> Response:
        """GET shows the sign-in and consent page; POST carries the user's answer."""
        if request.method == "POST":
            return await self.answer(request)
        if repeated := repeated_parameter(request.query_params.multi_items()):
            return invalid_request(f"the parameter {repeated} is sent more than once")  # no redirect: which one?
        if len(request.url.query) > MAX_QUERY_BYTES:
            return invalid_request("the authorization request is too large", 414)
        query = dict(request.query_params)
        if refusal := await unusable_client_metadata(self.documents, self.store, query.get("client_id")):
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
        if refusal := await unusable_client_metadata(self.documents, self.store, pending.query.get("client_id")):
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
