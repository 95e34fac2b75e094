"""05, the idea first: one MCP endpoint in front of several MCP servers, on the SDK alone.

.venv/bin/python 05-mcp-proxy/simple_proxy.py --config servers.json           # stdio
.venv/bin/python 05-mcp-proxy/simple_proxy.py --config servers.json -t http   # http://127.0.0.1:9091/mcp

The config is the `mcpServers` block desktop clients already have, as in
config.json: a `command` and `args` start a server over stdio, a `url` reaches
one over streamable HTTP. Each server's tools are offered as
`<server>__<tool>`, and a call is sent back to the server that owns it.
This is the whole idea. server.py is the same idea made to last: backends
restarted, lists kept live, prompts and resources, pinning, the front door.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp import Client, MCPError, StdioServerParameters
from mcp.server import Server, ServerRequestContext
from mcp.types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    CallToolRequestParams,
    CallToolResult,
    ListToolsResult,
    PaginatedRequestParams,
    Tool,
)

from shared import build_parser, configure_logging, log_requests, parse_config, project_version, serve

DEFAULT_PORT = 9091  # the full proxy, server.py, listens on 9090
SEPARATOR = "__"  # as in server.py: `basic__echo_message`

Target = StdioServerParameters | str  # a command to start, or the URL of a running server


@dataclass(frozen=True)
class Route:
    """Where a public tool name leads: the backend's client, and the tool as the backend lists it."""

    client: Client
    tool: Tool


Catalogue = dict[str, Route]  # public tool name -> its route


def read_targets(path: Path) -> dict[str, Target]:
    """The `mcpServers` entries of a config file, each a stdio command or a streamable-HTTP URL."""
    servers = json.loads(path.read_text())["mcpServers"]
    return {name: entry["url"] if "url" in entry else command(entry) for name, entry in servers.items()}


def command(entry: dict[str, Any]) -> StdioServerParameters:
    """A stdio entry. The SDK passes the child only a few variables of ours (PATH, HOME, ...), plus its `env`."""
    return StdioServerParameters(command=entry["command"], args=entry.get("args", []), env=entry.get("env"))


async def all_tools(client: Client) -> list[Tool]:
    """Every tool a backend offers, page after page."""
    page = await client.list_tools()
    tools = list(page.tools)
    while page.next_cursor:
        page = await client.list_tools(cursor=page.next_cursor)
        tools += page.tools
    return tools


def make_server(targets: Mapping[str, Target]) -> Server[Catalogue]:
    """A low-level SDK `Server`: it republishes the backends' tools as they are, schemas and all."""

    @asynccontextmanager
    async def lifespan(_server: Server[Catalogue]) -> AsyncIterator[Catalogue]:
        # Once per process over HTTP, so one connection to each backend serves every caller.
        catalogue: Catalogue = {}
        async with AsyncExitStack() as stack:
            for name, target in targets.items():
                client = await stack.enter_async_context(Client(target))
                for tool in await all_tools(client):
                    catalogue[f"{name}{SEPARATOR}{tool.name}"] = Route(client, tool)
            yield catalogue

    async def list_tools(
        ctx: ServerRequestContext[Catalogue], _params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        tools = [route.tool.model_copy(update={"name": name}) for name, route in ctx.lifespan_context.items()]
        return ListToolsResult(tools=tools)

    async def call_tool(ctx: ServerRequestContext[Catalogue], params: CallToolRequestParams) -> CallToolResult:
        route = ctx.lifespan_context.get(params.name)
        if route is None:  # the spec's answer, as in every module: a protocol error, not a failed tool
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown tool: {params.name}")

        async def pass_progress(progress: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(progress, total, message)  # under the caller's token, if it sent one

        try:
            result = await route.client.call_tool(route.tool.name, params.arguments, progress_callback=pass_progress)
        except MCPError:
            raise  # the backend's own protocol error, passed on as it is
        except Exception as exc:
            # Said in our words: the SDK would show a 2025-11-25 caller the raw exception's text.
            raise MCPError(code=INTERNAL_ERROR, message=f"{params.name}: the server behind it failed") from exc
        return result.model_copy(update={"meta": None})  # its `_meta` names the backend, not us

    server = Server(
        "simple-proxy", version=project_version(), lifespan=lifespan, on_list_tools=list_tools, on_call_tool=call_tool
    )
    server.middleware.append(log_requests)  # one log line per request, on stderr
    return server


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser(__doc__, DEFAULT_PORT)
    parser.add_argument("--config", type=Path, required=True, help="a JSON file with an mcpServers block")
    config, args = parse_config(argv, default_port=DEFAULT_PORT, parser=parser)
    try:
        targets = read_targets(args.config)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        parser.error(f"{args.config}: expected a JSON file with an mcpServers block ({exc!r})")
    configure_logging(config.log_level, config.log_format)  # stderr only: on stdio, stdout is the wire
    serve(make_server(targets), config)


if __name__ == "__main__":
    main()
