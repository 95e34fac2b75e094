"""03-oauth-mcp client: sign in with OAuth 2.1, then ask the MCP server who you are.

    .venv/bin/python 03-oauth-mcp/client.py http://127.0.0.1:8083/mcp         # signs you in in your browser
    MACHINE_CLIENT_SECRET=… .venv/bin/python 03-oauth-mcp/client.py --client-credentials http://127.0.0.1:8083/mcp

The SDK's OAuth provider does the protocol: it finds the authorization server
from the MCP server's 401, registers this client, sends you to sign in, and
trades the code for tokens (PKCE, resource indicator, issuer checks). This
file adds the parts the SDK leaves to an application: refusing an
authorization server without S256 PKCE, opening the browser and catching
the redirect on a loopback port, and keeping the tokens in a file only you
can read.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
import webbrowser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import uvicorn
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from pydantic import AnyUrl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

TIMEOUT = httpx2.Timeout(30, read=300)
STORE = Path(os.environ.get("MCP_WORKSHOP_TOKEN_DIR", Path.home() / ".mcp-workshop" / "oauth"))
MACHINE_CLIENT_ID = "workshop-machine"


class FileTokenStorage:
    """Tokens and the client registration for one issuer, in a file only its owner can read (mode 0600).

    Keyed by issuer: credentials from one authorization server are never
    offered to another.
    """

    def __init__(self, issuer: str) -> None:
        self.path = STORE / (hashlib.sha256(issuer.encode()).hexdigest()[:16] + ".json")

    def _load(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.path.read_text()))
        except (OSError, ValueError):
            return {}

    def _save(self, key: str, value: dict[str, Any]) -> None:
        data = self._load() | {key: value}
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Created 0600 from the first byte: no moment when another user could read it.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump(data, file)

    async def get_tokens(self) -> OAuthToken | None:
        tokens = self._load().get("tokens")
        return OAuthToken.model_validate(tokens) if tokens else None

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self._save("tokens", tokens.model_dump(mode="json", exclude_none=True))

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        client = self._load().get("client")
        return OAuthClientInformationFull.model_validate(client) if client else None

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self._save("client", client_info.model_dump(mode="json", exclude_none=True))


async def discover_issuer(server_url: str) -> str:
    """Follow the MCP server's 401 to its authorization server; refuse one that does not offer S256 PKCE."""
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        challenge = await http.post(server_url, json={}, headers={"accept": "application/json, text/event-stream"})
        header = challenge.headers.get("www-authenticate", "")
        found = [
            part.split("=", 1)[1].strip('"') for part in header.split(", ") if part.startswith("resource_metadata=")
        ]
        metadata_url = found[0] if found else server_url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
        issuer = str((await http.get(metadata_url)).json()["authorization_servers"][0])
        metadata = (await http.get(f"{issuer}/.well-known/oauth-authorization-server")).json()
    if "S256" not in metadata.get("code_challenge_methods_supported", []):
        raise SystemExit(f"client.py: error: {issuer} does not offer S256 PKCE; refusing to sign in there")
    return issuer


class LoopbackCallback:
    """Receives the browser's redirect back from the authorization server, on 127.0.0.1."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()  # a redirect arriving before the server below starts waits in the queue
        self.redirect_uri = f"http://127.0.0.1:{self.sock.getsockname()[1]}/callback"
        self.result: AuthorizationCodeResult | None = None
        self.arrived = anyio.Event()

    async def callback(self, request: Request) -> HTMLResponse:
        params = request.query_params
        if "code" in params:
            self.result = AuthorizationCodeResult(code=params["code"], state=params.get("state"), iss=params.get("iss"))
        self.arrived.set()
        message = "Signed in. You can close this tab." if self.result else f"Not signed in: {params.get('error')}."
        return HTMLResponse(f"<!doctype html><title>MCP workshop</title><p>{message}</p>")

    async def open_browser(self, url: str) -> None:
        if urlsplit(url).scheme not in ("https", "http"):  # never hand a javascript: or file: URL to the OS
            raise SystemExit("client.py: error: the authorization URL is not http(s); refusing to open it")
        print(f"Opening your browser to sign in. If it does not open, visit:\n  {url}", file=sys.stderr)
        await anyio.to_thread.run_sync(webbrowser.open, url)  # the webbrowser module, never a shell

    async def wait(self) -> AuthorizationCodeResult:
        app = Starlette(routes=[Route("/callback", self.callback)])
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", log_config=None))
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [self.sock])
            with anyio.fail_after(300):
                await self.arrived.wait()
            server.should_exit = True
        if self.result is None:
            raise SystemExit("client.py: error: the authorization server did not send a code")
        return self.result


class HeadlessRedirect:
    """For the conformance harness: its authorization server redirects at once, so read the code from Location."""

    def __init__(self) -> None:
        self.result: AuthorizationCodeResult | None = None

    async def open_browser(self, url: str) -> None:
        async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
            response = await http.get(url, follow_redirects=False)
        query = {k: v[0] for k, v in parse_qs(urlsplit(response.headers.get("location", "")).query).items()}
        if "code" in query:
            self.result = AuthorizationCodeResult(code=query["code"], state=query.get("state"), iss=query.get("iss"))

    async def wait(self) -> AuthorizationCodeResult:
        if self.result is None:
            raise SystemExit("client.py: error: the authorization server did not send a code")
        return self.result


async def who_am_i(server_url: str, auth: httpx2.Auth) -> dict[str, Any]:
    async with (
        httpx2.AsyncClient(auth=auth, timeout=TIMEOUT) as http,
        Client(streamable_http_client(server_url, http_client=http)) as client,
    ):
        result = await client.call_tool("who_am_i", {})
    if result.is_error or result.structured_content is None:
        raise SystemExit(f"client.py: error: who_am_i failed: {result.content}")
    return dict(result.structured_content)


async def main(server_url: str, client_credentials: bool) -> None:
    issuer = await discover_issuer(server_url)
    storage = FileTokenStorage(issuer)
    auth: httpx2.Auth
    if client_credentials:
        secret = os.environ.get("MACHINE_CLIENT_SECRET")
        if not secret:
            raise SystemExit(
                "client.py: error: --client-credentials needs MACHINE_CLIENT_SECRET (the server prints it)"
            )
        auth = ClientCredentialsOAuthProvider(
            server_url=server_url, storage=storage, client_id=MACHINE_CLIENT_ID, client_secret=secret, issuer=issuer
        )
    else:
        browser = HeadlessRedirect() if "MCP_CONFORMANCE_SCENARIO" in os.environ else LoopbackCallback()
        redirect_uri = getattr(browser, "redirect_uri", "http://127.0.0.1:3000/callback")
        auth = OAuthClientProvider(
            server_url=server_url,
            client_metadata=OAuthClientMetadata(
                client_name="MCP workshop client",
                redirect_uris=[AnyUrl(redirect_uri)],
                grant_types=["authorization_code", "refresh_token"],
                token_endpoint_auth_method="none",  # noqa: S106 - a public client: it can keep no secret from its user
            ),
            storage=storage,
            redirect_handler=browser.open_browser,
            callback_handler=browser.wait,
        )
    print(json.dumps(await who_am_i(server_url, auth), indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client-credentials", action="store_true", help="authenticate as the machine client")
    parser.add_argument("server_url", help="the MCP server, e.g. http://127.0.0.1:8083/mcp")
    arguments = parser.parse_args()
    anyio.run(main, arguments.server_url, arguments.client_credentials)
