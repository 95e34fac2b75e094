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
"""

from __future__ import annotations

import hmac
import os
import signal
import sys
import time
import warnings
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, cast, get_args

import anyio
import structlog
from anyio.abc import TaskGroup
from express import ExpressLane
from link import BackendError, LinkDown, Message, Relay, Timeout, Timeouts
from mcp import MCPError
from mcp.server import Server, ServerRequestContext
from mcp.server.caching import CACHEABLE_METHODS, CacheHint
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.shared.inbound import mcp_param_headers, x_mcp_header_map
from mcp.shared.message import ServerMessageMetadata
from mcp.shared.subscriptions import PromptsListChanged, ResourcesListChanged, ResourceUpdated, ToolsListChanged
from mcp.shared.uri_template import InvalidUriTemplate, UriTemplate
from mcp.types import (
    CLIENT_CAPABILITIES_META_KEY,
    INVALID_PARAMS,
    LOG_LEVEL_META_KEY,
    METHOD_NOT_FOUND,
    CallToolRequestParams,
    CompleteRequestParams,
    CreateMessageRequest,
    CreateMessageResult,
    ElicitRequest,
    ElicitResult,
    GetPromptRequestParams,
    LoggingLevel,
    PaginatedRequestParams,
    PromptReference,
    ReadResourceRequestParams,
    SetLevelRequestParams,
    SubscribeRequestParams,
    SubscriptionsListenRequestParams,
    SubscriptionsListenResult,
    UnsubscribeRequestParams,
)
from opentelemetry import metrics, propagate
from parking import ParkingLot
from pins import NEW, Pins
from proxy_config import Backend, ConfigError, ProxyConfig, clash_line, load_config
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from supervisor import Connection, Unavailable

from shared import (
    INSTRUMENTATION_NAME,
    MCP_PATH,
    TelemetryMiddleware,
    bearer_token,
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
SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
KINDS = ("tools", "prompts", "resources", "resourceTemplates")
CHANGED: dict[str, type[ToolsListChanged | PromptsListChanged | ResourcesListChanged]] = {
    "tools": ToolsListChanged,
    "prompts": PromptsListChanged,
    "resources": ResourcesListChanged,
}
KIND_NAMES = {"tools": "tool", "prompts": "prompt", "resources": "resource", "resourceTemplates": "resource template"}
LOG_LEVELS = get_args(LoggingLevel)  # what a backend's log message may say its level is
RESERVED_META = "io.modelcontextprotocol/"  # `_meta` keys of the protocol itself
SCOPE_KEY = "mcp_proxy.servers"  # where the front door leaves which backends the caller's token opens
RELOAD_POLL = 1.0  # seconds between looks at the configuration and pins files
START_PATIENCE = 20.0  # seconds the proxy waits for every backend's first start before serving anyway

log = structlog.get_logger("mcp-proxy")

# What a handler returns: the result as a plain dict. The SDK checks a dict against the spec's schema once, on
# the way out, instead of our building a model from the backend's answer first (its types name only models).
Reply = Any


@dataclass
class Item:
    """One thing a backend offers, under the name clients see it by."""

    owner: Connection
    original: Message  # as the backend described it: its own name is what we call it by
    public: Message  # as clients see it
    header_params: dict[tuple[str, ...], str] = field(default_factory=dict)  # arguments a call mirrors in headers


@dataclass
class Proxy:
    """Every backend, and the merged catalogue clients see."""

    config: ProxyConfig
    pins: Pins
    connections: dict[str, Connection] = field(default_factory=dict)
    scopes: dict[str, anyio.CancelScope] = field(default_factory=dict)  # stops one backend's supervisor
    catalogue: dict[str, dict[str, Item]] = field(default_factory=lambda: {kind: {} for kind in KINDS})
    templates: list[tuple[UriTemplate, Item]] = field(default_factory=list)
    quarantined: dict[str, str] = field(default_factory=dict)  # public tool name -> why
    conflicts: list[str] = field(default_factory=list)  # one line per pair of backends offering the same names
    live: bool = False  # serving: a clash is logged and the second backend's names left out (at start it refuses)
    reported: set[str] = field(default_factory=set)  # pin violations already logged
    bus: InMemorySubscriptionBus = field(default_factory=InMemorySubscriptionBus)
    sessions: OrderedDict[str, ServerSession] = field(default_factory=OrderedDict)  # 2025-11-25 clients
    log_levels: OrderedDict[str, LoggingLevel] = field(default_factory=OrderedDict)  # by 2025-11-25 session
    # Who follows which resource URI: 2025-11-25 sessions by `resources/subscribe`, and how many 2026-07-28
    # listen streams name it. The backends are asked for updates about exactly the URIs someone follows.
    followers: dict[str, OrderedDict[str, ServerSession]] = field(default_factory=dict)
    listeners: Counter[str] = field(default_factory=Counter)
    changed_kinds: set[str] = field(default_factory=set)
    changed: anyio.Event = field(default_factory=anyio.Event)
    parking: ParkingLot = field(default_factory=ParkingLot)
    tg: TaskGroup | None = None

    # --- the backends ------------------------------------------------------------------------

    def start(self, backend: Backend) -> None:
        connection = Connection(backend, self.rebuild, self.updated)
        scope = anyio.CancelScope()
        self.connections[backend.name], self.scopes[backend.name] = connection, scope

        async def run() -> None:
            with scope:
                await connection.supervise()

        assert self.tg is not None
        self.tg.start_soon(run)

    def stop(self, name: str) -> None:
        self.scopes.pop(name).cancel()
        connection = self.connections.pop(name)
        connection.state = "stopped"

    def apply(self, config: ProxyConfig) -> None:
        """Take a new configuration: only backends whose entry changed are restarted."""
        old = {backend.name: backend for backend in self.config.backends}
        new = {backend.name: backend for backend in config.backends}
        for name in old:
            if new.get(name) != old[name]:
                self.stop(name)
        self.config = config
        for name, backend in new.items():
            if old.get(name) != backend:
                self.start(backend)
        self.rebuild()
        restarted = sorted(name for name in new if old.get(name) != new[name])
        log.info("configuration reloaded", backends=sorted(new), restarted=restarted)

    # --- the merged catalogue ----------------------------------------------------------------

    def rebuild(self, _changed: Connection | None = None) -> None:
        """Merge what every backend offers now; remember which lists changed, to tell clients once."""
        catalogue: dict[str, dict[str, Item]] = {kind: {} for kind in KINDS}
        quarantined: dict[str, str] = {}
        clashes: dict[tuple[str, str], list[str]] = {}
        for backend in self.config.backends:  # configuration order: deterministic lists, a stable winner
            connection = self.connections.get(backend.name)
            if connection is None:
                continue
            known = self.pins.known(backend.name)  # before this listing: its first one pins every tool
            for kind in KINDS:
                for original in connection.items[kind]:
                    public_key, public = self.publish(backend, kind, original)
                    if kind == "tools" and (why := self.pinned(backend, original, known)) is not None:
                        quarantined[public_key] = why
                        continue
                    if public_key in catalogue[kind]:
                        owner = catalogue[kind][public_key].owner.backend.name
                        clashes.setdefault((owner, backend.name), []).append(f"{KIND_NAMES[kind]} {public_key!r}")
                        continue
                    mirrored = x_mcp_header_map(original.get("inputSchema")) if kind == "tools" else {}
                    catalogue[kind][public_key] = Item(connection, original, public, mirrored)
            if not known and connection.state == "up" and backend.pinning != "off":
                self.pins.listed(backend.name)  # even a backend that offered no tool at first is pinned now
        conflicts = [clash_line(first, second, names) for (first, second), names in clashes.items()]
        if self.live:
            for conflict in set(conflicts) - set(self.conflicts):
                log.error("name clash; the second server's are left out", clash=conflict)
        self.conflicts, self.quarantined = conflicts, quarantined
        for kind in KINDS:
            if [i.public for i in catalogue[kind].values()] != [i.public for i in self.catalogue[kind].values()]:
                self.changed_kinds.add("resources" if kind == "resourceTemplates" else kind)
        if _changed is not None:  # what the backend said changed, whatever the listing shows now
            self.changed_kinds |= _changed.told & set(CHANGED)
            _changed.told = set()
        self.catalogue = catalogue
        self.templates = [
            (template, item)
            for item in catalogue["resourceTemplates"].values()
            if (template := parse_template(item.public.get("uriTemplate"))) is not None
        ]
        if self.changed_kinds:
            self.changed.set()
        if (self.followers or self.listeners) and self.tg is not None:
            self.tg.start_soon(self.refollow)  # a followed resource may have a new owner now

    @staticmethod
    def publish(backend: Backend, kind: str, original: Message) -> tuple[str, Message]:
        """Tools and prompts get the backend's prefix, resource URIs and templates its namespace (`basic+…`)."""
        if kind in ("tools", "prompts"):
            public_name = backend.public_name(str(original.get("name")))
            return public_name, {**original, "name": public_name}
        key = "uri" if kind == "resources" else "uriTemplate"
        public_uri = backend.public_uri(str(original.get(key)))
        return public_uri, {**original, key: public_uri}

    def pinned(self, backend: Backend, tool: Message, known: bool) -> str | None:
        """None when the tool may be offered; else why it is quarantined."""
        if backend.pinning == "off":
            return None
        trust_new = backend.new_tools == "trust"
        key = f"{backend.name}/{tool.get('name')}"
        if known and trust_new and key not in self.pins.pins:
            log.warning("new tool pinned on first sight (newTools: trust)", server=backend.name, tool=tool.get("name"))
        changed = self.pins.check(backend.name, tool, known=known, trust_new=trust_new)
        if not changed:
            return None
        new = changed == [NEW]
        if key + repr(changed) not in self.reported:
            self.reported.add(key + repr(changed))
            pin_violations.add(1, {"server": backend.name})
            renamed = self.pins.same_as(backend.name, tool) if new else []
            log.warning(
                "new tool on a pinned server" if new else "tool definition changed since it was pinned",
                server=backend.name,
                tool=tool.get("name"),
                changed=changed,
                **({"same_definition_as": renamed} if renamed else {}),
                action="quarantined" if backend.pinning == "block" else "allowed (pinning: warn)",
                approve=f"05-mcp-proxy/server.py --approve {key}",
            )
        if backend.pinning == "warn":
            return None
        what = f"changed this tool's {', '.join(changed)} since it was approved"
        if new:
            what = "offers this tool, which it did not offer when its tools were pinned"
        return (
            f"the server {backend.name!r} {what}; "
            f"it is quarantined until someone runs: 05-mcp-proxy/server.py --approve {key}"
        )

    def input_schema(self, tool: str) -> Mapping[str, Any] | None:
        item = self.catalogue["tools"].get(tool)
        return item.public.get("inputSchema") if item is not None else None

    def lookup(self, kind: str, name: str, allowed: frozenset[str] | None) -> Item | None:
        """The item clients know by `name`, if the caller's token opens its backend (`allowed`; None: all)."""
        item = self.catalogue[kind].get(name)
        return item if item is not None and (allowed is None or item.owner.backend.name in allowed) else None

    def resource(self, uri: str, allowed: frozenset[str] | None) -> Item | None:
        """The resource a URI names, listed or described by a template, if the caller's token opens its backend."""
        item = self.lookup("resources", uri, allowed)
        if item is None:
            item = next(
                (i for t, i in self.templates
                 if (allowed is None or i.owner.backend.name in allowed) and t.match(uri) is not None),
                None,
            )  # fmt: skip
        return item

    def express_route(self, name: str, scope: Scope) -> Item | None:
        """The tool, if a call to it may take the express lane: its backend speaks 2026-07-28 (so it cannot ask
        a question mid-call) and it mirrors no argument in a header (which the SDK checks)."""
        item = self.lookup("tools", name, opened(scope))
        return item if item is not None and item.owner.modern and not item.header_params else None

    def visible(self, kind: str, servers: frozenset[str] | None) -> list[Message]:
        return [
            item.public
            for item in self.catalogue[kind].values()
            if servers is None or item.owner.backend.name in servers
        ]

    # --- telling clients -------------------------------------------------------------------

    def remember(self, ctx: ServerRequestContext[Proxy]) -> None:
        """Keep 2025-11-25 sessions: the SDK has no broadcast to them, so we tell each about list changes."""
        if ctx.session.protocol_version >= "2026":
            return  # 2026-07-28 clients hear it through subscriptions/listen
        key = session_key(ctx)
        self.sessions[key] = ctx.session
        self.sessions.move_to_end(key)
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)

    async def set_log_level(self, ctx: ServerRequestContext[Proxy], level: LoggingLevel) -> None:
        """`logging/setLevel` from a 2025-11-25 session: its log lines are cut at that level from now on.

        A 2026-07-28 backend is told the level with each of the session's calls. A backend's 2025-11-25
        session serves every caller, so it is told the most detailed level any session asked for, and the
        proxy leaves out, per caller, the lines below its own.
        """
        key = session_key(ctx)
        self.log_levels[key] = level
        self.log_levels.move_to_end(key)
        while len(self.log_levels) > MAX_SESSIONS:
            self.log_levels.popitem(last=False)
        wanted = min(self.log_levels.values(), key=LOG_LEVELS.index)
        for connection in list(self.connections.values()):
            link = connection.legacy or connection.link
            if link is not None and not link.modern and "logging" in link.capabilities:
                with suppress(BackendError, LinkDown, Timeout):
                    await link.request("logging/setLevel", {"level": wanted}, timeouts=Timeouts(30, 30))

    def log_level(self, ctx: ServerRequestContext[Proxy]) -> LoggingLevel | None:
        """The level a 2025-11-25 session asked for (None: it did not, so it gets every line)."""
        return self.log_levels.get(session_key(ctx)) if self.log_levels else None

    async def announce(self) -> None:
        """Send one `list_changed` per changed list, and only when what clients see really changed."""
        while True:
            await self.changed.wait()
            await anyio.sleep(0.05)  # several backends changing at once: one notification
            self.changed = anyio.Event()
            kinds, self.changed_kinds = self.changed_kinds, set()
            for kind in sorted(kinds):
                list_changed_sent.add(1, {"kind": kind})
                await self.bus.publish(CHANGED[kind]())
                for key, session in list(self.sessions.items()):
                    try:
                        await {"tools": session.send_tool_list_changed, "prompts": session.send_prompt_list_changed,
                               "resources": session.send_resource_list_changed}[kind]()  # fmt: skip
                    except Exception:  # a session that is gone is just forgotten
                        self.sessions.pop(key, None)

    async def refollow(self) -> None:
        """Tell each backend which of its resources clients follow now (each backend only when that changed).

        Each backend's set is worked out just before it is handed over, with
        no wait in between: two of these running at once cannot leave a
        backend with the older set.
        """
        for connection in list(self.connections.values()):
            wanted = frozenset(
                connection.backend.backend_uri(uri)
                for uri in {*self.followers, *self.listeners}
                if (item := self.resource(uri, None)) is not None and item.owner is connection
            )
            if wanted != connection.watched:
                await connection.watch(wanted)

    def followable(self, uri: str, allowed: frozenset[str] | None) -> Item | None:
        """The resource, if a caller whose token opens `allowed` may follow it through us.

        Its backend must offer subscriptions, and must be the one we follow the
        URI at for everybody: a token that opens only another backend whose
        template also matches would otherwise hear about the first one's.
        """
        item = self.resource(uri, allowed)
        if item is None or self.resource(uri, None) is not item:
            return None
        link = item.owner.link
        return item if link is None or (link.capabilities.get("resources") or {}).get("subscribe") else None

    async def updated(self, connection: Connection, backend_uri: str) -> None:
        """A backend says a resource changed: tell every client that follows it, in the client's era."""
        uri = connection.backend.public_uri(backend_uri)  # what clients follow it by
        item = self.resource(uri, None)
        if backend_uri not in connection.watched and (item is None or item.owner is not connection):
            return  # not this backend's to speak for
        resource_updates_sent.add(1, {"server": connection.backend.name})
        await self.bus.publish(ResourceUpdated(uri=uri))  # 2026-07-28 listen streams whose filter names it
        if self.followers.get(uri) and self.tg is not None:
            self.tg.start_soon(self.tell_followers, uri)  # not here: one slow client must not hold up the backend

    async def tell_followers(self, uri: str) -> None:
        """`resources/updated` to each 2025-11-25 session that follows `uri`; one that is gone or stuck stops."""
        following = self.followers.get(uri, OrderedDict())
        for key, session in list(following.items()):
            sent = False
            with anyio.move_on_after(FOLLOWER_TIMEOUT), suppress(Exception):
                await session.send_resource_updated(uri)
                sent = True
            if not sent:
                following.pop(key, None)
        if not following:
            self.followers.pop(uri, None)

    async def watch_files(self, path: Path) -> None:
        """Hot reload: a changed config file is applied; an invalid one leaves the last good one serving."""
        seen = mtime(path)
        while True:
            await anyio.sleep(RELOAD_POLL)
            if self.pins.changed_on_disk():  # someone approved a tool
                self.reported.clear()
                self.rebuild()
            if (now := mtime(path)) == seen:
                continue
            seen = now
            try:
                config = load_config(path)
            except ConfigError as exc:
                log.error("configuration not reloaded; the last good one keeps serving", error=str(exc))
                continue
            self.apply(config)


