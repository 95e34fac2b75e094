"""The running proxy: its backends, the catalogue they make up, and what it tells clients when either changes.

One `Proxy` lives as long as the server (it is the SDK's lifespan context, so
every handler reaches it as `ctx.lifespan_context`). It starts one supervised
`Connection` per backend (supervisor.py), merges what they offer into the
catalogue (catalogue.py) whenever one of them changes, and tells clients in
their era: `list_changed` and `resources/updated` to 2025-11-25 sessions, the
same news on 2026-07-28 `subscriptions/listen` streams. It also reloads the
configuration file when it changes.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import anyio
import structlog
from anyio.abc import TaskGroup
from calls import BackendError, LinkDown, Timeout, Timeouts
from catalogue import Catalogue, Item, merge
from mcp.server import ServerRequestContext
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.subscriptions import PromptsListChanged, ResourcesListChanged, ResourceUpdated, ToolsListChanged
from mcp.types import LoggingLevel
from opentelemetry import metrics
from parking import ParkingLot
from pins import Pins
from proxy_config import Backend, ConfigError, ProxyConfig, load_config
from starlette.requests import Request
from supervisor import Connection

from shared import INSTRUMENTATION_NAME

CHANGED: dict[str, type[ToolsListChanged | PromptsListChanged | ResourcesListChanged]] = {
    "tools": ToolsListChanged,
    "prompts": PromptsListChanged,
    "resources": ResourcesListChanged,
}
LOG_LEVELS = get_args(LoggingLevel)  # what a backend's log message may say its level is, least to most severe
RELOAD_POLL = 1.0  # seconds between looks at the configuration and pins files
MAX_SESSIONS = 1000  # 2025-11-25 sessions remembered (to tell of list changes, and their log level), the most recent
FOLLOWER_TIMEOUT = 5.0  # seconds one client may take to take a resource update (or a listen stream to wind down)
MAX_FOLLOWERS = 1000  # 2025-11-25 sessions remembered per followed resource, the most recent

log = structlog.get_logger("mcp-proxy")
meter = metrics.get_meter(INSTRUMENTATION_NAME)
list_changed_sent = meter.create_counter("mcp.proxy.list_changed_sent", description="list_changed sent to clients")
resource_updates_sent = meter.create_counter(
    "mcp.proxy.resource_updates", description="resources/updated from a backend relayed to the clients following it"
)


@dataclass
class Proxy:
    """Every backend, the merged catalogue clients see, and who follows what."""

    config: ProxyConfig
    pins: Pins
    connections: dict[str, Connection] = field(default_factory=dict)
    scopes: dict[str, anyio.CancelScope] = field(default_factory=dict)  # stops one backend's supervisor
    catalogue: Catalogue = field(default_factory=Catalogue)
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
        catalogue = merge(self.config.backends, self.connections, self.pins, self.reported)
        if self.live:
            for conflict in set(catalogue.conflicts) - set(self.catalogue.conflicts):
                log.error("name clash; the second server's are left out", clash=conflict)
        self.changed_kinds |= catalogue.changed_since(self.catalogue)
        if _changed is not None:  # what the backend said changed, whatever the listing shows now
            self.changed_kinds |= _changed.told & set(CHANGED)
            _changed.told = set()
        self.catalogue = catalogue
        if self.changed_kinds:
            self.changed.set()
        if (self.followers or self.listeners) and self.tg is not None:
            self.tg.start_soon(self.refollow)  # a followed resource may have a new owner now

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
                        await {
                            "tools": session.send_tool_list_changed,
                            "prompts": session.send_prompt_list_changed,
                            "resources": session.send_resource_list_changed,
                        }[kind]()
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
                if (item := self.catalogue.resource(uri, None)) is not None and item.owner is connection
            )
            if wanted != connection.watched:
                await connection.watch(wanted)

    def followable(self, uri: str, allowed: frozenset[str] | None) -> Item | None:
        """The resource, if a caller whose token opens `allowed` may follow it through us.

        Its backend must offer subscriptions, and must be the one we follow the
        URI at for everybody: a token that opens only another backend whose
        template also matches would otherwise hear about the first one's.
        """
        item = self.catalogue.resource(uri, allowed)
        if item is None or self.catalogue.resource(uri, None) is not item:
            return None
        link = item.owner.link
        return item if link is None or (link.capabilities.get("resources") or {}).get("subscribe") else None

    async def updated(self, connection: Connection, backend_uri: str) -> None:
        """A backend says a resource changed: tell every client that follows it, in the client's era."""
        uri = connection.backend.public_uri(backend_uri)  # what clients follow it by
        item = self.catalogue.resource(uri, None)
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


def mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def session_key(ctx: ServerRequestContext[Proxy]) -> str:
    """Which 2025-11-25 session a request came on (its `Mcp-Session-Id`)."""
    request = ctx.request if isinstance(ctx.request, Request) else None
    return request.headers.get("mcp-session-id", "") if request is not None else "stdio"


def observe_backends(proxy: Proxy) -> None:
    """Gauges read when /metrics is scraped: whether each backend is up, and how often it was restarted."""
    from opentelemetry.metrics import CallbackOptions, Observation

    def up(_options: CallbackOptions) -> list[Observation]:
        return [Observation(int(c.state == "up"), {"server": n}) for n, c in proxy.connections.items()]

    def restarts(_options: CallbackOptions) -> list[Observation]:
        return [Observation(c.restarts, {"server": n}) for n, c in proxy.connections.items()]

    meter.create_observable_gauge("mcp.proxy.backend_up", [up], description="1 while the backend is up")
    meter.create_observable_counter("mcp.proxy.backend_restarts", [restarts], description="Backend restarts")
