"""Where the authorization server keeps what it must remember: clients, codes, refresh tokens, keys.

`MemoryStore` is the default: nothing to install, gone at exit. `RedisStore`
is for several instances behind one address, or for state that must survive
a restart (`--store redis://127.0.0.1:6379/0`).
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import redis
from authlib.oauth2.rfc6749 import AuthorizationCodeMixin, ClientMixin

# --- what the store holds -------------------------------------------------------------------


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    """A registered OAuth client: pre-registered, or registered dynamically (RFC 7591)."""

    client_id: str
    client_name: str
    redirect_uris: list[str]
    grant_types: list[str]
    token_endpoint_auth_method: str  # "none" for public clients
    scope: str
    client_secret: str | None = None
    audiences: list[str] = field(default_factory=list)  # for a server: the resources it is (token exchange)

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str:
        allowed = set(self.scope.split())
        return " ".join(s for s in (scope or "").split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris  # exact match, nothing looser

    def check_client_secret(self, client_secret: str) -> bool:
        secret = (self.client_secret or "").encode()
        return self.client_secret is not None and hmac.compare_digest(secret, client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint != "token" or method == self.token_endpoint_auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types

    def public_metadata(self) -> dict[str, Any]:
        """The registration response: everything but the secret's absence."""
        data = {
            "client_id": self.client_id,
            "client_name": self.client_name,
            "redirect_uris": self.redirect_uris,
            "grant_types": self.grant_types,
            "response_types": ["code"] if "authorization_code" in self.grant_types else [],
            "token_endpoint_auth_method": self.token_endpoint_auth_method,
            "scope": self.scope,
        }
        if self.client_secret is not None:
            data["client_secret"] = self.client_secret
        return data


@dataclass
class AuthorizationCode(AuthorizationCodeMixin):  # type: ignore[misc]
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    subject: str
    resource: str
    code_challenge: str
    code_challenge_method: str
    expires_at: float
    family: str = ""  # the grant its tokens belong to, once redeemed
    used: bool = False

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclass
class RefreshToken:
    token: str
    family: str  # every refresh token descended from one authorization shares it
    client_id: str
    subject: str
    scope: str
    resource: str
    expires_at: float
    used: bool = False

    def check_client(self, client: Client) -> bool:
        return self.client_id == client.client_id

    def get_scope(self) -> str:
        return self.scope


class Store(Protocol):
    """Where the authorization server keeps its state; swap the in-memory one to share it between instances."""

    def get_client(self, client_id: str) -> Client | None: ...
    def save_client(self, client: Client) -> None: ...
    def all_clients(self) -> list[Client]: ...
    def save_code(self, code: AuthorizationCode) -> None: ...
    def get_code(self, code: str) -> AuthorizationCode | None: ...
    def save_refresh_token(self, token: RefreshToken) -> None: ...
    def get_refresh_token(self, token: str) -> RefreshToken | None: ...
    def revoke_family(self, family: str) -> None: ...
    def family_revoked(self, family: str) -> bool: ...
    def record_access_token(self, jti: str, family: str | None) -> None: ...
    def revoke_access_token(self, jti: str) -> None: ...
    def access_token_revoked(self, jti: str) -> bool: ...
    def load_keys(self) -> list[dict[str, Any]]: ...
    def save_keys(self, keys: list[dict[str, Any]]) -> None: ...


@dataclass
class MemoryStore:
    """The default store: dictionaries in this process, gone at exit."""

    clients: dict[str, Client] = field(default_factory=dict)
    codes: dict[str, AuthorizationCode] = field(default_factory=dict)
    refresh_tokens: dict[str, RefreshToken] = field(default_factory=dict)
    revoked_families: set[str] = field(default_factory=set)
    access_token_families: dict[str, str | None] = field(default_factory=dict)
    revoked_access_tokens: set[str] = field(default_factory=set)
    keys: list[dict[str, Any]] = field(default_factory=list)

    def get_client(self, client_id: str) -> Client | None:
        return self.clients.get(client_id)

    def save_client(self, client: Client) -> None:
        self.clients[client.client_id] = client

    def all_clients(self) -> list[Client]:
        return list(self.clients.values())

    def save_code(self, code: AuthorizationCode) -> None:
        self.codes[code.code] = code

    def get_code(self, code: str) -> AuthorizationCode | None:
        return self.codes.get(code)

    def save_refresh_token(self, token: RefreshToken) -> None:
        self.refresh_tokens[token.token] = token

    def get_refresh_token(self, token: str) -> RefreshToken | None:
        return self.refresh_tokens.get(token)

    def revoke_family(self, family: str) -> None:
        self.revoked_families.add(family)

    def family_revoked(self, family: str) -> bool:
        return family in self.revoked_families

    def record_access_token(self, jti: str, family: str | None) -> None:
        self.access_token_families[jti] = family

    def revoke_access_token(self, jti: str) -> None:
        self.revoked_access_tokens.add(jti)

    def access_token_revoked(self, jti: str) -> bool:
        family = self.access_token_families.get(jti)
        return jti in self.revoked_access_tokens or (family is not None and family in self.revoked_families)

    def load_keys(self) -> list[dict[str, Any]]:
        return list(self.keys)

    def save_keys(self, keys: list[dict[str, Any]]) -> None:
        self.keys = list(keys)


