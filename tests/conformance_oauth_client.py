"""What the official conformance suite runs in client mode: 03's client, adapted to the suite's scenarios.

    .venv/bin/node node_modules/.bin/conformance client \\
        --command ".venv/bin/python -m tests.conformance_oauth_client" --requirements 2026-07-28

The suite names the scenario in MCP_CONFORMANCE_SCENARIO, may describe it in
MCP_CONFORMANCE_CONTEXT (a pre-registered client, credentials), and puts the
server URL last. Authorization scenarios sign in as 03's client.py does,
with what the lesson has no use for: no browser (the suite's authorization
server redirects at once, so the code is read from `Location`), tokens in
memory, a client ID metadata document URL, and a client registered out of
band. The other scenarios test general client behaviour against the suite's
own server: call the tools it names (or a particular one), answer an
elicitation with the defaults its schema offers.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.context import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata
from mcp.types import ElicitRequestFormParams, ElicitRequestParams, ElicitResult, ErrorData
from pydantic import AnyUrl

from shared import MemoryTokenStorage
from tests.harness import load_server

oauth_client = load_server("03-oauth-mcp", "client.py")

CALLBACK = "http://127.0.0.1:3000/callback"  # the suite's default; its server never calls it
CLIENT_METADATA_URL = "https://conformance-test.local/client-metadata.json"  # the suite's own test URL
TIMEOUT = httpx2.Timeout(30, read=300)

# The tool each non-authorization scenario expects the client to call, with its arguments.
SCENARIO_CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    "tools_call": ("add_numbers", {"a": 5, "b": 3}),
    "sse-retry": ("test_reconnection", {}),
    "elicitation-sep1034-client-defaults": ("test_client_elicitation_defaults", {}),
}


class HeadlessRedirect:
    """The suite's authorization server redirects at once, with no page: read the code from `Location`."""

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
            raise SystemExit("conformance_oauth_client: the authorization server did not send a code")
        return self.result


async def scenario_auth(server_url: str, context: dict[str, Any]) -> httpx2.Auth:
    """The provider a scenario asks for: client credentials, or a code grant as a pre-registered or new client."""
    issuer = await oauth_client.discover_issuer(server_url)  # client.py's S256 check runs here too
    storage = MemoryTokenStorage()
    if context.get("name", "").startswith("auth/client-credentials"):
        return ClientCredentialsOAuthProvider(
            server_url=server_url,
            storage=storage,
            client_id=context.get("client_id", oauth_client.MACHINE_CLIENT_ID),
            client_secret=context["client_secret"],
            issuer=issuer,
        )
    if context.get("client_id"):  # pre-registered out of band
        secret = context.get("client_secret")
        await storage.set_client_info(
            OAuthClientInformationFull(
                client_id=context["client_id"],
                client_secret=secret,
                redirect_uris=[AnyUrl(CALLBACK)],
                token_endpoint_auth_method="client_secret_basic" if secret else "none",
            )
        )
    browser = HeadlessRedirect()
    return OAuthClientProvider(
        server_url=server_url,
        client_metadata=OAuthClientMetadata(
            client_name="MCP workshop client",
            redirect_uris=[AnyUrl(CALLBACK)],
            grant_types=["authorization_code", "refresh_token"],
            token_endpoint_auth_method=None,  # whatever the suite's server takes
        ),
        storage=storage,
        redirect_handler=browser.open_browser,
        callback_handler=browser.wait,
        client_metadata_url=CLIENT_METADATA_URL,  # used where the server supports metadata documents
    )


async def run_auth_scenario(server_url: str, context: dict[str, Any]) -> None:
    """Sign in, then list the suite's tools and call each one (a tool may need more scope: the provider steps up)."""
    auth = await scenario_auth(server_url, context)
    async with (
        httpx2.AsyncClient(auth=auth, timeout=TIMEOUT) as http,
        Client(streamable_http_client(server_url, http_client=http)) as client,
    ):
        names = [tool.name for tool in (await client.list_tools()).tools]
        for name in names:
            await client.call_tool(name, {})
    print(json.dumps({"tools": names}))


async def accept_with_defaults(context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult | ErrorData:
    """Accept an elicitation, answering each field with the default its schema gives (SEP-1034)."""
    content: dict[str, Any] = {}
    if isinstance(params, ElicitRequestFormParams):
        for name, schema in params.requested_schema.get("properties", {}).items():
            if "default" in schema:
                content[name] = schema["default"]
    return ElicitResult(action="accept", content=content)


async def run_scenario(scenario: str, server_url: str, context: dict[str, Any]) -> None:
    # Elicitation is a server-to-client request: the 2025-11-25 handshake keeps a channel open for it.
    mode = "legacy" if scenario.startswith("elicitation") else "auto"
    async with Client(server_url, mode=mode, elicitation_callback=accept_with_defaults) as client:
        listed = [tool.name for tool in (await client.list_tools()).tools]
        if calls := context.get("toolCalls"):
            for call in calls:
                await client.call_tool(call["name"], call.get("arguments") or {})
        elif scenario in SCENARIO_CALLS:
            name, arguments = SCENARIO_CALLS[scenario]
            await client.call_tool(name, arguments)
        else:  # a scenario that judges what the client does with each tool
            for name in listed:
                try:
                    await client.call_tool(name, {})
                except Exception as exc:  # the suite's checks are what count, on its side; go on to the next
                    print(f"conformance_oauth_client: {name}: {type(exc).__name__}", file=sys.stderr)


def main() -> None:
    scenario, server_url = os.environ.get("MCP_CONFORMANCE_SCENARIO", ""), sys.argv[-1]
    context = json.loads(os.environ.get("MCP_CONFORMANCE_CONTEXT") or "{}")
    if scenario.startswith("auth/"):
        anyio.run(run_auth_scenario, server_url, context)
    else:
        anyio.run(run_scenario, scenario, server_url, context)


if __name__ == "__main__":
    main()
