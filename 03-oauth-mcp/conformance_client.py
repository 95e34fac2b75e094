"""What the official conformance suite runs in client mode: client.py, plus what the other scenarios ask.

    .venv/bin/node node_modules/.bin/conformance client \\
        --command ".venv/bin/python 03-oauth-mcp/conformance_client.py" --requirements 2026-07-28

The suite names the scenario in MCP_CONFORMANCE_SCENARIO, may describe it in
MCP_CONFORMANCE_CONTEXT, and puts the server URL last. Authorization
scenarios go to client.py unchanged. The others test general client
behaviour against the suite's own server: call the tools it names (or a
particular one), answer an elicitation with the defaults its schema offers.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import anyio
import client as oauth_client
from mcp import Client
from mcp.client.context import ClientRequestContext
from mcp.types import ElicitRequestFormParams, ElicitRequestParams, ElicitResult, ErrorData

# The tool each non-authorization scenario expects the client to call, with its arguments.
SCENARIO_CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    "tools_call": ("add_numbers", {"a": 5, "b": 3}),
    "sse-retry": ("test_reconnection", {}),
    "elicitation-sep1034-client-defaults": ("test_client_elicitation_defaults", {}),
}


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
                    print(f"conformance_client.py: {name}: {type(exc).__name__}", file=sys.stderr)


def main() -> None:
    scenario, server_url = os.environ.get("MCP_CONFORMANCE_SCENARIO", ""), sys.argv[-1]
    if scenario.startswith("auth/"):
        anyio.run(oauth_client.main, server_url, False)
    else:
        context = json.loads(os.environ.get("MCP_CONFORMANCE_CONTEXT") or "{}")
        anyio.run(run_scenario, scenario, server_url, context)


if __name__ == "__main__":
    main()