# What RFC 3986 allows in a URI, and nothing else: no space, no quote, no control or non-ASCII character.
URI_CHARACTERS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
# A DNS name of letters, digits and hyphens (an internationalised name arrives in its xn-- form).
HOST_NAME = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")


def redirect_origin(uri: str) -> str | None:
    """The origin of a usable redirect URI, rebuilt from its checked parts; `None` if it is not usable.

    MCP allows only HTTPS anywhere and plain HTTP back to this machine. The
    URI must also be a URL and nothing more: RFC 3986 characters only, a host
    that is a DNS name or an IP address, a numeric port, no userinfo and no
    fragment. Every registration and every client metadata document passes
    through here, so a value that could break out of a header or a page never
    reaches either.
    """
    if not URI_CHARACTERS.fullmatch(uri):
        return None
    parts = urlsplit(uri)
    try:
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or parts.fragment or "@" in parts.netloc or not host:
        return None
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
        if not HOST_NAME.fullmatch(host):
            return None
    if parts.scheme == "http" and host != "localhost" and not (address is not None and address.is_loopback):
        return None
    literal = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address or host)
    return f"{parts.scheme}://{literal}" + (f":{port}" if port is not None else "")


def is_loopback_or_https(uri: str) -> bool:
    """MCP allows only these redirect URIs: HTTPS anywhere, plain HTTP only back to this machine."""
    return redirect_origin(uri) is not None


T = TypeVar("T")


class RedisStore:
    """The same, in Redis: one JSON value per key, each expiring with what it holds."""

    PREFIX = "mcp-workshop:"

    def __init__(self, url: str) -> None:
        self.redis = redis.Redis.from_url(url, decode_responses=True)
        self.redis.ping()  # fail at start, with a clear error, rather than at the first sign-in

    def _put(self, kind: str, key: str, value: Any, expires_at: float | None = None) -> None:
        data = json.dumps(
            dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value
        )
        ttl = max(1, int(expires_at - time.time())) if expires_at else None
        self.redis.set(f"{self.PREFIX}{kind}:{key}", data, ex=ttl)

    def _get(self, kind: str, key: str, cls: type[T]) -> T | None:
        data = self.redis.get(f"{self.PREFIX}{kind}:{key}")
        return cls(**json.loads(str(data))) if data is not None else None

    def get_client(self, client_id: str) -> Client | None:
        return self._get("client", client_id, Client)

    def save_client(self, client: Client) -> None:
        self._put("client", client.client_id, client)

    def all_clients(self) -> list[Client]:
        keys = self.redis.keys(f"{self.PREFIX}client:*")
        return [Client(**json.loads(str(data))) for data in self.redis.mget(keys) if data] if keys else []

    def save_code(self, code: AuthorizationCode) -> None:
        self._put("code", code.code, code, code.expires_at)

    def get_code(self, code: str) -> AuthorizationCode | None:
        return self._get("code", code, AuthorizationCode)

    def save_refresh_token(self, token: RefreshToken) -> None:
        self._put("refresh", token.token, token, token.expires_at)

    def get_refresh_token(self, token: str) -> RefreshToken | None:
        return self._get("refresh", token, RefreshToken)

    def revoke_family(self, family: str) -> None:
        self.redis.set(f"{self.PREFIX}revoked-family:{family}", "1")

    def family_revoked(self, family: str) -> bool:
        return bool(self.redis.exists(f"{self.PREFIX}revoked-family:{family}"))

    def record_access_token(self, jti: str, family: str | None) -> None:
        if family is not None:
            self.redis.set(f"{self.PREFIX}access-family:{jti}", family, ex=24 * 3600)

    def revoke_access_token(self, jti: str) -> None:
        self.redis.set(f"{self.PREFIX}revoked-access:{jti}", "1", ex=24 * 3600)

    def access_token_revoked(self, jti: str) -> bool:
        if self.redis.exists(f"{self.PREFIX}revoked-access:{jti}"):
            return True
        family = self.redis.get(f"{self.PREFIX}access-family:{jti}")
        return family is not None and self.family_revoked(str(family))

    def load_keys(self) -> list[dict[str, Any]]:
        data = self.redis.get(f"{self.PREFIX}signing-keys")
        return list(json.loads(str(data))) if data else []

    def save_keys(self, keys: list[dict[str, Any]]) -> None:
        self.redis.set(f"{self.PREFIX}signing-keys", json.dumps(keys))


def open_store(url: str | None) -> Store:
    """`None` or `memory:` for the in-memory store, `redis://…` for Redis."""
    if not url or url == "memory:":
        return MemoryStore()
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url)
    raise ValueError(f"unknown store {url!r}: use memory: or redis://HOST:PORT/DB")