def opened(scope: Scope) -> frozenset[str] | None:
    """Which backends the front door found the caller's token opens (None: all of them)."""
    allowed: frozenset[str] | None = scope.get("state", {}).get(SCOPE_KEY)
    return allowed


def mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def parse_template(value: Any) -> UriTemplate | None:
    try:
        return UriTemplate.parse(value) if isinstance(value, str) else None
    except InvalidUriTemplate:
        return None


# --- metrics: what an operator graphs and alerts on ----------------------------------------------

meter = metrics.get_meter(INSTRUMENTATION_NAME)
calls = meter.create_counter("mcp.proxy.calls", description="Calls forwarded to a backend, by server, tool, outcome")
pin_violations = meter.create_counter("mcp.proxy.pin_violations", description="Tool definitions that changed")
list_changed_sent = meter.create_counter("mcp.proxy.list_changed_sent", description="list_changed sent to clients")
resource_updates_sent = meter.create_counter(
    "mcp.proxy.resource_updates", description="resources/updated from a backend relayed to the clients following it"
)


def make_server(
    config: ProxyConfig, pins: Pins, config_path: Path | None = None, refuse: Callable[[str], None] | None = None
) -> Server[Proxy]:
    """The proxy as an SDK server; `refuse` is told why, if it cannot serve once its backends are up."""
    proxy = Proxy(config, pins)
    observe_backends(proxy)

    @asynccontextmanager
    async def lifespan(_server: Server[Proxy]) -> AsyncIterator[Proxy]:
        async with anyio.create_task_group() as tg:
            proxy.tg = tg
            for backend in config.backends:
                proxy.start(backend)
            with anyio.move_on_after(START_PATIENCE):  # serve once every backend has had its first try
                for connection in list(proxy.connections.values()):
                    await connection.settled.wait()
            proxy.rebuild()
            if proxy.conflicts:  # the configuration gives two backends the same names: say so, and do not serve
                if refuse is None:
                    raise ConfigError("; ".join(proxy.conflicts))
                refuse("; ".join(proxy.conflicts))
                yield proxy
                tg.cancel_scope.cancel()
                return
            proxy.live = True
            proxy.changed_kinds.clear()
            tg.start_soon(proxy.announce)
            if config_path is not None:
                tg.start_soon(proxy.watch_files, config_path)
            serving.append(proxy)
            yield proxy
            tg.cancel_scope.cancel()

    def find(ctx: ServerRequestContext[Proxy], kind: str, name: str) -> Item | None:
        return ctx.lifespan_context.lookup(kind, name, servers(ctx))

    async def list_tools(ctx: ServerRequestContext[Proxy], params: PaginatedRequestParams | None) -> Reply:
        ctx.lifespan_context.remember(ctx)
        return {"tools": ctx.lifespan_context.visible("tools", servers(ctx)), "resultType": "complete"}

    async def call_tool(ctx: ServerRequestContext[Proxy], params: CallToolRequestParams) -> Reply:
        proxy = ctx.lifespan_context
        proxy.remember(ctx)
        item = find(ctx, "tools", params.name)
        if item is None:
            if params.name in proxy.quarantined:
                raise MCPError(code=INVALID_PARAMS, message=f"Tool {params.name} is quarantined: " +
                               proxy.quarantined[params.name])  # fmt: skip
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown tool: {params.name}")
        return await call_backend_tool(item, params.arguments or {}, partial(forward, ctx))

    async def list_prompts(ctx: ServerRequestContext[Proxy], params: PaginatedRequestParams | None) -> Reply:
        ctx.lifespan_context.remember(ctx)
        return {"prompts": ctx.lifespan_context.visible("prompts", servers(ctx)), "resultType": "complete"}

    async def get_prompt(ctx: ServerRequestContext[Proxy], params: GetPromptRequestParams) -> Reply:
        item = find(ctx, "prompts", params.name)
        if item is None:
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown prompt: {params.name}")
        arguments = {"name": item.original["name"], **({"arguments": params.arguments} if params.arguments else {})}
        result = await forward_or_fail(ctx, item, "prompts/get", arguments)
        publish_links(item.owner, [m.get("content") for m in result.get("messages") or () if isinstance(m, dict)])
        return result

    async def list_resources(ctx: ServerRequestContext[Proxy], params: PaginatedRequestParams | None) -> Reply:
        ctx.lifespan_context.remember(ctx)
        return {"resources": ctx.lifespan_context.visible("resources", servers(ctx)), "resultType": "complete"}

    async def subscribe_resource(ctx: ServerRequestContext[Proxy], params: SubscribeRequestParams) -> Reply:
        """2025-11-25: follow one resource; its backend is asked for updates while anyone follows it."""
        proxy, uri, allowed, key = ctx.lifespan_context, str(params.uri), servers(ctx), session_key(ctx)
        item = proxy.resource(uri, allowed)
        if item is None:
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown resource: {uri}", data={"uri": uri})
        if proxy.followable(uri, allowed) is None:
            name = item.owner.backend.name
            raise MCPError(code=METHOD_NOT_FOUND, message=f"The server {name!r} does not offer resource subscriptions")
        following = proxy.followers.setdefault(uri, OrderedDict())
        following[key] = ctx.session
        following.move_to_end(key)
        while len(following) > MAX_FOLLOWERS:  # sessions that went away without unsubscribing
            following.popitem(last=False)
        await proxy.refollow()
        return {}

    async def unsubscribe_resource(ctx: ServerRequestContext[Proxy], params: UnsubscribeRequestParams) -> Reply:
        proxy, uri = ctx.lifespan_context, str(params.uri)
        following = proxy.followers.get(uri, OrderedDict())
        following.pop(session_key(ctx), None)
        if not following:
            proxy.followers.pop(uri, None)
        await proxy.refollow()
        return {}

    async def list_resource_templates(ctx: ServerRequestContext[Proxy], params: PaginatedRequestParams | None) -> Reply:
        templates = ctx.lifespan_context.visible("resourceTemplates", servers(ctx))
        return {"resourceTemplates": templates, "resultType": "complete"}

    async def read_resource(ctx: ServerRequestContext[Proxy], params: ReadResourceRequestParams) -> Reply:
        uri = str(params.uri)
        item = ctx.lifespan_context.resource(uri, servers(ctx))  # listed, or described by a backend's template
        if item is None:
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown resource: {uri}", data={"uri": uri})
        backend = item.owner.backend
        result = await forward_or_fail(ctx, item, "resources/read", {"uri": backend.backend_uri(uri)})
        for content in result.get("contents") or ():  # each says which resource it is: by the name we gave it
            if isinstance(content, dict) and isinstance(content.get("uri"), str):
                content["uri"] = backend.public_uri(content["uri"])
        return result

    async def set_level(ctx: ServerRequestContext[Proxy], params: SetLevelRequestParams) -> Reply:
        await ctx.lifespan_context.set_log_level(ctx, params.level)
        return {}

    async def complete(ctx: ServerRequestContext[Proxy], params: CompleteRequestParams) -> Reply:
        """Completions for a prompt's or a resource template's argument: asked of the backend that offers it."""
        asked = ctx.params or {}
        ref = dict(asked.get("ref") or {})
        if isinstance(params.ref, PromptReference):
            item = find(ctx, "prompts", params.ref.name)
            if item is not None:
                ref["name"] = item.original["name"]
        else:
            uri = params.ref.uri
            item = find(ctx, "resourceTemplates", uri) or find(ctx, "resources", uri)
            if item is not None:
                ref["uri"] = item.original.get("uriTemplate") or item.original.get("uri")
        if item is None:
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown reference: {ref}")
        forwarded = {key: value for key, value in asked.items() if key in ("argument", "context")}
        return await forward_or_fail(ctx, item, "completion/complete", {**forwarded, "ref": ref})

    async def forward_or_fail(ctx: ServerRequestContext[Proxy], item: Item, method: str, params: Message) -> Message:
        """Reads are safe to send again; a backend that cannot answer is a clear protocol error."""
        backend = item.owner.backend
        try:
            return await forward(ctx, item.owner, method, params, safe=True,
                                 timeouts=Timeouts(backend.timeout, backend.max_duration))  # fmt: skip
        except Unavailable as exc:
            raise MCPError(code=-32603, message=str(exc)) from None

    # The SDK warns that logging is deprecated since 2026-07-28; a 2025-11-25 client still sets its level here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        server = Server(
            config.name,
            version=config.version or project_version(),
            instructions="Tools, prompts and resources of several MCP servers; names start with the server's prefix.",
            lifespan=lifespan,
            on_list_tools=list_tools,
            on_call_tool=call_tool,
            on_list_prompts=list_prompts,
            on_get_prompt=get_prompt,
            on_list_resources=list_resources,
            on_list_resource_templates=list_resource_templates,
            on_read_resource=read_resource,
            on_subscribe_resource=subscribe_resource,
            on_unsubscribe_resource=unsubscribe_resource,
            on_subscriptions_listen=Listen(proxy),
            on_completion=complete,
            on_set_logging_level=set_level,
            # Lists depend on the caller's token and change whenever a backend's do: never shared, fresh every time.
            cache_hints={method: CacheHint(ttl_ms=0, scope="private") for method in CACHEABLE_METHODS},  # type: ignore[misc]
            # The SDK checks `Mcp-Param-*` headers against the tool's schema; give it ours, not a tools/list per call.
            get_tool_input_schema=proxy.input_schema,
        )
    return server


