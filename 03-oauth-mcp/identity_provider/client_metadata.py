"""Client ID Metadata Documents: a client whose client_id is the URL of a JSON document describing it.

This is how MCP 2026-07-28 prefers clients to identify themselves: no
registration call, the authorization server fetches the document instead.
Fetching a URL that a stranger chose is a server-side request forgery risk,
so every rule below runs before a single byte goes out, and the fetch
itself goes only to the address that was checked:

- the URL is HTTPS, has a path, and carries no userinfo, query, fragment,
  or `.`/`..` segment;
- its host resolves to globally routable unicast addresses only, an IPv4
  address carried inside an IPv6 one (NAT64, 6to4, Teredo, IPv4-mapped or
  -compatible) judged as the IPv4 it reaches (loopback only behind the
  `--allow-loopback-client-metadata` development flag, and then plain HTTP
  is accepted too);
- only a 200 counts, redirects are not followed, the body is at most 5 KB,
  and the whole fetch takes at most 5 seconds;
- the document names itself (`client_id` equal to the URL, byte for byte),
  lists its redirect URIs, and asks for no client secret.

Valid documents are cached for as long as their Cache-Control allows (five
minutes at most); failures never are.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2

from identity_provider.oauth_store import Client, is_loopback_or_https

MAX_BYTES = 5 * 1024
FETCH_SECONDS = 5.0
CACHE_SECONDS = 300
# RFC 6052's well-known NAT64 prefix ends in the IPv4 address it translates to; RFC 8215's local-use
# prefix is a network's own, never a public destination.
NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


class ClientMetadataError(Exception):
    """Why a client ID metadata document was not used; safe to show to the client."""


@dataclass
class Cached:
    client: Client
    expires_at: float


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address delivers to: a gateway or the kernel unwraps these forms."""
    found = [address.ipv4_mapped, address.sixtofour, *(address.teredo or ())]
    if address in NAT64_WELL_KNOWN or address in IPV4_COMPATIBLE:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return [ipv4 for ipv4 in found if ipv4 is not None]


def is_public_unicast(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a connection to `address` can only reach the public internet.

    The stdlib's `is_global` knows the special-purpose registries but counts
    multicast as global, and judges 6to4 and NAT64 addresses by their IPv6
    prefix alone, not by the IPv4 host they end up at.
    """
    if not address.is_global or address.is_multicast:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        if address in NAT64_LOCAL_USE:
            return False
        return all(is_public_unicast(ipv4) for ipv4 in embedded_ipv4(address))
    return True


def looks_like_metadata_url(client_id: str | None) -> bool:
    return bool(client_id) and str(client_id).startswith(("https://", "http://"))


class ClientMetadataDocuments:
    def __init__(self, scopes: str, allow_loopback: bool = False) -> None:
        self.scopes, self.allow_loopback = scopes, allow_loopback
        self.cache: dict[str, Cached] = {}

    def cached(self, client_id: str) -> Client | None:
        entry = self.cache.get(client_id)
        return entry.client if entry is not None and entry.expires_at > time.time() else None

    async def resolve(self, client_id: str) -> Client:
        """The client the document at `client_id` describes, fetched (or cached) and checked."""
        cached = self.cached(client_id)
        if cached is not None:
            return cached
        host, port = self.check_url(client_id)
        address = await self.check_address(host, port)
        document, max_age = await self.fetch(client_id, address)
        client = self.check_document(client_id, document)
        self.cache[client_id] = Cached(client, time.time() + min(max_age, CACHE_SECONDS))
        return client

    def check_url(self, url: str) -> tuple[str, int]:
        parts = urlsplit(url)
        loopback_http = parts.scheme == "http" and self.allow_loopback
        if parts.scheme != "https" and not loopback_http:
            raise ClientMetadataError("a client_id URL must use https")
        if parts.username or parts.password or parts.fragment or parts.query:
            raise ClientMetadataError("a client_id URL carries no userinfo, query or fragment")
        if not parts.path or parts.path == "/" or any(seg in (".", "..") for seg in parts.path.split("/")):
            raise ClientMetadataError("a client_id URL needs a plain path to its document")
        if not parts.hostname:
            raise ClientMetadataError("a client_id URL needs a host")
        return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)

    async def check_address(self, host: str, port: int) -> str:
        """Resolve once, refuse anything but public unicast addresses, and return the address to connect to."""
        try:
            infos = await anyio.getaddrinfo(host, port, type=0)
        except OSError:
            raise ClientMetadataError("the client_id URL's host does not resolve") from None
        addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
        for address in addresses:
            if not is_public_unicast(address) and not (self.allow_loopback and address.is_loopback):
                raise ClientMetadataError("the client_id URL points at a private or special address")
        return str(sorted(addresses, key=str)[0])

    async def fetch(self, url: str, address: str) -> tuple[dict[str, Any], float]:
        parts = urlsplit(url)
        literal = f"[{address}]" if ":" in address else address
        pinned = parts._replace(netloc=f"{literal}:{parts.port}" if parts.port else literal).geturl()
        headers = {"Host": parts.netloc, "Accept": "application/json"}
        body = b""
        try:
            with anyio.fail_after(FETCH_SECONDS):
                async with (
                    httpx2.AsyncClient(timeout=httpx2.Timeout(FETCH_SECONDS), follow_redirects=False) as http,
                    # Connect to the address just checked, while TLS still verifies the name in the URL.
                    http.stream(
                        "GET", pinned, headers=headers, extensions={"sni_hostname": parts.hostname}
                    ) as response,
                ):
                    if response.status_code != 200:
                        raise ClientMetadataError(f"the client_id URL answered {response.status_code}, not 200")
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_BYTES:
                            raise ClientMetadataError("the client metadata document is larger than 5 KB")
                    cache_control = response.headers.get("cache-control", "")
        except (httpx2.HTTPError, TimeoutError):
            raise ClientMetadataError("the client metadata document could not be fetched") from None
        try:
            document = json.loads(body)
        except ValueError:
            raise ClientMetadataError("the client metadata document is not JSON") from None
        if not isinstance(document, dict):
            raise ClientMetadataError("the client metadata document is not a JSON object")
        max_age = re.search(r"max-age=(\d+)", cache_control)
        no_store = "no-store" in cache_control or "no-cache" in cache_control
        return document, 0 if no_store else float(max_age[1]) if max_age else CACHE_SECONDS

    def check_document(self, url: str, document: dict[str, Any]) -> Client:
        if document.get("client_id") != url:
            raise ClientMetadataError("the document's client_id is not its own URL")
        if not isinstance(document.get("client_name"), str) or not document["client_name"].strip():
            raise ClientMetadataError("the document has no client_name")
        redirect_uris = document.get("redirect_uris")
        if not (isinstance(redirect_uris, list) and redirect_uris and all(isinstance(u, str) for u in redirect_uris)):
            raise ClientMetadataError("the document lists no redirect_uris")
        if not all(is_loopback_or_https(uri) for uri in redirect_uris):
            raise ClientMetadataError("redirect URIs must use HTTPS or point to loopback")
        if "client_secret" in document or "client_secret_expires_at" in document:
            raise ClientMetadataError("a client metadata document holds no secret")
        if document.get("token_endpoint_auth_method", "none") != "none":
            raise ClientMetadataError("a client known by its metadata document is a public client (auth method none)")
        return Client(
            client_id=url,
            client_name=document["client_name"][:100],
            redirect_uris=list(redirect_uris),
            grant_types=["authorization_code", "refresh_token"],
            token_endpoint_auth_method="none",  # noqa: S106 - the name of an auth method, not a password
            scope=self.scopes,
        )
