"""03-oauth-mcp client: sign in with OAuth 2.1, then ask the MCP server who you are.

    .venv/bin/python 03-oauth-mcp/client.py http://127.0.0.1:8083/mcp         # signs you in in your browser
    .venv/bin/python 03-oauth-mcp/client.py --client-credentials http://127.0.0.1:8083/mcp  # as the machine client

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
import re
import socket
import sys
import webbrowser
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import uvicorn
from identity_provider.machine_secret import TOKEN_DIR, read_secret, secret_file
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
STORE = TOKEN_DIR
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


async def first_json(http: httpx2.AsyncClient, urls: list[str]) -> dict[str, Any] | None:
    """The first of `urls` that answers 200 with JSON: discovery documents may live at several addresses."""
    for url in urls:
        response = await http.get(url)
        if response.status_code == 200:
            try:
                return dict(response.json())
            except ValueError:
                continue
    return None


async def discover_issuer(server_url: str) -> str:
    """Follow the MCP server's 401 to its authorization server; refuse one that does not offer S256 PKCE.

    The SDK's provider discovers again on its own; this look first is the
    check it leaves out (the MCP spec says to refuse such a server).
    """
    origin, path = server_url.split("/", 3)[:3], urlsplit(server_url).path.rstrip("/")
    base = "/".join(origin)
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        try:
            challenge = await http.post(server_url, json={}, headers={"accept": "application/json, text/event-stream"})
        except httpx2.TransportError:
            raise SystemExit(f"client.py: error: cannot reach the MCP server {server_url}: start it first") from None
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge.headers.get("www-authenticate", "")))
        candidates = [params["resource_metadata"]] if "resource_metadata" in params else []
        candidates += [
            f"{base}/.well-known/oauth-protected-resource{path}",
            f"{base}/.well-known/oauth-protected-resource",
        ]
        resource_metadata = await first_json(http, candidates)
        if not resource_metadata or not resource_metadata.get("authorization_servers"):
            raise SystemExit(f"client.py: error: {server_url} names no authorization server")
        issuer = str(resource_metadata["authorization_servers"][0])
        as_origin, as_path = "/".join(issuer.split("/", 3)[:3]), urlsplit(issuer).path.rstrip("/")
        try:
            metadata = await first_json(
                http,
                [
                    f"{as_origin}/.well-known/oauth-authorization-server{as_path}",
                    f"{as_origin}/.well-known/openid-configuration{as_path}",
                    f"{as_origin}{as_path}/.well-known/openid-configuration",
                ],
            )
        except httpx2.TransportError:
            raise SystemExit(
                f"client.py: error: cannot reach the authorization server {issuer} that {server_url} names: "
                "start it first (.venv/bin/python 03-oauth-mcp/authorization_server.py)"
            ) from None
    if metadata is None:
        raise SystemExit(f"client.py: error: no metadata found for the authorization server {issuer}")
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
            # Who issued the code (RFC 9207): the SDK refuses it unless that is the server it sent the browser to.
            # lab 03-mix-up: begin, starter: issuer = None
            issuer = params.get("iss")
            # lab 03-mix-up: end
            self.result = AuthorizationCodeResult(code=params["code"], state=params.get("state"), iss=issuer)
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


def machine_auth(server_url: str, issuer: str) -> ClientCredentialsOAuthProvider:
    """Sign in as the machine client (client credentials): no person, no browser."""
    # The variable wins; else the file the authorization server at this issuer left while it runs.
    secret = os.environ.get("MACHINE_CLIENT_SECRET") or read_secret(issuer)
    if not secret:
        raise SystemExit(
            f"client.py: error: --client-credentials needs the machine secret: {secret_file(issuer)} is missing"
            " (is this the authorization server you started?); set MACHINE_CLIENT_SECRET to the secret it printed"
        )
    return ClientCredentialsOAuthProvider(
        server_url=server_url,
        storage=FileTokenStorage(issuer),
        client_id=MACHINE_CLIENT_ID,
        client_secret=secret,
        issuer=issuer,
    )


def person_auth(server_url: str, issuer: str, browser: LoopbackCallback) -> OAuthClientProvider:
    """Sign a person in through their browser (authorization code with PKCE), registering this client first."""
    return OAuthClientProvider(
        server_url=server_url,
        client_metadata=OAuthClientMetadata(
            client_name="MCP workshop client",
            redirect_uris=[AnyUrl(browser.redirect_uri)],
            grant_types=["authorization_code", "refresh_token"],
            # A public client: it can keep no secret from its user.
            token_endpoint_auth_method="none",  # noqa: S106 - a method name, not a password
        ),
        storage=FileTokenStorage(issuer),
        redirect_handler=browser.open_browser,
        callback_handler=browser.wait,
    )


async def who_am_i(server_url: str, auth: httpx2.Auth) -> dict[str, Any]:
    """Call `who_am_i` with tokens from `auth`, which signs in first if it holds none (or refreshes them)."""
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
    if client_credentials:
        auth: httpx2.Auth = machine_auth(server_url, issuer)
    else:
        auth = person_auth(server_url, issuer, LoopbackCallback())
    print(json.dumps(await who_am_i(server_url, auth), indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client-credentials", action="store_true", help="authenticate as the machine client")
    parser.add_argument("server_url", help="the MCP server, e.g. http://127.0.0.1:8083/mcp")
    arguments = parser.parse_args()
    anyio.run(main, arguments.server_url, arguments.client_credentials)