serving: list[Proxy] = []  # the running proxy, for /readyz
MAX_SESSIONS = 1000  # 2025-11-25 sessions remembered (to tell of list changes, and their log level), the most recent
FOLLOWER_TIMEOUT = 5.0  # seconds one client may take to take a resource update (or a listen stream to wind down)
MAX_FOLLOWERS = 1000  # 2025-11-25 sessions remembered per followed resource, the most recent


def servers(ctx: ServerRequestContext[Proxy]) -> frozenset[str] | None:
    """Which backends the caller's token opens (None: all of them)."""
    return opened(ctx.request.scope) if isinstance(ctx.request, Request) else None


def session_key(ctx: ServerRequestContext[Proxy]) -> str:
    """Which 2025-11-25 session a request came on (its `Mcp-Session-Id`)."""
    request = ctx.request if isinstance(ctx.request, Request) else None
    return request.headers.get("mcp-session-id", "") if request is not None else "stdio"


class Listen:
    """`subscriptions/listen` (2026-07-28): the SDK's handler, told which resources the stream follows.

    Only URIs of backends the caller's token opens are passed on, so the
    acknowledgement says honestly which ones this stream will hear about;
    while the stream is open their backends are asked for updates.
    """

    def __init__(self, proxy: Proxy) -> None:
        self.proxy, self.handler = proxy, ListenHandler(proxy.bus)

    def close(self) -> None:
        """End every open stream gracefully (on shutdown)."""
        self.handler.close()

    async def __call__(
        self, ctx: ServerRequestContext[Proxy], params: SubscriptionsListenRequestParams
    ) -> SubscriptionsListenResult:
        proxy, allowed = self.proxy, servers(ctx)
        asked = params.notifications.resource_subscriptions or []
        uris = [uri for uri in asked if proxy.followable(uri, allowed) is not None]
        if uris != asked:
            notifications = params.notifications.model_copy(update={"resource_subscriptions": uris or None})
            params = params.model_copy(update={"notifications": notifications})
        proxy.listeners.update(uris)
        try:
            if uris:
                await proxy.refollow()
            return await self.handler(ctx, params)
        finally:
            proxy.listeners.subtract(uris)
            for uri in uris:
                if proxy.listeners[uri] <= 0:
                    del proxy.listeners[uri]
            if uris:
                with anyio.CancelScope(shield=True), anyio.move_on_after(FOLLOWER_TIMEOUT):
                    await proxy.refollow()


