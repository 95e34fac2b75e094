"""The proxy's own credentials at a protected HTTP backend: an OAuth token issued to the proxy, for that backend.

A proxy must not hand its clients' tokens on (token passthrough, which the
MCP spec forbids: the backend would accept a token issued for someone else).
When a backend asks for a token, the proxy authenticates as itself, with the
client credentials grant, and gets one issued for exactly that backend.

The SDK's `ClientCredentialsOAuthProvider` does what an MCP client does: it
reads the backend's 401, finds the authorization server through the
backend's protected resource metadata (RFC 9728), and asks it for a token
whose audience is the backend (RFC 8707). The proxy lets it answer one
request, then keeps the token it got and asks again before it expires. Why
not the provider as `auth=` on every call: the links send through httpcore2,
which has none, and httpx2 costs more per call than the rule for hand-written
code allows (bench/README.md, "Hand-written code").
"""

from __future__ import annotations

import time

import anyio
import httpx2
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from proxy_config import ClientCredentials

from shared import MemoryTokenStorage

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
        self.fetching = anyio.Lock()  # many calls needing a new token at once: one of them fetches it

    def fresh(self) -> bool:
        return self.token is not None and time.monotonic() < self.renew_at

    async def bearer(self) -> str:
        """`Bearer <token>` for the Authorization header; raises `MachineAuthError` if none can be had."""
        if not self.fresh():
            async with self.fetching:
                if not self.fresh():  # another call may have fetched it while this one waited
                    await self.fetch()
        return f"Bearer {self.token}"

    def refused(self, header: str) -> None:
        """The backend refused this token (revoked, or its keys changed): the next request gets a new one.

        Only if it is still the current one: a call that was refused an old
        token must not throw away the new one another call just fetched.
        """
        if header == f"Bearer {self.token}":
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
            # The secret goes only to the authorization server the configuration names, never to one that
            # the backend's metadata points at: a backend cannot collect the proxy's credentials.
            issuer=self.credentials.issuer,
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
        lifetime = 3600 if storage.tokens.expires_in is None else storage.tokens.expires_in
        self.renew_at = time.monotonic() + lifetime * (1 - RENEW_BEFORE)


class MachineAuthError(Exception):
    """No token for the backend: its state says why (wrong secret, authorization server down, ...)."""
