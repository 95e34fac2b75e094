"""05-mcp-proxy: one MCP endpoint in front of several MCP servers, stdio and streamable HTTP.

    .venv/bin/python 05-mcp-proxy/server.py -t http                         # http://127.0.0.1:9090/mcp
    .venv/bin/python 05-mcp-proxy/server.py -t http --config my-config.json
    .venv/bin/python 05-mcp-proxy/server.py --check --config my-config.json  # validate and exit

Each backend's tools appear under `<server>__<tool>` (or the backend's own
`prefix`). The proxy opens one session per backend when it starts, and a
backend that fails to start is reported at /readyz without taking the
others down.
"""

from __future__ import annotations

import hmac
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import structlog
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.server import Server, ServerRequestContext
from mcp.types import (
    INVALID_PARAMS,
    CallToolRequestParams,
    CallToolResult,
    GetPromptRequestParams,
    GetPromptResult,
    ListPromptsResult,
    ListResourcesResult,
    ListToolsResult,
    PaginatedRequestParams,
    Prompt,
    ReadResourceRequestParams,
    ReadResourceResult,
    Resource,
    TextContent,
    Tool,
)
from proxy_config import Backend, ConfigError, ProxyConfig, load_config
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from shared import configure_logging, parse_config, serve
from shared.config import build_parser
from shared.context import bearer_token

DEFAULT_PORT = 9090
DEFAULT_CONFIG = Path(__file__).with_name("config.json")
HTTP_TIMEOUT = httpx2.Timeout(30, read=300)

log = structlog.get_logger("mcp-proxy")


@dataclass
class Connection:
    """One backend, as the proxy sees it now."""

    backend: Backend
    client: Client | None = None
    state: str = "starting"  # "up" or "failed"
    error: str | None = None
    tools: list[Tool] = field(default_factory=list)
    prompts: list[Prompt] = field(default_factory=list)
    resources: list[Resource] = field(default_factory=list)


@dataclass
class Proxy:
    connections: dict[str, Connection] = field(default_factory=dict)
    routes: dict[str, tuple[Connection, Tool]] = field(default_factory=dict)  # public name -> owner, tool
    prompts: dict[str, tuple[Connection, Prompt]] = field(default_factory=dict)  # public name -> owner, prompt
    resources: dict[str, tuple[Connection, Resource]] = field(default_factory=dict)  # URI -> owner, resource

    def publish(self) -> None:
        """Rebuild the public catalogue; two backends offering the same public name is a configuration error."""
        self.routes = catalogue(
            self.connections.values(), "tool", lambda c: c.tools, lambda c, t: c.backend.public_name(t.name)
        )
        self.prompts = catalogue(
            self.connections.values(), "prompt", lambda c: c.prompts, lambda c, p: c.backend.public_name(p.name)
        )
        # Resource URIs stay as the backend wrote them, so that a client can read exactly what it listed.
        self.resources = catalogue(
            self.connections.values(), "resource", lambda c: c.resources, lambda c, r: str(r.uri)
        )


T = TypeVar("T")


def catalogue(
    connections: Iterable[Connection],
    kind: str,
    items: Callable[[Connection], list[T]],
    public: Callable[[Connection, T], str],
) -> dict[str, tuple[Connection, T]]:
    """Public name -> (owner, item) for every live backend; a name two backends share is refused."""
    found: dict[str, tuple[Connection, T]] = {}
    for connection in connections:
        for item in items(connection):
            name = public(connection, item)
            if name in found:
                owner = found[name][0].backend.name
                raise ConfigError(f"{kind} {name!r} is offered by both {owner!r} and {connection.backend.name!r}")
            found[name] = (connection, item)
    return found


proxy = Proxy()


def target(backend: Backend, stack: AsyncExitStack) -> Any:
    """What the SDK's Client connects to: a subprocess over stdio, or a URL over streamable HTTP."""
    if backend.command:
        # The stdio client passes on only a few variables of ours; the backend gets exactly its own env.
        return StdioServerParameters(command=backend.command, args=list(backend.args), env=backend.env or None)
    http = httpx2.AsyncClient(headers=backend.headers, timeout=HTTP_TIMEOUT)
    stack.push_async_callback(http.aclose)
    assert backend.url is not None
    return streamable_http_client(backend.url, http_client=http)


async def connect(connection: Connection, stack: AsyncExitStack) -> None:
    backend = connection.backend
    try:
        client = await stack.enter_async_context(Client(target(backend, stack)))
        listed = (await client.list_tools()).tools
    except Exception as exc:  # a dead backend must not stop the others; /readyz says why
        cause = innermost(exc)
        connection.state, connection.error = "failed", f"{type(cause).__name__}: {cause}"[:300]
        log.warning("backend failed to start", backend=backend.name, error=connection.error)
        return
    connection.client, connection.state = client, "up"
    connection.tools = [tool for tool in listed if backend.offers(tool.name)]
    capabilities = client.server_capabilities
    if capabilities is not None and capabilities.prompts is not None:
        connection.prompts = (await client.list_prompts()).prompts
    if capabilities is not None and capabilities.resources is not None:
        connection.resources = (await client.list_resources()).resources
    log.info("backend up", backend=backend.name, tools=len(connection.tools))


