"""The authorization server's engine: clients, codes, refresh tokens, signing keys, and the authlib grants.

authlib does the OAuth 2.1 protocol work; this file supplies what authlib
leaves to the application, and tightens the defaults that do not meet the
MCP authorization spec:

- PKCE is mandatory for every authorization-code flow, S256 only (authlib
  accepts no challenge, and `plain`).
- The RFC 8707 `resource` a client asked for becomes the token's `aud`
  (authlib puts the client_id there), and it stays bound through refresh.
- Refresh tokens rotate, and presenting a used one revokes its whole family
  (authlib does not rotate by default).
- Public clients (`token_endpoint_auth_method=none`) may use the code flow.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

from authlib.oauth2 import AuthorizationServer, OAuth2Request
from authlib.oauth2.base import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidRequestError
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, BaseGrant, ClientCredentialsGrant, RefreshTokenGrant
from authlib.oauth2.rfc6749.grants.base import TokenEndpointMixin
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc7636 import CodeChallenge
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey
from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from identity_provider.oauth_store import AuthorizationCode, Client, RefreshToken, Store

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN, not a secret
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN, not a secret
ACCESS_TOKEN_SECONDS = 600
CODE_SECONDS = 60
REFRESH_TOKEN_SECONDS = 7 * 24 * 3600


class InvalidTargetError(OAuth2Error):  # type: ignore[misc]
    """RFC 8707: the requested resource is unknown, or not the one authorized (authlib has no class for it)."""

    error = "invalid_target"


# --- signing keys ---------------------------------------------------------------------------


class KeyRing:
    """RSA signing keys: the newest signs, the previous one stays published until its tokens have expired.

    The keys live in the store, so that every instance sharing a store signs
    with the same key and a restart keeps tokens already issued valid.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        saved = store.load_keys()
        self.keys: list[RSAKey] = [RSAKey.import_key(key) for key in saved] if saved else []
        if not self.keys:
            self.rotate()

    def rotate(self) -> None:
        key = RSAKey.generate_key(2048, parameters={"kid": uuid.uuid4().hex, "use": "sig", "alg": "RS256"})
        self.keys = [key, *self.keys][:2]
        self.store.save_keys([dict(k.as_dict(private=True)) for k in self.keys])

    @property
    def current(self) -> RSAKey:
        return self.keys[0]

    def jwks(self) -> dict[str, Any]:
        return dict(KeySet(list(self.keys)).as_dict(private=False))


# --- authlib, adapted to Starlette and tightened --------------------------------------------


class FormRequest(OAuth2Request):  # type: ignore[misc]
    """An authlib request built from what Starlette parsed (authlib ships no ASGI integration)."""

    def __init__(self, method: str, url: str, headers: Headers, query: dict[str, str], form: dict[str, str]) -> None:
        # Starlette's Headers are case-insensitive, as authlib's Basic-auth parsing needs.
        super().__init__(method, url, headers=headers)
        self._args, self._form = query, form
        self.payload = BasicOAuth2Payload(form if method == "POST" else query)

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