class Sender(Protocol):
    """How a call reaches its backend: `forward` for a request the SDK handled, the express lane's own otherwise."""

    async def __call__(
        self,
        connection: Connection,
        method: str,
        params: Message,
        *,
        safe: bool,
        timeouts: Timeouts,
        extra_headers: Mapping[str, str] | None = None,
    ) -> Message: ...


async def call_backend_tool(item: Item, arguments: Mapping[str, Any], send: Sender) -> Message:
    """One tool call to its backend, with what every call gets: its timeouts, a count, and a log line."""
    backend, tool = item.owner.backend, str(item.original["name"])
    annotations = item.original.get("annotations") or {}
    # Sending a call twice is harmless only if the tool says it reads, or that repeating it changes nothing.
    safe = bool(annotations.get("readOnlyHint") or annotations.get("idempotentHint"))
    started, outcome = time.perf_counter(), "ok"
    try:
        result = await send(
            item.owner, "tools/call", {"name": tool, "arguments": dict(arguments)},
            safe=safe, timeouts=Timeouts(backend.idle_timeout(tool), backend.max_duration),
            # A 2026-07-28 backend checks the arguments its schema marks `x-mcp-header` against these headers.
            extra_headers=mcp_param_headers(item.header_params, arguments),
        )  # fmt: skip
        outcome = "tool_error" if result.get("isError") else "ok"
        publish_links(item.owner, result.get("content"))
        return result
    except Unavailable as exc:
        outcome = "unavailable"
        # A tool error, not a protocol error: the model reads it and can decide to try again.
        return {"content": [{"type": "text", "text": str(exc)}], "isError": True, "resultType": "complete"}
    except MCPError as exc:
        outcome = str(exc.error.code)
        raise
    finally:
        calls.add(1, {"server": backend.name, "tool": tool, "outcome": outcome})
        # Arguments and results stay out of the log: they can hold personal data.
        log.info("forwarded", server=backend.name, tool=tool, outcome=outcome,
                 ms=round((time.perf_counter() - started) * 1000, 2), arguments=sorted(arguments))  # fmt: skip