def innermost(exc: BaseException) -> BaseException:
    """The first real error inside the exception groups the SDK's task groups wrap it in."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def make_server(config: ProxyConfig) -> Server[Proxy]:
    @asynccontextmanager
    async def lifespan(_server: Server[Proxy]) -> AsyncIterator[Proxy]:
        # Backends are connected before anything else runs in here: the SDK's clients must be entered,
        # and later left, in the same task.
        async with AsyncExitStack() as stack:
            proxy.connections = {backend.name: Connection(backend) for backend in config.backends}
            for connection in proxy.connections.values():
                await connect(connection, stack)
            proxy.publish()
            yield proxy

    async def list_tools(ctx: ServerRequestContext[Proxy], params: PaginatedRequestParams | None) -> ListToolsResult:
        return ListToolsResult(
            tools=[
                tool.model_copy(update={"name": public}) for public, (_, tool) in ctx.lifespan_context.routes.items()
            ]
        )

    async def call_tool(ctx: ServerRequestContext[Proxy], params: CallToolRequestParams) -> CallToolResult:
        route = ctx.lifespan_context.routes.get(params.name)
        if route is None:
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown tool: {params.name}")
        connection, tool = route
        if connection.client is None:
            return failure(f"the server {connection.backend.name!r} behind this tool is not available")
        try:
            result = await connection.client.call_tool(tool.name, params.arguments or {})
        except Exception as exc:  # a backend's trouble is reported to the caller, never raised through
            log.warning(
                "backend call failed", backend=connection.backend.name, tool=tool.name, error=type(exc).__name__
            )
            return failure(f"the server {connection.backend.name!r} failed: {type(exc).__name__}")
        return result.model_copy(update={"meta": None})  # the backend's own serverInfo stamp stays behind

    async def list_prompts(
        ctx: ServerRequestContext[Proxy], params: PaginatedRequestParams | None
    ) -> ListPromptsResult:
        prompts = ctx.lifespan_context.prompts
        return ListPromptsResult(prompts=[p.model_copy(update={"name": public}) for public, (_, p) in prompts.items()])

    async def get_prompt(ctx: ServerRequestContext[Proxy], params: GetPromptRequestParams) -> GetPromptResult:
        route = ctx.lifespan_context.prompts.get(params.name)
        if route is None or route[0].client is None:
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown prompt: {params.name}")
        connection, prompt = route
        assert connection.client is not None
        result = await connection.client.get_prompt(prompt.name, params.arguments)
        return result.model_copy(update={"meta": None})

    async def list_resources(
        ctx: ServerRequestContext[Proxy], params: PaginatedRequestParams | None
    ) -> ListResourcesResult:
        return ListResourcesResult(resources=[resource for _, resource in ctx.lifespan_context.resources.values()])

    async def read_resource(ctx: ServerRequestContext[Proxy], params: ReadResourceRequestParams) -> ReadResourceResult:
        route = ctx.lifespan_context.resources.get(str(params.uri))
        if route is None or route[0].client is None:
            raise MCPError(
                code=INVALID_PARAMS, message=f"Unknown resource: {params.uri}", data={"uri": str(params.uri)}
            )
        result = await route[0].client.read_resource(str(params.uri))
        return result.model_copy(update={"meta": None})

    return Server(
        "mcp-proxy",
        lifespan=lifespan,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_list_resources=list_resources,
        on_read_resource=read_resource,
    )


class FrontDoor:
    """ASGI middleware: with `authTokens` configured, /mcp answers only callers presenting one of them.

    Compared in constant time, so the answer's timing says nothing about how
    much of a guess was right. The tokens open the proxy only: they are never
    passed on to a backend.
    """

    def __init__(self, app: ASGIApp, tokens: Sequence[str]) -> None:
        self.app, self.tokens = app, [token.encode() for token in tokens]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/mcp"):
            offered = bearer_token(Headers(scope=scope).get("authorization"))
            presented = offered.reveal().encode() if offered else b""
            if not any(hmac.compare_digest(presented, token) for token in self.tokens):
                refusal = JSONResponse({"error": "invalid_token"}, 401, headers={"WWW-Authenticate": "Bearer"})
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def failure(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


async def readyz(_request: Request) -> JSONResponse:
    """Each backend's state, last error and tool count; 503 until every backend is up."""
    backends = {
        name: {"state": c.state, "error": c.error, "tools": len(c.tools)} for name, c in proxy.connections.items()
    }
    ready = bool(backends) and all(b["state"] == "up" for b in backends.values())
    return JSONResponse({"ready": ready, "backends": backends}, status_code=200 if ready else 503)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser(__doc__, DEFAULT_PORT)
    parser.add_argument("--config", default=os.environ.get("PROXY_CONFIG", str(DEFAULT_CONFIG)), type=Path,
                        help=f"the backends to aggregate (default: {DEFAULT_CONFIG}; env PROXY_CONFIG)")  # fmt: skip
    parser.add_argument("--check", action="store_true", help="validate the configuration and exit")
    config, args = parse_config(argv, default_port=DEFAULT_PORT, parser=parser)
    try:
        proxy_config = load_config(args.config)
    except ConfigError as exc:
        parser.error(str(exc))
    if args.check:
        print(f"{args.config}: {len(proxy_config.backends)} backends, configuration is valid", file=sys.stderr)
        return
    configure_logging(config.log_level, config.log_format)
    front_door = [Middleware(FrontDoor, tokens=proxy_config.auth_tokens)] if proxy_config.auth_tokens else []
    serve(make_server(proxy_config), config, routes=[Route("/readyz", readyz)], middleware=front_door)


if __name__ == "__main__":
    main()