class S256Only(CodeChallenge):  # type: ignore[misc]
    """PKCE for every client, S256 only: authlib's default lets a confidential client skip it, and accepts `plain`."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]  # noqa: RUF012 - authlib reads it from the class

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge and code_challenge_method=S256")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256")
        super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant: Any, result: Any) -> None:
        if not grant.request.form.get("code_verifier"):
            raise InvalidRequestError("Missing 'code_verifier'")
        super().validate_code_verifier(grant, result)


class OAuthServer(AuthorizationServer):  # type: ignore[misc]
    """authlib's authorization server with this store, these keys, and JWT access tokens for a resource."""

    def __init__(
        self,
        issuer: str,
        resources: list[str],
        scopes: list[str],
        store: Store,
        keys: KeyRing,
        more_clients: Callable[[str], Client | None] = lambda _client_id: None,
    ) -> None:
        super().__init__(scopes_supported=scopes)
        self.scope_names = list(scopes)
        self.issuer, self.resources, self.store, self.keys = issuer, resources, store, keys
        self.more_clients = more_clients  # clients known from elsewhere: metadata documents
        self.register_grant(CodeGrant, [S256Only(required=True)])
        self.register_grant(RotatingRefreshGrant)
        self.register_grant(MachineGrant)
        self.register_grant(TokenExchangeGrant)

    def query_client(self, client_id: str) -> Client | None:
        return self.store.get_client(client_id) or self.more_clients(client_id)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        pass  # access tokens are self-contained JWTs; refresh tokens are saved when minted

    def send_signal(self, *args: Any, **kwargs: Any) -> None:
        pass

    def create_oauth2_request(self, request: OAuth2Request) -> OAuth2Request:
        return request

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> JSONResponse:
        return JSONResponse(body, status_code=status, headers=dict(headers))

    def scope_for(self, client: Client, requested: str | None) -> str:
        """What a person is asked to grant: the scopes requested, or the client's registered default (least).

        A client may ask for any scope this server knows at an authorization
        (that is how step-up works); the user consents to each on the page. A
        client that asks for nothing gets what it registered for, which is the
        base scope unless it registered for more.
        """
        known = self.scope_names
        return " ".join(s for s in dict.fromkeys((requested or client.scope).split()) if s in known)

    def resource_for(self, requested: str | None) -> str:
        """RFC 8707: the resource a token is for. Unknown resources are refused, not ignored."""
        resource = requested or self.resources[0]
        if resource not in self.resources:
            raise InvalidTargetError(f"unknown resource {resource!r}")
        return resource

    def verify_own_access_token(self, token: str) -> dict[str, Any]:
        """The claims of an access token this server issued and that is still valid."""
        try:
            decoded = jwt.decode(token, KeySet(list(self.keys.keys)), algorithms=["RS256"])
            jwt.JWTClaimsRegistry(iss={"essential": True, "value": self.issuer}, exp={"essential": True}).validate(
                decoded.claims
            )
        except (JoseError, ValueError):
            raise InvalidGrantError("subject_token is not a valid access token from this server") from None
        if decoded.header.get("typ") != "at+jwt":
            raise InvalidGrantError("subject_token is not an access token")
        if self.store.access_token_revoked(str(decoded.claims.get("jti"))):
            raise InvalidGrantError("subject_token has been revoked")
        return dict(decoded.claims)

    def mint(
        self,
        client: Client,
        subject: str,
        scope: str,
        resource: str,
        grant: str | None,
        actor: dict[str, str] | None = None,
        refresh: bool = False,
    ) -> dict[str, Any]:
        """An RFC 9068 JWT access token for `resource`, and with `refresh` a refresh token, both part of `grant`."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": resource,
            "client_id": client.client_id,
            "scope": scope,
            "iat": now,
            "exp": now + ACCESS_TOKEN_SECONDS,
            "jti": uuid.uuid4().hex,
        }
        if actor is not None:
            claims["act"] = actor  # RFC 8693: who is acting on the subject's behalf
        self.store.record_access_token(claims["jti"], grant)  # so that revoking the grant reaches it too
        header = {"alg": "RS256", "typ": "at+jwt", "kid": self.keys.current.kid}
        token: dict[str, Any] = {
            "access_token": jwt.encode(header, claims, self.keys.current),
            "token_type": "Bearer",
            "expires_in": ACCESS_TOKEN_SECONDS,
            "scope": scope,
        }
        if refresh and grant is not None:
            expires_at = now + REFRESH_TOKEN_SECONDS
            record = RefreshToken(
                secrets.token_urlsafe(32), grant, client.client_id, subject, scope, resource, expires_at
            )
            self.store.save_refresh_token(record)
            token["refresh_token"] = record.token
        return token


class CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]  # noqa: RUF012

    def validate_authorization_request(self) -> str:
        redirect_uri: str = super().validate_authorization_request()
        try:
            self.server.resource_for(self.request.payload.data.get("resource"))
        except InvalidTargetError as error:
            error.redirect_uri, error.state = redirect_uri, self.request.payload.state
            raise
        return redirect_uri

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        data = request.payload.data
        self.server.store.save_code(
            AuthorizationCode(
                code=code,
                client_id=request.client.client_id,
                redirect_uri=data["redirect_uri"],
                scope=self.server.scope_for(request.client, data.get("scope")),
                subject=request.user,
                resource=self.server.resource_for(data.get("resource")),
                code_challenge=data["code_challenge"],
                code_challenge_method=data["code_challenge_method"],
                expires_at=time.time() + CODE_SECONDS,
            )
        )

    def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
        store: Store = self.server.store
        found = store.get_code(code)
        if found is None or found.client_id != client.client_id or found.expires_at < time.time():
            return None
        if found.used:
            # A code works once. Seeing it again means it leaked: revoke what the first use obtained.
            store.revoke_family(found.family)
            return None
        requested = self.request.form.get("resource")
        if requested is not None and requested != found.resource:
            raise InvalidTargetError("the token request's resource differs from the authorized one")
        return found

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        authorization_code.used = True  # kept until it expires, to recognise a second attempt
        self.server.store.save_code(authorization_code)

    def authenticate_user(self, authorization_code: AuthorizationCode) -> str:
        return authorization_code.subject

    def generate_token(self, user: str | None = None, scope: str | None = None, **_: Any) -> dict[str, Any]:
        code: AuthorizationCode = self.request.authorization_code
        code.family = uuid.uuid4().hex
        refreshable = self.request.client.check_grant_type("refresh_token")
        server: OAuthServer = self.server
        client = self.request.client
        return server.mint(client, code.subject, code.scope, code.resource, code.family, refresh=refreshable)


class RotatingRefreshGrant(RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]  # noqa: RUF012
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshToken | None:
        store: Store = self.server.store
        found = store.get_refresh_token(refresh_token)
        if found is None or found.expires_at < time.time() or self.server.store.family_revoked(found.family):
            return None
        if found.used:
            # A refresh token is good once. Seeing it again means two parties hold it: revoke them all.
            self.server.store.revoke_family(found.family)
            raise InvalidGrantError("refresh token reused: every token of this grant is revoked")
        requested = self.request.form.get("resource")
        if requested is not None and requested != found.resource:
            raise InvalidTargetError("the refresh request's resource differs from the authorized one")
        return found

    def authenticate_user(self, refresh_token: RefreshToken) -> str:
        return refresh_token.subject

    def revoke_old_credential(self, refresh_token: RefreshToken) -> None:
        refresh_token.used = True
        self.server.store.save_refresh_token(refresh_token)

    def generate_token(self, user: str | None = None, scope: str | None = None, **_: Any) -> dict[str, Any]:
        old: RefreshToken = self.request.refresh_token
        server: OAuthServer = self.server
        return server.mint(self.request.client, old.subject, scope or old.scope, old.resource, old.family, refresh=True)


class MachineGrant(ClientCredentialsGrant):  # type: ignore[misc]
    """Client credentials: a machine acting as itself, so the token's subject is the client."""

    def generate_token(self, user: str | None = None, scope: str | None = None, **_: Any) -> dict[str, Any]:
        client: Client = self.request.client
        server: OAuthServer = self.server
        resource = server.resource_for(self.request.form.get("resource"))
        return server.mint(client, client.client_id, client.get_allowed_scope(scope or client.scope), resource, None)