def publish_links(connection: Connection, blocks: Any) -> None:
    """Resource links and embedded resources in an answer, under the URIs clients read them by.

    Only a URI the backend offers itself (listed, or described by one of its
    templates) gets its namespace: a link to anywhere else (`https://…`) is
    not the proxy's to read, and stays as the backend wrote it.
    """
    backend = connection.backend
    if not isinstance(blocks, list) or not backend.public_uri(""):  # a transparent backend's URIs are its own
        return
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        target = block if kind == "resource_link" else block.get("resource") if kind == "resource" else None
        if isinstance(target, dict) and isinstance(uri := target.get("uri"), str) and offers(connection, uri):
            target["uri"] = backend.public_uri(uri)


def offers(connection: Connection, uri: str) -> bool:
    """Whether the backend lists this resource, or one of its templates describes it."""
    if any(resource.get("uri") == uri for resource in connection.items["resources"]):
        return True
    templates = (parse_template(t.get("uriTemplate")) for t in connection.items["resourceTemplates"])
    return any(template is not None and template.match(uri) is not None for template in templates)


def outgoing_meta(caller_meta: Mapping[str, Any], modern_caller: bool, level: str | None = None) -> Message:
    """The `_meta` a backend gets: the caller's, less what belongs to the caller's own exchange with us."""
    # The caller's envelope is not the backend's (the link writes its own), but its log level is its wish.
    meta = {k: v for k, v in caller_meta.items() if k == LOG_LEVEL_META_KEY or not k.startswith(RESERVED_META)}
    meta.pop("progressToken", None)  # the link asks for progress with a token of its own
    propagate.inject(meta)  # traceparent: the backend's span joins the caller's trace
    if not modern_caller:  # a 2025-11-25 session takes every level its own setting lets through
        meta.setdefault(LOG_LEVEL_META_KEY, level or "debug")
    return meta


