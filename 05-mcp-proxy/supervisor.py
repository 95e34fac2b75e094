"""Keep one backend connected: start it, list what it offers, restart it when it dies, say honestly how it is.

One `Connection` per backend runs `supervise()` for as long as the backend is
configured. The rules, each from a complaint users of other proxies keep filing:

- A backend that dies is restarted with exponential backoff. A stdio one
  that keeps dying right after it starts (a crash loop) is given up on after
  `restart.max` tries, and /readyz says so.
- An HTTP backend that cannot be reached is a server elsewhere, not a crash
  loop: it is tried again with the same (capped) backoff however long it is
  away, as is any backend that never came up. /readyz says when the next try is.
- A call waiting for a backend is woken the moment it is back, even when it
  began waiting while the broken link was still being torn down.
- A quick restart keeps the backend's tools listed (calls wait for it, up to
  `PATIENCE`); a backend down for longer has its tools withdrawn, and they
  come back with it.
- A call is sent again only when that cannot do harm: it never reached the
  backend, or it reads and does not change anything.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup
from calls import BackendError, Cut, LinkDown, LogRelay, Message, Progress, Relay, Timeout, Timeouts
from http_link import HttpLink
from link import PROTOCOL_VERSION, Link
from machine_auth import MachineToken
from proxy_config import Backend
from stdio_link import StdioLink

log = structlog.get_logger("mcp-proxy.supervisor")

# What a backend may offer: the list method, and the capability that says it offers it.
LISTS = {
    "tools": ("tools/list", "tools"),
    "prompts": ("prompts/list", "prompts"),
    "resources": ("resources/list", "resources"),
    "resourceTemplates": ("resources/templates/list", "resources"),
}
MAX_PAGES = 100  # a backend whose cursors never end is cut off here
DEBOUNCE = 0.25  # seconds: a burst of list_changed from one backend is one re-listing
STABLE_AFTER = 30.0  # seconds up after which a crash no longer counts toward the crash loop
PATIENCE = 10.0  # seconds a call waits for a restarting backend, and its tools stay listed while it is down


class Unavailable(Exception):
    """The backend cannot take the call now; the message says why in words for the caller."""


@dataclass
class Connection:
    """One backend as the proxy sees it now, and the loop that keeps it alive."""

    backend: Backend
    on_change: Callable[[Connection], None]  # what it offers changed (or it came or went)
    on_updated: Callable[[Connection, str], Awaitable[None]]  # a resource clients follow changed
    state: str = "starting"  # starting | up | restarting | failed | crashed | stopped
    error: str | None = None
    link: Link | None = None
    # A 2025-11-25 session beside a 2026-07-28 link, for 2025-11-25 callers: only a session carries the
    # questions a backend asks mid-call (elicitation, sampling), and a caller of that era expects them.
    legacy: Link | None = None
    items: dict[str, list[Message]] = field(default_factory=lambda: {kind: [] for kind in LISTS})
    restarts: int = 0
    last_ok_at: float | None = None  # wall-clock time of the last answer from the backend
    ready: anyio.Event = field(default_factory=anyio.Event)  # set while the backend is up (or given up on)
    next_try: float | None = None  # when (anyio's clock) it is tried again, while it is down
    settled: anyio.Event = field(default_factory=anyio.Event)  # set once the first start succeeded or failed
    tg: TaskGroup | None = None
    relisting: bool = False
    # The lists the backend said changed since the proxy last looked: clients are told even if the proxy's
    # listing comes out the same (a tool added and taken away again is news a client may need).
    told: set[str] = field(default_factory=set)
    watched: frozenset[str] = frozenset()  # resource URIs clients follow: asked for again on every new link
    watching: anyio.Lock = field(default_factory=anyio.Lock)  # one change of `watched` at a time reaches the link
    machine: MachineToken | None = None  # the proxy's own token for the backend, when its entry has `oauth`

    @property
    def modern(self) -> bool:
        """Whether the backend is spoken to in 2026-07-28 (it then asks its questions by `input_required`)."""
        return self.link is not None and self.link.modern

    @property
    def pid(self) -> int | None:
        return self.link.pid if self.link is not None else None

    def health(self) -> dict[str, Any]:
        next_try_in = None if self.next_try is None else max(self.next_try - anyio.current_time(), 0.0)
        return {
            "state": self.state,
            "error": self.error,
            "tools": len(self.items["tools"]),
            "restarts": self.restarts,
            "pid": self.pid,
            "protocol": self.link.protocol_version if self.link is not None else None,
            "last_ok_at": self.last_ok_at,
            "next_try_in": None if next_try_in is None else round(next_try_in, 2),  # seconds
            "next_try_at": None if next_try_in is None else time.time() + next_try_in,  # wall clock, as last_ok_at
        }

    def went_down(self) -> None:
        """No link to give calls; they wait on `ready` for the next one.

        The event is replaced only once it was set: calls that began waiting
        on the unset one (while a link was torn down, or a restart failed) are
        the ones its next `set()` must wake.
        """
        self.link = self.legacy = None
        if self.ready.is_set():
            self.ready = anyio.Event()

    def open_link(self) -> AbstractAsyncContextManager[Link]:
        backend = self.backend
        if backend.command:
            return StdioLink.open(
                backend.name, backend.command, backend.args, backend.env, backend.cwd, self.notified, backend.protocol
            )
        assert backend.url is not None
        if backend.oauth is not None and self.machine is None:  # kept across restarts: a token outlives a link
            self.machine = MachineToken(backend.url, backend.oauth)
        return HttpLink.open(backend.name, backend.url, backend.headers, self.notified, backend.protocol, self.machine)

    async def supervise(self) -> None:
        """Run until cancelled: connect, serve, and on failure wait and connect again."""
        failures = 0
        ever_up = False
        down_since = anyio.current_time()
        while True:
            started = anyio.current_time()
            try:
                async with (
                    self.open_link() as link,
                    self.legacy_session(link) as self.legacy,
                    anyio.create_task_group() as tg,
                ):
                    await self.relist(link)
                    self.link, self.tg, self.state, self.error = link, tg, "up", None
                    self.last_ok_at = time.time()
                    ever_up = True
                    self.ready.set()
                    self.settled.set()
                    self.on_change(self)
                    tg.start_soon(self.watch)
                    log.info("backend up", backend=self.backend.name, pid=link.pid, tools=len(self.items["tools"]))
                    await link.closed.wait()
                    # From now on a call waits for the restart rather than finding the broken link.
                    self.went_down()
                    self.error = link.reason
                    tg.cancel_scope.cancel()
            except Exception as exc:  # whatever went wrong is this backend's state, not the proxy's
                self.error = describe(exc)
            self.went_down()
            self.tg = None
            self.settled.set()
            was_up = self.state == "up"
            if was_up:
                down_since = anyio.current_time()
            if anyio.current_time() - started > STABLE_AFTER:
                failures = 0
            failures += 1
            if was_up:
                self.restarts += 1
            restart = self.backend.restart
            crash_loop = self.backend.command is not None and failures > restart.max  # (HTTP: never one)
            if ever_up and (not restart.enabled or crash_loop):
                self.state = "crashed"
                self.withdraw()
                self.ready.set()  # calls waiting for it hear at once that it is not coming back
                log.error(
                    "backend keeps crashing; not restarting it again" if restart.enabled else "backend stopped",
                    backend=self.backend.name,
                    error=self.error,
                    restarts=self.restarts,
                )
                return
            self.state = "restarting" if ever_up else "failed"
            delay = min(restart.delay * 2 ** min(failures - 1, 64), restart.max_delay)  # (2**1024 overflows a float)
            log.warning("backend down", backend=self.backend.name, error=self.error, retry_in=round(delay, 2))
            self.next_try = anyio.current_time() + delay
            # Down for as long as a call would wait for it: its tools go until it is back.
            withdraw_in = max(down_since + PATIENCE - anyio.current_time(), 0.0)
            if withdraw_in <= delay:
                await anyio.sleep(withdraw_in)
                self.withdraw()
                delay -= withdraw_in
            await anyio.sleep(delay)
            self.next_try = None

    @asynccontextmanager
    async def legacy_session(self, link: Link) -> AsyncIterator[Link | None]:
        """A 2025-11-25 session to a backend that also offers 2026-07-28, when the proxy chose the era itself."""
        backend = self.backend
        if not link.modern or backend.url is None or backend.protocol != "auto":
            yield None
            return
        async with AsyncExitStack() as stack:
            legacy: Link | None = None
            try:
                legacy = await stack.enter_async_context(
                    HttpLink.open(
                        backend.name, backend.url, backend.headers, self.notified, PROTOCOL_VERSION, self.machine
                    )
                )
            except Exception as exc:  # it still serves 2026-07-28 callers, and 2025-11-25 ones through that
                log.warning("backend refused a 2025-11-25 session", backend=backend.name, error=describe(exc))
            yield legacy

    def withdraw(self) -> None:
        if any(self.items.values()):
            self.items = {kind: [] for kind in LISTS}
            self.on_change(self)

    async def relist(self, link: Link) -> None:
        """Ask the backend for everything it offers, every page of it."""
        capabilities = link.capabilities
        items: dict[str, list[Message]] = {kind: [] for kind in LISTS}
        for kind, (method, capability) in LISTS.items():
            if capability in capabilities:
                items[kind] = await list_all(link, method, kind)
        items["tools"] = [tool for tool in items["tools"] if self.backend.offers(str(tool.get("name")))]
        self.items = items

    async def notified(self, method: str, params: Mapping[str, Any] | None) -> None:
        """What the backend tells us unasked."""
        if method.endswith("/list_changed") and self.tg is not None:
            self.told.add(method.split("/")[1])
            if not self.relisting:
                self.relisting = True
                self.tg.start_soon(self.relist_soon)
        elif method == "notifications/resources/updated" and params is not None and isinstance(params.get("uri"), str):
            with anyio.CancelScope(shield=True):  # reopening our listen stream must not cut a relay short
                await self.on_updated(self, params["uri"])
        elif method == "notifications/message" and params is not None:
            log.info("backend log", backend=self.backend.name, level=params.get("level"), logger=params.get("logger"))

    async def watch(self, uris: frozenset[str] | None = None) -> None:
        """Follow exactly these resources of the backend (None: the last ones asked for), now and after restarts.

        Changes reach the link one at a time, and each time it is given the
        latest set: a change made while an earlier one is on its way is not
        overtaken by it.
        """
        if uris is not None:
            self.watched = uris
        async with self.watching:
            for _ in range(3):  # a link that broke midway is given the set again, a few times
                link = self.link
                if link is None or link.following == self.watched:
                    return
                await link.follow(self.watched)

    async def relist_soon(self) -> None:
        await anyio.sleep(DEBOUNCE)
        self.relisting = False
        if self.link is not None:
            try:
                await self.relist(self.link)
            except (BackendError, LinkDown, Timeout) as exc:
                log.warning("backend could not be listed again", backend=self.backend.name, error=describe(exc))
                return
            self.on_change(self)

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        *,
        safe: bool,
        timeouts: Timeouts,
        progress: Progress | None = None,
        relay: Relay | None = None,
        on_log: LogRelay | None = None,
        on_cut: Cut | None = None,
        headers: Mapping[str, str] | None = None,
        pass_input_required: bool = False,
        capabilities: Mapping[str, Any] | None = None,
        legacy: bool = False,
    ) -> Message:
        """Forward one request; on a broken link, send it once more only when that cannot do harm.

        `legacy` asks for the backend's 2025-11-25 session, where it has one beside its 2026-07-28 link.
        """
        for attempt in (1, 2):
            link = await self.wait_ready()
            if legacy and self.legacy is not None and not self.legacy.closed.is_set():
                link = self.legacy
            try:
                result = await link.request(
                    method,
                    params,
                    progress=progress,
                    relay=relay,
                    on_log=on_log,
                    on_cut=on_cut,
                    timeouts=timeouts,
                    headers=headers,
                    pass_input_required=pass_input_required,
                    capabilities=capabilities,
                )
            except LinkDown as exc:
                if attempt == 2 or (exc.sent and not safe):
                    consequence = (
                        "it may have done part of the work, so the proxy did not send it again"
                        if exc.sent
                        else "the call never reached it"
                    )
                    raise Unavailable(
                        f"the server {self.backend.name!r} went away during the call ({exc}); {consequence}"
                    ) from None
                log.info("backend went away; sending the call again", backend=self.backend.name, method=method)
                continue
            except Timeout as exc:
                raise Unavailable(f"the server {self.backend.name!r} did not answer: {exc}") from None
            self.last_ok_at = time.time()
            return result
        raise AssertionError("unreachable")

    async def wait_ready(self, patience: float = PATIENCE) -> Link:
        """The live link; while a restart is under way, wait for it a little."""
        if self.link is None and self.state in ("starting", "restarting", "up"):  # "up": it just broke
            with anyio.move_on_after(patience):
                await self.ready.wait()
        if self.link is None:
            raise Unavailable(f"the server {self.backend.name!r} is not available: {self.error or self.state}")
        return self.link


async def list_all(link: Link, method: str, key: str) -> list[Message]:
    found: list[Message] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await link.request(method, {"cursor": cursor} if cursor else None, timeouts=Timeouts(30, 60))
        found.extend(item for item in page.get(key) or [] if isinstance(item, dict))
        cursor = page.get("nextCursor")
        if not isinstance(cursor, str):
            break
    return found


def describe(exc: BaseException) -> str:
    """One line about what went wrong, from inside the exception groups task groups wrap errors in."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError | BackendError) or type(exc).__module__.startswith("httpx"):
        text = f"{type(exc).__name__}: {text}"
    return text[:300]
