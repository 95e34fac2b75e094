"""The proxy's own credentials at a protected HTTP backend: an OAuth token issued to the proxy, for that backend.

A proxy must not hand its clients' tokens on (token passthrough, which the
MCP spec forbids: the backend would accept a token issued for someone else).
When a backend asks for a token, the proxy authenticates as itself, with the
client credentials grant, and gets one issued for exactly that backend.

The SDK's `ClientCredentialsOAuthProvider` does what an MCP client does: it
reads the backend's 401, finds the authorization server through the
backend's protected resource metadata (RFC 9728), and asks it for a token
whose audience is the backend (RFC 8707). The proxy lets it answer one
request, then keeps the token it got and asks again before it expires.
"""

from __future__ import annotations

import time

import httpx2
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from proxy_config import ClientCredentials

from shared.token_storage import MemoryTokenStorage

RENEW_BEFORE = 0.2  # of a token's lifetime left when a new one is fetched
PROBE = {"jsonrpc": "2.0", "id": 0, "method": "server/discover"}  # any request the backend refuses without a token
PROBE_HEADERS = {
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": "2026-07-28",
    "mcp-method": "server/discover",
}


class MachineToken:
    """An access token for one backend, fetched when first needed and again when it is about to expire."""

    def __init__(self, url: str, credentials: ClientCredentials) -> None:
        self.url, self.credentials = url, credentials
        self.token: str | None = None
        self.renew_at = 0.0

    async def bearer(self) -> str:
        """`Bearer <token>` for the Authorization header; raises `MachineAuthError` if none can be had."""
        if self.token is None or time.monotonic() >= self.renew_at:
            await self.fetch()
        return f"Bearer {self.token}"

    def expired(self) -> None:
        """The backend refused the token (revoked, or its keys changed): the next request gets a new one."""
        self.token = None

    async def fetch(self) -> None:
        if not self.credentials.client_secret:
            raise MachineAuthError(f"no client secret for {self.credentials.client_id!r} at {self.url}: set it")
        storage = MemoryTokenStorage()
        provider = ClientCredentialsOAuthProvider(
            server_url=self.url,
            storage=storage,
            client_id=self.credentials.client_id,
            client_secret=self.credentials.client_secret,
            scope=self.credentials.scope,
        )
        try:
            async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
                await http.post(self.url, json=PROBE, headers=PROBE_HEADERS)
        except httpx2.HTTPError as exc:
            raise MachineAuthError(f"could not get a token for {self.url}: {type(exc).__name__}: {exc}") from None
        except Exception as exc:  # the provider's own errors: no metadata, a refused client, ...
            raise MachineAuthError(f"could not get a token for {self.url}: {exc}") from None
        if storage.tokens is None:
            raise MachineAuthError(f"the authorization server of {self.url} gave the proxy no token")
        self.token = storage.tokens.access_token
        lifetime = storage.tokens.expires_in or 3600
        self.renew_at = time.monotonic() + lifetime * (1 - RENEW_BEFORE)


class MachineAuthError(Exception):
    """No token for the backend: its state says why (wrong secret, authorization server down, ...)."""
