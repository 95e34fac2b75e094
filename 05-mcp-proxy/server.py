"""05-mcp-proxy: one MCP endpoint in front of several MCP servers, stdio and streamable HTTP.

    .venv/bin/python 05-mcp-proxy/server.py -t http                         # http://127.0.0.1:9090/mcp
    .venv/bin/python 05-mcp-proxy/server.py -t http --config my-config.json
    .venv/bin/python 05-mcp-proxy/server.py --check --config my-config.json  # validate and exit
    .venv/bin/python 05-mcp-proxy/server.py --approve basic/echo_message     # accept a changed tool

Each backend's tools and prompts appear under `<server>__<name>` (or the
backend's own `prefix`), its resource URIs under `<server>+<uri>`. The proxy keeps one
session per backend, restarts backends that die, relays `list_changed`,
progress, cancellation and the backend's questions for the user, and
reloads its configuration file when it changes.

This file is the map: the configuration, the backends started under one
`Proxy` (proxy.py), the catalogue they make up (catalogue.py), the handlers
that answer clients (handlers.py, forwarding through forward.py), and `main`.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import handlers
import structlog
from express import ExpressLane
from forward import express_call
from front_door import FrontDoor, HostGuard, readiness
from handlers import Listen, express_route
from mcp.server import Server
from mcp.server.caching import CACHEABLE_METHODS, CacheHint
from mcp.shared.exceptions import MCPDeprecationWarning
from pins import Pins
from proxy import Proxy, observe_backends
from proxy_config import ConfigError, ProxyConfig, load_config
from starlette.middleware import Middleware
from starlette.routing import Route

from shared import (
    MCP_PATH,
    TelemetryMiddleware,
    build_parser,
    configure_logging,
    metrics_endpoint,
    parse_config,
    project_version,
    serve,
    setup_telemetry,
    transport_security,
)

DEFAULT_PORT = 9090
DEFAULT_CONFIG = Path(__file__).with_name("config.json")
START_PATIENCE = 20.0  # seconds the proxy waits for every backend's first start before serving anyway
INSTRUCTIONS = "Tools, prompts and resources of several MCP servers; names start with the server's prefix."

log = structlog.get_logger("mcp-proxy")


def make_server(
    config: ProxyConfig,
    pins: Pins,
    config_path: Path | None = None,
    refuse: Callable[[str], None] | None = None,
    proxy: Proxy | None = None,
) -> Server[Proxy]:
    """The proxy as an SDK server; `refuse` is told why, if it cannot serve once its backends are up."""
    proxy = proxy or Proxy(config, pins)
    observe_backends(proxy)

    @asynccontextmanager
    async def lifespan(_server: Server[Proxy]) -> AsyncIterator[Proxy]:
        async with anyio.create_task_group() as tg:
            proxy.tg = tg
            for backend in config.backends:  # the backends
                proxy.start(backend)
            with anyio.move_on_after(START_PATIENCE):  # serve once every backend has had its first try
                for connection in list(proxy.connections.values()):
                    await connection.settled.wait()
            proxy.rebuild()  # the catalogue
            if conflicts := "; ".join(proxy.catalogue.conflicts):  # two backends offer the same names: do not serve
                if refuse is None:
                    raise ConfigError(conflicts)
                refuse(conflicts)
                yield proxy
                tg.cancel_scope.cancel()
                return
            proxy.live = True
            proxy.changed_kinds.clear()
            tg.start_soon(proxy.announce)
            if config_path is not None:
                tg.start_soon(proxy.watch_files, config_path)
            yield proxy
            tg.cancel_scope.cancel()

    # The SDK warns that logging is deprecated since 2026-07-28; a 2025-11-25 client still sets its level here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        return Server(
            config.name,
            version=config.version or project_version(),
            instructions=INSTRUCTIONS,
            lifespan=lifespan,
            on_list_tools=handlers.list_tools,  # the handlers
            on_call_tool=handlers.call_tool,
            on_list_prompts=handlers.list_prompts,
            on_get_prompt=handlers.get_prompt,
            on_list_resources=handlers.list_resources,
            on_list_resource_templates=handlers.list_resource_templates,
            on_read_resource=handlers.read_resource,
            on_subscribe_resource=handlers.subscribe_resource,
            on_unsubscribe_resource=handlers.unsubscribe_resource,
            on_subscriptions_listen=Listen(proxy),
            on_completion=handlers.complete,
            on_set_logging_level=handlers.set_level,
            # Lists depend on the caller's token and change whenever a backend's do: never shared, fresh every time.
            cache_hints={method: CacheHint(ttl_ms=0, scope="private") for method in CACHEABLE_METHODS},  # type: ignore[misc]
            # The SDK checks `Mcp-Param-*` headers against the tool's schema; give it ours, not a tools/list per call.
            get_tool_input_schema=lambda tool: proxy.catalogue.input_schema(tool),
        )


def pins_path(config_path: Path, proxy_config: ProxyConfig) -> Path:
    """Next to the configuration file unless `pinsFile` says otherwise."""
    if proxy_config.pins_file:
        return config_path.parent / proxy_config.pins_file
    return config_path.with_name(config_path.stem + ".pins.json")


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser(__doc__, DEFAULT_PORT)
    parser.add_argument(
        "--config",
        default=os.environ.get("PROXY_CONFIG", str(DEFAULT_CONFIG)),
        type=Path,
        help=f"the backends to aggregate (default: {DEFAULT_CONFIG}; env PROXY_CONFIG)",
    )
    parser.add_argument("--check", action="store_true", help="validate the configuration and exit")
    parser.add_argument("--approve", metavar="SERVER/TOOL", help="accept a tool whose definition changed, and exit")
    config, args = parse_config(argv, default_port=DEFAULT_PORT, parser=parser)
    try:
        proxy_config = load_config(args.config)
    except ConfigError as exc:
        parser.error(str(exc))
    pins = Pins(pins_path(args.config, proxy_config))
    if args.check:
        print(f"{args.config}: {len(proxy_config.backends)} backends, configuration is valid", file=sys.stderr)
        return
    if args.approve:
        if not pins.approve(args.approve):
            parser.error(f"no definition of {args.approve!r} waits for approval in {pins.path}")
        print(f"{args.approve}: approved; the running proxy offers its new definition within a second", file=sys.stderr)
        return
    configure_logging(config.log_level, config.log_format)
    for backend in proxy_config.backends:
        if backend.forward_authorization:
            log.warning(
                "TOKEN PASSTHROUGH: this backend receives each caller's Authorization header. The MCP spec "
                "forbids it unless the backend is the token's audience; see 05-mcp-proxy/README.md",
                backend=backend.name,
            )
    # Spans are made and passed on to backends either way; printing one per call is opt-in here.
    telemetry = setup_telemetry("mcp-workshop-05", env={"OTEL_TRACES_EXPORTER": "none", **os.environ})
    refusals: list[str] = []

    def refuse(why: str) -> None:
        refusals.append(why)
        signal.raise_signal(signal.SIGTERM)  # stop as on Ctrl-C, backends and all; then say why, below

    proxy = Proxy(proxy_config, pins)
    server = make_server(proxy_config, pins, args.config, refuse, proxy)
    server.middleware.append(telemetry_middleware := TelemetryMiddleware())
    routes = [Route("/readyz", readiness(lambda: proxy if proxy.live else None)), Route("/metrics", metrics_endpoint)]
    express = Middleware(
        ExpressLane,
        path=MCP_PATH,
        security=transport_security(config),
        call=express_call,
        route=lambda name, scope: express_route(proxy, name, scope) if proxy.live else None,
        server_info=server.server_info_stamp,
        duration=telemetry_middleware.duration,
    )
    guard = Middleware(HostGuard, security=transport_security(config))
    front_door = Middleware(FrontDoor, proxy_config=lambda: proxy.config)  # a reload changes the tokens
    try:
        # Resumable: a backend that cuts its stream mid-call has the proxy cut its caller's, who then resumes.
        serve(server, config, routes=routes, middleware=[guard, front_door, express], resumable=True)
    finally:
        telemetry.shutdown()
    if refusals:
        parser.error(refusals[0])


if __name__ == "__main__":
    main()
