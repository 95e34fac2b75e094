"""Token storage for the SDK's OAuth clients when nothing needs to outlive the process.

The SDK's OAuth providers keep the tokens they get, and the client's
registration, in a `TokenStorage` the caller supplies. A command-line client
keeps them in a file (03's `client.py`); a proxy authenticating as itself, or
a test harness where every run meets a new server, keeps them in memory.
"""

from __future__ import annotations

from mcp.shared.auth import OAuthClientInformationFull, OAuthToken


class MemoryTokenStorage:
    """Tokens and client registration, in memory only."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info