def backend_headers(connection: Connection, request: Request | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = dict(extra or {})
    if connection.backend.forward_authorization and request is not None and "authorization" in request.headers:
        # TOKEN PASSTHROUGH, on for this backend in the config. The MCP spec forbids it unless the backend
        # is the token's audience: the README says when that holds. Off by default, for every backend.
        headers["authorization"] = request.headers["authorization"]
    return headers


def cleaned(result: Message) -> Message:
    """The backend's answer, made ours: the SDK (or the express lane) stamps our own server info on it."""
    result.setdefault("resultType", "complete")  # 2026-07-28 requires it; a 2025-11-25 backend leaves it out
    meta_out = result.get("_meta")
    if isinstance(meta_out, dict) and SERVER_INFO_KEY in meta_out:
        result["_meta"] = {k: v for k, v in meta_out.items() if k != SERVER_INFO_KEY} or None
    return result


async def express_call(
    item: Item, arguments: Mapping[str, Any], caller_meta: Mapping[str, Any], request: Request
) -> Message:
    """A call the express lane took (express.py): no progress, no log lines, no questions to relay."""

    async def send(
        connection: Connection,
        method: str,
        params: Message,
        *,
        safe: bool,
        timeouts: Timeouts,
        extra_headers: Mapping[str, str] | None = None,
    ) -> Message:
        meta = outgoing_meta(caller_meta, modern_caller=True)
        try:
            result = await connection.request(
                method, {**params, "_meta": meta} if meta else params, safe=safe, timeouts=timeouts,
                headers=backend_headers(connection, request, extra_headers), pass_input_required=True,
                capabilities=caller_meta.get(CLIENT_CAPABILITIES_META_KEY) or {},
            )  # fmt: skip
        except BackendError as exc:
            raise MCPError(code=exc.code, message=exc.message, data=exc.data) from None
        return cleaned(result)

    return await call_backend_tool(item, arguments, send)


async def forward(
    ctx: ServerRequestContext[Proxy],
    connection: Connection,
    method: str,
    params: Message,
    *,
    safe: bool,
    timeouts: Timeouts,
    extra_headers: Mapping[str, str] | None = None,
) -> Message:
    """Send one request to its backend as a plain dict, with what belongs to this call, and clean up the answer."""
    asked = ctx.params or {}
    caller_meta = asked.get("_meta") or {}
    modern_caller = ctx.session.protocol_version >= "2026"
    least = None if modern_caller else ctx.lifespan_context.log_level(ctx)
    meta = outgoing_meta(caller_meta, modern_caller, least)
    wants_progress = "progressToken" in caller_meta
    # A 2026-07-28 caller answers a backend's `input_required` itself and sends the request again with the
    # answers: they go through untouched. A 2025-11-25 caller is asked by the proxy (`relay`) instead.
    # (A requestState of the proxy's own names a parked call; see below. It is never sent to a backend.)
    params = {**params, **{key: asked[key] for key in ("inputResponses", "requestState") if key in asked}}

    async def send(relay: Relay | None, caller: Callable[[], ServerRequestContext[Proxy]]) -> Message:
        async def progress(value: float, total: float | None, message: str | None) -> None:
            await caller().session.report_progress(value, total, message)  # sent with the caller's own token

        async def log_message(message: Mapping[str, Any]) -> None:
            level, now = message.get("level"), caller()
            if level in LOG_LEVELS and (least is None or LOG_LEVELS.index(level) >= LOG_LEVELS.index(least)):
                data, logger = message.get("data"), message.get("logger")
                await now.session.send_log_message(cast(LoggingLevel, level), data, logger, now.request_id)

        async def cut() -> None:  # the backend cut its stream and means to go on: so do we (SEP-1699)
            close = caller().close_sse_stream
            if close is not None:  # (the caller's era resumes streams, and we keep their events to resume from)
                await close()

        return await connection.request(
            method, {**params, "_meta": meta} if meta else params, safe=safe, timeouts=timeouts,
            progress=progress if wants_progress else None, relay=relay, on_log=log_message, on_cut=cut,
            headers=headers,
            pass_input_required=modern_caller, capabilities=declared(ctx, caller_meta),
            legacy=not modern_caller,  # the backend's 2025-11-25 session, if it has one: it carries questions
        )  # fmt: skip

    headers = backend_headers(connection, ctx.request if isinstance(ctx.request, Request) else None, extra_headers)
    try:
        if modern_caller and not connection.modern:
            # A 2025-11-25 backend may ask a question mid-call; this caller can only be asked by an
            # `input_required` result. The call is parked while the caller answers (parking.py). (A 2026-07-28
            # backend asks by an `input_required` result of its own, which goes to the caller as it is.)
            proxy, target = ctx.lifespan_context, (method, str(params.get("name") or params.get("uri")))
            assert proxy.tg is not None
            result = await proxy.parking.call(
                proxy.tg, target, params, ctx, lambda parked: send(parked.ask, lambda: parked.waiter)
            )
        else:
            result = await send(lambda asked, asked_params: ask_client(ctx, asked, asked_params), lambda: ctx)
    except BackendError as exc:
        raise MCPError(code=exc.code, message=exc.message, data=exc.data) from None
    return cleaned(result)


def declared(ctx: ServerRequestContext[Proxy], caller_meta: Mapping[str, Any]) -> Message:
    """What the caller said it can do (what a 2026-07-28 backend may ask of it): per request in 2026-07-28,
    at `initialize` in 2025-11-25."""
    said = caller_meta.get(CLIENT_CAPABILITIES_META_KEY)
    if isinstance(said, dict):
        return said
    capabilities = ctx.session.client_capabilities
    return capabilities.model_dump(by_alias=True, mode="json", exclude_none=True) if capabilities is not None else {}


async def ask_client(ctx: ServerRequestContext[Proxy], method: str, params: Mapping[str, Any] | None) -> Message:
    """A backend asks the user something (elicitation) or wants a completion (sampling): ask the caller."""
    kinds: dict[str, tuple[type[Any], type[Any]]] = {
        "elicitation/create": (ElicitRequest, ElicitResult),
        "sampling/createMessage": (CreateMessageRequest, CreateMessageResult),
    }
    if method not in kinds:
        raise BackendError(-32601, f"Method not found: {method}")
    if not ctx.session.can_send_request:
        raise BackendError(-32601, f"{method}: the client connected without a channel for questions "
                                   "(2026-07-28 without input_required support); connect with 2025-11-25")  # fmt: skip
    request_type, result_type = kinds[method]
    request = request_type.model_validate({"method": method, "params": dict(params or {})})
    try:
        answer = await ctx.session.send_request(
            request, result_type, metadata=ServerMessageMetadata(related_request_id=ctx.request_id)
        )
    except MCPError as exc:
        raise BackendError(exc.error.code, exc.error.message) from None
    dumped: Message = answer.model_dump(by_alias=True, mode="json", exclude_none=True)
    return dumped


def observe_backends(proxy: Proxy) -> None:
    """Gauges read when /metrics is scraped: whether each backend is up, and how often it was restarted."""
    from opentelemetry.metrics import CallbackOptions, Observation

    def up(_options: CallbackOptions) -> list[Observation]:
        return [Observation(int(c.state == "up"), {"server": n}) for n, c in proxy.connections.items()]

    def restarts(_options: CallbackOptions) -> list[Observation]:
        return [Observation(c.restarts, {"server": n}) for n, c in proxy.connections.items()]

    meter.create_observable_gauge("mcp.proxy.backend_up", [up], description="1 while the backend is up")
    meter.create_observable_counter("mcp.proxy.backend_restarts", [restarts], description="Backend restarts")


class FrontDoor:
    """ASGI middleware: with `authTokens` configured, /mcp answers only callers presenting one of them.

    Compared in constant time, so the answer's timing says nothing about how
    much of a guess was right. A token may open only some backends; which,
    is left in the request scope for the handlers. The tokens open the proxy
    only: they are never passed on to a backend.
    """

    def __init__(self, app: ASGIApp, proxy_config: Callable[[], ProxyConfig]) -> None:
        self.app, self.proxy_config = app, proxy_config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tokens = self.proxy_config().auth_tokens
        if scope["type"] == "http" and scope["path"].startswith("/mcp") and tokens:
            offered = bearer_token(Headers(scope=scope).get("authorization"))
            presented = offered.reveal().encode() if offered else b""
            opened: frozenset[str] | bool | None = False
            for token, servers in tokens:  # every token is compared, so timing does not tell which matched
                if hmac.compare_digest(presented, token.encode()):
                    opened = servers
            if opened is False:
                refusal = JSONResponse({"error": "invalid_token"}, 401, headers={"WWW-Authenticate": "Bearer"})
                await refusal(scope, receive, send)
                return
            scope.setdefault("state", {})[SCOPE_KEY] = opened
        await self.app(scope, receive, send)


class HostGuard:
    """ASGI middleware: DNS-rebinding protection on every route, not only /mcp (which the SDK guards itself).

    `/readyz` and `/metrics` tell which backends run, their pids and their
    errors; a web page the user visits must not read them through a rebound
    name. Same allowed hosts and origins as /mcp, checked by the SDK's code.
    """

    def __init__(self, app: ASGIApp, security: TransportSecuritySettings) -> None:
        self.app, self.guard = app, TransportSecurityMiddleware(security)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(MCP_PATH):
            refusal = await self.guard.validate_request(Request(scope))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def readyz(_request: Request) -> JSONResponse:
    """Each backend's state, last error and tool count; 503 while a required backend is not up."""
    if not serving:
        return JSONResponse({"ready": False, "backends": {}}, status_code=503)
    proxy = serving[-1]
    backends = {name: c.health() for name, c in proxy.connections.items()}
    required = [c for c in proxy.connections.values() if c.backend.required]
    ready = bool(backends) and all(c.state == "up" for c in required) and not proxy.conflicts
    body = {"ready": ready, "backends": backends, "quarantined": sorted(proxy.quarantined), "clashes": proxy.conflicts}
    return JSONResponse(body, status_code=200 if ready else 503)


def pins_path(config_path: Path, proxy_config: ProxyConfig) -> Path:
    """Next to the configuration file unless `pinsFile` says otherwise."""
    if proxy_config.pins_file:
        return config_path.parent / proxy_config.pins_file
    return config_path.with_name(config_path.stem + ".pins.json")


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser(__doc__, DEFAULT_PORT)
    parser.add_argument("--config", default=os.environ.get("PROXY_CONFIG", str(DEFAULT_CONFIG)), type=Path,
                        help=f"the backends to aggregate (default: {DEFAULT_CONFIG}; env PROXY_CONFIG)")  # fmt: skip
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

    server = make_server(proxy_config, pins, args.config, refuse)
    server.middleware.append(telemetry_middleware := TelemetryMiddleware())
    current = lambda: serving[-1].config if serving else proxy_config  # noqa: E731 - reload changes the tokens
    routes = [Route("/readyz", readyz), Route("/metrics", metrics_endpoint)]
    try:
        express = Middleware(
            ExpressLane, path=MCP_PATH, security=transport_security(config), call=express_call,
            route=lambda name, scope: serving[-1].express_route(name, scope) if serving else None,
            server_info=server.server_info_stamp, duration=telemetry_middleware.duration,
        )  # fmt: skip
        guard = Middleware(HostGuard, security=transport_security(config))
        # Resumable: a backend that cuts its stream mid-call has the proxy cut its caller's, who then resumes.
        middleware = [guard, Middleware(FrontDoor, proxy_config=current), express]
        serve(server, config, routes=routes, middleware=middleware, resumable=True)
    finally:
        telemetry.shutdown()
    if refusals:
        parser.error(refusals[0])


if __name__ == "__main__":
    main()