class TokenExchangeGrant(BaseGrant, TokenEndpointMixin):  # type: ignore[misc]
    """RFC 8693 token exchange (authlib has none): a service trades its caller's token for one of its own.

    This is how an MCP server calls another API for its user without passing
    the user's token on. The server authenticates as itself and presents the
    token it received; the new token is for the other API's audience, names
    the same user as `sub` and the server as the actor (`act`). A server can
    exchange only tokens that were issued for it.
    """

    GRANT_TYPE = TOKEN_EXCHANGE
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]  # noqa: RUF012

    def validate_token_request(self) -> None:
        client: Client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(TOKEN_EXCHANGE):
            raise InvalidRequestError("this client may not exchange tokens")
        form = self.request.form
        if form.get("subject_token_type") != ACCESS_TOKEN_TYPE or not form.get("subject_token"):
            raise InvalidRequestError(f"send subject_token with subject_token_type={ACCESS_TOKEN_TYPE}")
        server: OAuthServer = self.server
        claims = server.verify_own_access_token(form["subject_token"])
        if claims.get("aud") not in client.audiences:
            raise InvalidGrantError("a client can only exchange tokens that were issued for it")
        self.request.client = client
        self.request.credential = claims

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        client: Client = self.request.client
        claims: dict[str, Any] = self.request.credential
        server: OAuthServer = self.server
        target = server.resource_for(self.request.form.get("resource") or self.request.form.get("audience"))
        if target in client.audiences:
            raise InvalidTargetError("exchange for another audience than your own")
        actor = {"sub": client.client_id}
        # The new token carries no more than the caller granted: the subject token's own scope.
        token = server.mint(client, str(claims["sub"]), str(claims.get("scope", "")), target, None, actor)
        token["issued_token_type"] = ACCESS_TOKEN_TYPE
        return 200, token, self.TOKEN_RESPONSE_HEADER
