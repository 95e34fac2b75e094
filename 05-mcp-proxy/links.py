"""Lean JSON-RPC links from the proxy to one backend: a stdio subprocess, or a streamable-HTTP server.

Why not the SDK's `Client`? It is the right tool for an application, but a
proxy only relays: parsing every message into full models on the way in and
dumping it again on the way out cost more than the backend's own work (the
figures are in bench/README.md). A link keeps messages as plain dicts,
checks only what it needs to route them, and leaves validating to the two
ends that own the data.

Toward backends a link speaks either era. Over stdio, and to any server that
does not offer 2026-07-28, it is the 2025-11-25 handshake: every MCP server
understands it, and its session gives the backend a channel to push progress,
`list_changed` and questions for the user (elicitation, sampling) back to us.
To an HTTP server that offers 2026-07-28 (found by asking `server/discover`)
each request stands alone: no session to lose when the backend restarts,
answers as plain JSON when there is nothing to stream, questions for the user
as `input_required` results, and `list_changed` on a `subscriptions/listen`
stream.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import select
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpcore2
import structlog
from anyio.abc import ByteReceiveStream, Process, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream
from machine_auth import MachineAuthError, MachineToken
from mcp.shared.inbound import NAME_BEARING_METHODS, encode_header_value
from mcp_types import CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, PROTOCOL_VERSION_META_KEY

log = structlog.get_logger("mcp-proxy.links")

PROTOCOL_VERSION = "2025-11-25"  # the handshake era
MODERN = "2026-07-28"  # the era of self-contained requests
MAX_INPUT_ROUNDS = 10  # a backend that keeps asking for input is given up on after this many answers
CLIENT_INFO = {"name": "mcp-workshop-proxy", "version": "1.0.0"}
# What the proxy can do for a backend: pass its questions on to the client that made the call.
CLIENT_CAPABILITIES = {"elicitation": {"form": {}}, "sampling": {}, "roots": {"listChanged": False}}
# What every 2026-07-28 request carries in `_meta`, in place of a handshake.
ENVELOPE = {
    PROTOCOL_VERSION_META_KEY: MODERN,
    CLIENT_CAPABILITIES_META_KEY: CLIENT_CAPABILITIES,
    CLIENT_INFO_META_KEY: CLIENT_INFO,
}
# The news a 2026-07-28 `subscriptions/listen` asks for: every list that can change.
LIST_CHANGES = {"toolsListChanged": True, "promptsListChanged": True, "resourcesListChanged": True}
FOLLOW_WAIT = 5.0  # seconds a change of followed resources waits for a 2026-07-28 backend to acknowledge it
MAX_LINE = 16 * 1024 * 1024  # one JSON-RPC message over stdio
STDERR_TAIL = 2000  # characters of a dead backend's last words kept for /readyz
# A call's time is bounded by `Timeouts`, not by the socket: no read timeout, so a long call or an idle
# listening stream is not cut off.
HTTP_TIMEOUTS = {"timeout": {"connect": 30.0, "read": None, "write": 30.0, "pool": 30.0}}
TRANSPORT_ERRORS = (httpcore2.NetworkError, httpcore2.ProtocolError, httpcore2.TimeoutException)
CONNECT_ERRORS = (httpcore2.ConnectError, httpcore2.ConnectTimeout)  # the backend cannot be reached at all
NOT_SENT = (*CONNECT_ERRORS, httpcore2.PoolTimeout)  # failures before a byte of the request left
LINE_END = re.compile(rb"\r\n|\n|\r")
RESUME_DELAY = 1.0  # seconds before coming back to a cut stream whose server named no `retry` (the SDK's client's)
MAX_RESUME_FAILURES = 2  # tries in a row that bring nothing before a cut call is given up, as the SDK's client

Message = dict[str, Any]
Progress = Callable[[float, float | None, str | None], Awaitable[None]]
Relay = Callable[[str, Mapping[str, Any] | None], Awaitable[Message]]
LogRelay = Callable[[Mapping[str, Any]], Awaitable[None]]  # a backend's log message about one call
Cut = Callable[[], Awaitable[None]]  # the backend cut a call's stream, meaning to go on: cut the caller's too
NotificationHandler = Callable[[str, Mapping[str, Any] | None], Awaitable[None]]


class BackendError(Exception):
    """The backend answered with a JSON-RPC error: passed on to the caller as it came."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


class LinkDown(Exception):
    """The link broke (the process exited, the connection was lost) before the answer came.

    `sent` says whether the request may have reached the backend: a call that
    was never sent can always be tried again, one that was sent only when it
    is safe to repeat.
    """

    def __init__(self, reason: str, *, sent: bool = True) -> None:
        super().__init__(reason)
        self.sent = sent


class Timeout(Exception):
    """No answer and no progress within the idle timeout, or no answer within the hard cap."""


@dataclass
class Call:
    """One request in flight toward the backend."""

    id: int
    progress: Progress | None = None
    relay: Relay | None = None
    log: LogRelay | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    cut: Cut | None = None
    answered: anyio.Event = field(default_factory=anyio.Event)
    response: Message | None = None
    clock: anyio.CancelScope | None = None  # its deadline is the idle timeout, pushed on by progress
    idle: float = math.inf
    give_up: float = math.inf
    background: bool = False  # a `subscriptions/listen` held open: no call of anybody's

    def settle(self, response: Message) -> None:
        self.response = response
        self.answered.set()

    def touch(self, idle: float | None = None) -> None:
        """The backend is still working on it: start the idle clock again (`math.inf` stops it)."""
        if self.clock is not None:
            self.clock.deadline = min(anyio.current_time() + (self.idle if idle is None else idle), self.give_up)

    async def on_progress(self, params: Mapping[str, Any]) -> None:
        self.touch()
        if self.progress is not None:
            progress = params.get("progress")
            if isinstance(progress, int | float):
                total, message = params.get("total"), params.get("message")
                await self.progress(
                    float(progress),
                    float(total) if isinstance(total, int | float) else None,
                    message if isinstance(message, str) else None,
                )


@dataclass
class Timeouts:
    """`idle`: how long a call may go without an answer or a progress report; `total`: the hard cap."""

    idle: float = 60.0
    total: float = 600.0


class Link:
    """What both kinds of link share: request ids, calls in flight, and what the backend sends unasked."""

    def __init__(self, name: str, on_notification: NotificationHandler) -> None:
        self.name = name
        self.on_notification = on_notification
        self.ids = itertools.count(1)
        self.calls: dict[int, Call] = {}
        self.closed = anyio.Event()
        self.reason = ""
        self.server_info: Message = {}
        self.capabilities: Message = {}
        self.pid: int | None = None
        self.protocol_version = PROTOCOL_VERSION
        self.following: frozenset[str] = frozenset()  # resource URIs clients want `resources/updated` about
        self.listening: anyio.CancelScope | None = None  # the 2026-07-28 listen stream, to reopen with a new filter
        # Set when the backend acknowledged our listen stream's filter, or when there is no stream to wait for.
        self.listen_settled = anyio.Event()

    @property
    def modern(self) -> bool:
        return self.protocol_version == MODERN

    def close(self, reason: str) -> None:
        """Mark the link broken and fail every call still waiting on it."""
        if self.closed.is_set():
            return
        self.reason = reason
        self.closed.set()
        self.listen_settled.set()
        for call in list(self.calls.values()):
            call.answered.set()  # `response` stays None: the caller raises LinkDown

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        progress: Progress | None = None,
        relay: Relay | None = None,
        on_log: LogRelay | None = None,
        on_cut: Cut | None = None,
        timeouts: Timeouts | None = None,
        headers: Mapping[str, str] | None = None,
        pass_input_required: bool = False,
        capabilities: Mapping[str, Any] | None = None,
    ) -> Message:
        """Send one request and wait for its result; the backend's error is raised as `BackendError`.

        `headers` go with this request only, and only over HTTP. `capabilities`
        are what the caller declared: a 2026-07-28 backend is told those, no
        more, so it asks only what the caller can answer. A 2026-07-28
        backend that needs input first answers `input_required`: the link asks
        `relay` and sends the request again with the answers, unless
        `pass_input_required` says the caller (a 2026-07-28 client) answers
        such results itself.
        """
        body: Message = dict(params or {})
        wait = 0.05  # after a round that brought only state, as the SDK's client does: doubling, up to 0.25 s
        for _ in range(MAX_INPUT_ROUNDS):
            result = await self.exchange(
                method,
                body,
                progress=progress,
                relay=relay,
                on_log=on_log,
                on_cut=on_cut,
                timeouts=timeouts,
                headers=headers,
                capabilities=capabilities,
            )
            if result.get("resultType") != "input_required" or relay is None or pass_input_required:
                return result
            body = {key: value for key, value in body.items() if key not in ("inputResponses", "requestState")}
            retry = await self.fulfil(result, relay)
            if "inputResponses" in retry:
                wait = 0.05
            else:  # only state came back: the backend is still working on it
                await anyio.sleep(wait)
                wait = min(wait * 2, 0.25)
            body.update(retry)
        raise BackendError(-32603, f"the backend asked for input more than {MAX_INPUT_ROUNDS} times")

    async def fulfil(self, result: Message, relay: Relay) -> Message:
        """Answer the questions of an `input_required` result; what goes into the next try of the request."""
        asked = result.get("inputRequests") if isinstance(result.get("inputRequests"), dict) else {}
        answers: Message = {}
        for key, question in (asked or {}).items():
            question = question if isinstance(question, dict) else {}
            if question.get("method") == "roots/list":
                answers[key] = {"roots": []}
            else:
                answers[key] = await relay(str(question.get("method")), question.get("params"))
        retry: Message = {"inputResponses": answers} if answers else {}
        if "requestState" in result:
            retry["requestState"] = result["requestState"]  # opaque: passed back exactly as it came
        return retry

    async def exchange(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        progress: Progress | None = None,
        relay: Relay | None = None,
        on_log: LogRelay | None = None,
        on_cut: Cut | None = None,
        timeouts: Timeouts | None = None,
        headers: Mapping[str, str] | None = None,
        capabilities: Mapping[str, Any] | None = None,
    ) -> Message:
        """One request, one answer."""
        if self.closed.is_set():
            raise LinkDown(self.reason, sent=False)
        call = Call(next(self.ids), progress, relay, on_log, headers=headers or {}, cut=on_cut)
        call.background = method == "subscriptions/listen"
        body: Message = dict(params or {})
        meta = dict(body.get("_meta") or {})
        # The client's token means nothing to the backend: ours is asked for always, since progress also
        # restarts the idle clock, and `Call.progress` passes it on with the client's token if it asked.
        meta["progressToken"] = call.id
        if self.modern:
            meta.update(ENVELOPE)
            if capabilities is not None:
                meta[CLIENT_CAPABILITIES_META_KEY] = capabilities
        if meta:
            body["_meta"] = meta
        else:
            body.pop("_meta", None)
        self.calls[call.id] = call
        timeouts = timeouts or Timeouts()
        call.idle, call.give_up = timeouts.idle, anyio.current_time() + timeouts.total
        try:
            with anyio.CancelScope() as call.clock:
                call.touch()
                await self.deliver({"jsonrpc": "2.0", "id": call.id, "method": method, "params": body}, call)
                await call.answered.wait()
            if call.clock.cancelled_caught and not call.answered.is_set():
                limit = "total" if anyio.current_time() >= call.give_up else "idle"
                raise Timeout(f"no answer within the {limit} timeout of {getattr(timeouts, limit):g} s")
        except (Timeout, anyio.get_cancelled_exc_class()):
            if not call.answered.is_set() and not self.closed.is_set() and not self.cancels_by_closing:
                # Cancelled by our caller or timed out: tell the backend to stop working on it. (Over HTTP in
                # 2026-07-28 closing the request's stream says it, and that happened as the cancellation unwound.)
                with anyio.CancelScope(shield=True), suppress(Exception), anyio.move_on_after(2):
                    await self.notify("notifications/cancelled", {"requestId": call.id, "reason": "cancelled"})
            raise
        finally:
            self.calls.pop(call.id, None)
        response = call.response
        if response is None:
            raise LinkDown(self.reason or "the backend went away")
        if "error" in response:
            error = response["error"] if isinstance(response["error"], dict) else {}
            raise BackendError(int(error.get("code", -32603)), str(error.get("message", "error")), error.get("data"))
        result = response.get("result")
        return result if isinstance(result, dict) else {}

    async def deliver(self, message: Message, call: Call) -> None:
        raise NotImplementedError

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        raise NotImplementedError

    async def handle(self, message: Message, call: Call | None = None) -> Message | None:
        """Route one message the backend sent; returns the answer when it asked us something."""
        method = message.get("method")
        if not isinstance(method, str):  # a response to one of our requests
            owner = self.calls.get(message.get("id"))  # type: ignore[arg-type]
            if owner is not None:
                owner.settle(message)
            return None
        params = message.get("params") if isinstance(message.get("params"), dict) else None
        if "id" not in message:
            if method == "notifications/progress" and params is not None:
                owner = self.calls.get(params.get("progressToken"))
                if owner is not None:
                    await owner.on_progress(params)
            elif method == "notifications/subscriptions/acknowledged":
                self.listen_settled.set()  # the backend follows what our listen stream asked for, from now on
            elif method == "notifications/message" and params is not None and (owner := self.owner(call)):
                if owner.log is not None:
                    await owner.log(params)  # about this call: to the client that made it
            else:
                await self.on_notification(method, params)
            return None
        return {"jsonrpc": "2.0", "id": message["id"], **await self.answer(method, params, call)}

    async def answer(self, method: str, params: Mapping[str, Any] | None, call: Call | None) -> Message:
        """The backend asks something: the proxy answers what it can, and relays questions for the user."""
        if method == "ping":
            return {"result": {}}
        if method == "roots/list":
            return {"result": {"roots": []}}
        call = self.owner(call)
        if call is None:
            return {"error": {"code": -32601, "message": f"{method}: no client to ask (several calls in flight)"}}
        if call.relay is None:
            why = "the caller connected with 2026-07-28, which carries no questions mid-call; use 2025-11-25"
            return {"error": {"code": -32601, "message": f"{method}: {why}"}}
        call.touch(idle=math.inf)  # a human may take a while to answer: that is not idleness
        try:
            return {"result": await call.relay(method, params)}
        except BackendError as exc:
            return {"error": {"code": exc.code, "message": exc.message}}
        finally:
            call.touch()

    def owner(self, call: Call | None) -> Call | None:
        """The call a message from the backend is about: over HTTP, the one whose answer stream carried it."""
        return call

    async def discover(self, *, required: bool) -> bool:
        """Ask whether the backend speaks 2026-07-28; if it does, use it (no session, plain JSON answers)."""
        self.protocol_version = MODERN
        try:
            result = await self.request("server/discover", timeouts=Timeouts(idle=30, total=30))
        except BackendError:
            if required:
                raise
            result = {}
        if MODERN not in (result.get("supportedVersions") or []):
            if required:
                raise BackendError(-32022, f"the backend does not offer {MODERN}")
            self.protocol_version = PROTOCOL_VERSION  # a 2025-era server: the handshake it is
            return False
        self.server_info = result.get("serverInfo") or {}
        self.capabilities = result.get("capabilities") or {}
        return True

    async def subscribe(self) -> None:
        """2026-07-28: `list_changed` comes on a `subscriptions/listen` request that stays open while we listen."""
        while not self.closed.is_set():
            self.listening = scope = anyio.CancelScope()
            with scope, suppress(BackendError, LinkDown, Timeout):
                forever = Timeouts(math.inf, math.inf)
                await self.request("subscriptions/listen", {"notifications": self.listen_filter()}, timeouts=forever)
            if not scope.cancel_called:
                self.listen_settled.set()
                return  # the backend ended it: as of the last listing
            # `follow` closed it on purpose (the cancellation tells the backend): reopen with the new filter

    def listen_filter(self) -> Message:
        """What our 2026-07-28 listen stream asks for: every list change, and the resources clients follow."""
        if not self.following:
            return LIST_CHANGES
        return {**LIST_CHANGES, "resourceSubscriptions": sorted(self.following)}

    async def follow(self, uris: frozenset[str]) -> None:
        """Ask the backend for `notifications/resources/updated` about exactly these resources, no more.

        In 2026-07-28 the URIs are part of the listen stream's filter, so the
        stream is reopened with the new one. In 2025-11-25 each is a
        `resources/subscribe` (or `unsubscribe`) on our session, if the backend
        says it supports them.
        """
        before, self.following = self.following, uris
        if uris == before:
            return
        if self.modern:
            self.listen_settled = settled = anyio.Event()
            if self.listening is not None:
                self.listening.cancel()
            with anyio.move_on_after(FOLLOW_WAIT):  # so that a client's own acknowledgement promises no more
                await settled.wait()  # than the backend does (an update in between would be lost)
            return
        if not (self.capabilities.get("resources") or {}).get("subscribe"):
            return
        for method, changed in (("resources/unsubscribe", before - uris), ("resources/subscribe", uris - before)):
            for uri in sorted(changed):
                try:
                    await self.request(method, {"uri": uri}, timeouts=Timeouts(idle=30, total=30))
                except LinkDown:
                    self.following = before  # not all of it reached the backend: the next `watch` tries again
                    return
                except (BackendError, Timeout) as exc:
                    log.warning("backend refused a resource subscription", backend=self.name, uri=uri,
                                method=method, error=str(exc))  # fmt: skip

    @property
    def cancels_by_closing(self) -> bool:
        """Whether ending our side of a request tells the backend it is cancelled (2026-07-28 over HTTP)."""
        return False

    async def initialize(self) -> None:
        """The 2025-11-25 handshake: our capabilities out, the backend's info and capabilities back."""
        params = {"protocolVersion": PROTOCOL_VERSION, "capabilities": CLIENT_CAPABILITIES, "clientInfo": CLIENT_INFO}
        result = await self.request("initialize", params, timeouts=Timeouts(idle=30, total=30))
        self.server_info = result.get("serverInfo") or {}
        self.capabilities = result.get("capabilities") or {}
        await self.notify("notifications/initialized")


class StdioLink(Link):
    """A backend run as a subprocess: newline-delimited JSON-RPC on its stdin and stdout."""

    def __init__(self, name: str, process: Process, on_notification: NotificationHandler) -> None:
        super().__init__(name, on_notification)
        self.process = process
        self.pid = process.pid
        self.write_lock = anyio.Lock()
        self.stderr_tail = ""

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        name: str,
        command: str,
        args: tuple[str, ...],
        env: Mapping[str, str],
        cwd: str | None,
        on_notification: NotificationHandler,
        protocol: str = "auto",
    ) -> AsyncIterator[StdioLink]:
        # The backend gets a small base environment plus its own `env`: never the proxy's secrets.
        base = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TMPDIR") if key in os.environ}
        process = await anyio.open_process([command, *args], env={**base, **env}, cwd=cwd and Path(cwd))
        link = cls(name, process, on_notification)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(link.read_messages, tg)
                tg.start_soon(link.read_stderr)
                # Over stdio `auto` is the handshake: its session carries a backend's questions mid-call.
                if protocol == MODERN:
                    await link.discover(required=True)
                    tg.start_soon(link.subscribe)
                else:
                    await link.initialize()
                yield link
                tg.cancel_scope.cancel()
        finally:
            link.close(link.reason or "stopped")
            await link.stop()

    async def stop(self) -> None:
        """Close stdin, then ask, then insist: a backend gets 3 s to exit on its own, 2 more after SIGTERM."""
        with anyio.CancelScope(shield=True):
            with suppress(Exception):
                assert self.process.stdin is not None
                await self.process.stdin.aclose()
            for signal_next, patience in ((self.process.terminate, 3.0), (self.process.kill, 2.0)):
                with anyio.move_on_after(patience):
                    await self.process.wait()
                if self.process.returncode is not None:
                    break
                with suppress(ProcessLookupError):
                    signal_next()
            with suppress(Exception):
                await self.process.aclose()  # waits, and closes the pipes: no file descriptor is left behind

    def owner(self, call: Call | None) -> Call | None:
        """Over stdio nothing marks which call a message is about; with one call in flight, it is that one."""
        in_flight = [c for c in self.calls.values() if not c.background] if call is None else []
        return in_flight[0] if len(in_flight) == 1 else call

    async def deliver(self, message: Message, call: Call) -> None:
        await self.send(message, sent=False)

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        await self.send({"jsonrpc": "2.0", "method": method, **({"params": dict(params)} if params else {})})

    async def send(self, message: Message, *, sent: bool = True) -> None:
        data = encode(message) + b"\n"
        try:
            async with self.write_lock:
                assert self.process.stdin is not None
                await self.process.stdin.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self.close(self.exit_reason(exc))
            raise LinkDown(self.reason, sent=sent) from None

    async def read_messages(self, tg: TaskGroup) -> None:
        assert self.process.stdout is not None
        stream = BufferedByteReceiveStream(self.process.stdout)
        try:
            while True:
                line = await stream.receive_until(b"\n", MAX_LINE)
                try:
                    message = json.loads(line)
                except ValueError:
                    log.warning("backend wrote a line that is not JSON-RPC", backend=self.name, bytes=len(line))
                    continue
                if isinstance(message, dict):
                    if "method" in message and "id" in message:
                        tg.start_soon(self.answer_request, message)  # may wait on a human: never block the reader
                    else:
                        await self.handle(message)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
        except anyio.DelimiterNotFound:
            log.warning("backend wrote a line over the size limit", backend=self.name, limit=MAX_LINE)
        with anyio.move_on_after(1):
            await self.process.wait()
        self.close(self.exit_reason())

    async def answer_request(self, message: Message) -> None:
        answer = await self.handle(message)
        if answer is not None:
            with suppress(LinkDown):
                await self.send(answer)

    async def read_stderr(self) -> None:
        """Keep the tail of what the backend writes to stderr, for /readyz and the log."""
        stderr: ByteReceiveStream | None = self.process.stderr
        if stderr is None:
            return
        with suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            async for chunk in stderr:
                self.stderr_tail = (self.stderr_tail + chunk.decode(errors="replace"))[-STDERR_TAIL:]

    def exit_reason(self, exc: BaseException | None = None) -> str:
        code = self.process.returncode
        if code is None:
            return f"the backend's pipe broke ({type(exc).__name__})" if exc else "the backend closed its stdout"
        if code < 0:
            return f"the backend process killed by signal {-code}"
        said = self.stderr_tail.strip().splitlines()[-1:]  # its last words: often the error that ended it
        return f"the backend process exited with status {code}" + (f": {said[0][:200]}" if said else "")


class HttpLink(Link):
    """A backend at a streamable-HTTP URL: one POST per message, answers as JSON or an SSE stream.

    In the 2025-11-25 era a backend that restarts forgets our session and
    answers 404; the link then starts a new session and tells the caller
    whether its request was sent. In 2026-07-28 there is no session to lose.

    The link speaks HTTP through httpcore2, the connection pool under httpx2:
    a relay needs none of the client's conveniences (cookies, redirects, auth
    flows, URL and header models), and skipping them is time saved on every call.
    """

    def __init__(
        self, name: str, url: str, http: httpcore2.AsyncConnectionPool, headers: Mapping[str, str],
        on_notification: NotificationHandler, machine: MachineToken | None = None,
    ) -> None:  # fmt: skip
        super().__init__(name, on_notification)
        self.url = url
        self.http = http
        self.configured = dict(headers)  # the backend's `headers` from the configuration, on every request
        self.machine = machine  # the proxy's own token for this backend, if it wants one
        self.session_id: str | None = None
        self.session_lock = anyio.Lock()
        self.generation = 0  # which session: a 404 renews it once, not once per call that saw it
        self.tg: TaskGroup | None = None

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        name: str,
        url: str,
        headers: Mapping[str, str],
        on_notification: NotificationHandler,
        protocol: str = "auto",
        machine: MachineToken | None = None,
    ) -> AsyncIterator[HttpLink]:
        pool = httpcore2.AsyncConnectionPool(
            max_connections=64, max_keepalive_connections=64, network_backend=SocketBackend()
        )
        async with pool as http, anyio.create_task_group() as tg:
            link = cls(name, url, http, headers, on_notification, machine)
            link.tg = tg
            try:
                if protocol == PROTOCOL_VERSION or not await link.discover(required=protocol == MODERN):
                    await link.start_session()
                else:
                    tg.start_soon(link.subscribe)
                yield link
            finally:
                link.close(link.reason or "stopped")
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True), suppress(Exception), anyio.move_on_after(2):
                    if link.session_id:
                        await http.request("DELETE", url, headers=link.wire_headers({}, link.session_id))

    async def start_session(self) -> None:
        self.session_id = None
        self.generation += 1
        await self.initialize()
        if self.tg is not None and self.session_id is not None:
            self.tg.start_soon(self.listen, self.generation)
        if self.following and self.tg is not None:  # a new session follows nothing yet: ask again
            following, self.following = self.following, frozenset()
            self.tg.start_soon(self.follow, following)

    @property
    def cancels_by_closing(self) -> bool:
        return self.modern

    def headers(self, message: Message, session_id: str | None) -> dict[str, str]:
        headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
        if self.modern:  # the routing headers a 2026-07-28 server checks against the body
            method = message.get("method")
            headers["mcp-protocol-version"] = MODERN
            if isinstance(method, str):
                headers["mcp-method"] = method
                name = (message.get("params") or {}).get(NAME_BEARING_METHODS.get(method, ""))
                if isinstance(name, str):
                    headers["mcp-name"] = encode_header_value(name)
        elif session_id:
            headers["mcp-session-id"] = session_id
            headers["mcp-protocol-version"] = PROTOCOL_VERSION
        return headers

    async def authorize(self) -> None:
        """Put the proxy's own token on what follows, a new one when the last is about to expire."""
        if self.machine is not None:
            try:
                self.configured["authorization"] = await self.machine.bearer()
            except MachineAuthError as exc:  # nothing was sent: a call may try again; a start fails with this reason
                raise LinkDown(str(exc), sent=False) from None

    def check_token(self, response: Any) -> None:
        """If the backend refused the proxy's own token, the next request gets a new one, and this one is not sent."""
        if response.status == 401 and self.machine is not None:
            self.machine.refused(self.configured.get("authorization", ""))
            raise LinkDown("the backend refused the proxy's token", sent=False)  # not processed: may go again

    def wire_headers(
        self, message: Message, session_id: str | None, extra: Mapping[str, str] | None = None
    ) -> list[tuple[bytes, bytes]]:
        headers: dict[str, str] = {}
        for layer in (self.configured, extra or {}, self.headers(message, session_id)):  # later layers win
            headers.update((key.lower(), value) for key, value in layer.items())
        return [(key.encode(), value.encode()) for key, value in headers.items()]

    def stream(self, message: Message, headers: list[tuple[bytes, bytes]]) -> AbstractAsyncContextManager[Any]:
        return self.http.stream("POST", self.url, headers=headers, content=encode(message), extensions=HTTP_TIMEOUTS)

    async def deliver(self, message: Message, call: Call) -> None:
        generation, session_id = self.generation, self.session_id
        await self.authorize()
        where = Cursor()
        try:
            async with self.stream(message, self.wire_headers(message, session_id, call.headers)) as response:
                status, kind = response.status, header(response, "content-type")
                self.check_token(response)
                lost = status == 404 and session_id is not None
                if message.get("method") == "initialize" and (session := header(response, "mcp-session-id")):
                    self.session_id = session
                if (
                    not lost
                    and status >= 400
                    and not (self.modern and kind.startswith(("application/json", "text/event")))
                ):
                    said = (await response.aread()).decode(errors="replace")[:200]
                    raise BackendError(-32603, f"HTTP {status} from the backend: {said}")
                # (2026-07-28 gives a JSON-RPC error an HTTP status too; its body is the answer to pass on.)
                if not lost:
                    await self.read_response(response, call, where)
        except NOT_SENT as exc:  # nothing reached the backend: if it cannot be reached at all, the link is down
            if isinstance(exc, CONNECT_ERRORS):
                self.close(f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__)
            raise LinkDown(f"{type(exc).__name__}: {exc}"[:300], sent=False) from None
        except TRANSPORT_ERRORS as exc:  # this exchange broke; the next one finds out whether the backend did
            raise LinkDown(f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__) from None
        if lost:  # renewed only now, with this response's connection back in the pool
            await self.renew(generation)
            raise LinkDown("the backend lost our session (it restarted?)", sent=False)
        if not call.answered.is_set() and where.last_id is not None:
            await self.resume(call, where)
        if not call.answered.is_set():
            call.settle({"error": {"code": -32603, "message": "the backend's answer stream ended without an answer"}})

    async def resume(self, call: Call, where: Cursor) -> None:
        """The backend ended the call's stream before its answer, after an event with an id: it means to go on
        (SEP-1699). Our caller's stream is cut too (it comes back to us the same way), and the link comes back
        as any client would: a GET with `Last-Event-ID` after the `retry` the backend asked for, again each
        time that stream ends too, until the answer is in or tries in a row bring nothing."""
        if call.cut is not None:
            await call.cut()
        failures = 0
        while not call.answered.is_set() and failures < MAX_RESUME_FAILURES:
            await anyio.sleep(where.retry)
            before = where.last_id
            with suppress(*TRANSPORT_ERRORS, LinkDown):  # LinkDown: no token for now; the next try may have one
                await self.authorize()
                extra = {**call.headers, "last-event-id": str(before)}
                headers = self.wire_headers({}, self.session_id, extra)
                async with self.http.stream("GET", self.url, headers=headers, extensions=HTTP_TIMEOUTS) as response:
                    if response.status < 400 and header(response, "content-type").startswith("text/event-stream"):
                        async for message in sse_messages(response.aiter_stream(), where):
                            await self.dispatch(message, call)
                            if call.answered.is_set():
                                break  # this stream stays open after the answer: it is not the call's own
            failures = 0 if where.last_id != before else failures + 1

    async def renew(self, generation: int) -> None:
        """Start a new session, once per lost session however many calls noticed it."""
        async with self.session_lock:
            if generation == self.generation:
                log.info("backend lost our session; starting a new one", backend=self.name)
                await self.start_session()

    async def read_response(self, response: Any, call: Call | None, where: Cursor | None = None) -> None:
        if header(response, "content-type").startswith("text/event-stream"):
            async for message in sse_messages(response.aiter_stream(), where):
                await self.dispatch(message, call)
        elif response.status != 202:
            content = await response.aread()
            try:
                message = json.loads(content) if content else None
            except (ValueError, RecursionError):
                not_json = {"code": -32603, "message": "the backend answered with something that is not JSON"}
                message = {"id": call.id, "error": not_json} if call else None
            await self.dispatch(message, call)

    async def dispatch(self, message: Any, call: Call | None) -> None:
        if not isinstance(message, dict):
            return
        answer = await self.handle(message, call)
        if answer is not None:
            await self.post(answer)

    async def post(self, message: Message) -> None:
        with suppress(LinkDown):  # no new token now: the last one may still do (this runs inside a stream reader)
            await self.authorize()
        headers = self.wire_headers(message, self.session_id)
        try:
            response = await self.http.request(
                "POST", self.url, headers=headers, content=encode(message), extensions=HTTP_TIMEOUTS
            )
        except TRANSPORT_ERRORS as exc:
            raise LinkDown(f"{type(exc).__name__}: {exc}") from None
        if response.status == 404 and message.get("method") is not None:
            await self.renew(self.generation)

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        await self.post({"jsonrpc": "2.0", "method": method, **({"params": dict(params)} if params else {})})

    async def listen(self, generation: int) -> None:
        """The session's GET stream: where the backend sends `list_changed` and other news unasked."""
        delay, streamed = 0.5, False
        while not self.closed.is_set() and generation == self.generation:
            try:
                await self.authorize()
                headers = self.wire_headers({}, self.session_id)
                async with self.http.stream("GET", self.url, headers=headers, extensions=HTTP_TIMEOUTS) as response:
                    self.check_token(response)
                    if response.status == 404 and streamed:  # it was there a moment ago: the backend restarted
                        with suppress(BackendError, LinkDown, Timeout):  # (down for good: the next call says so)
                            await self.renew(generation)  # a new session, with its own stream and subscriptions
                        return
                    if response.status in (404, 405):
                        return  # no stream offered (or the session is gone, which the next call notices)
                    if response.status < 400 and header(response, "content-type").startswith("text/event-stream"):
                        delay, streamed = 0.5, True  # a stream: read it for as long as it lasts
                        await self.read_response(response, None)
            except (*TRANSPORT_ERRORS, LinkDown):  # LinkDown: no token for now; try again after a while
                pass
            await anyio.sleep(delay)
            delay = min(delay * 2, 10)

    async def subscribe(self) -> None:
        """2026-07-28: a `subscriptions/listen` stream carries `list_changed` and the `resources/updated` we follow;
        held open, reopened when it drops, and at once when `follow` changes the filter."""
        delay, dropped = 0.5, False
        while not self.closed.is_set():
            message = {"jsonrpc": "2.0", "id": next(self.ids), "method": "subscriptions/listen",
                       "params": {"notifications": self.listen_filter(), "_meta": ENVELOPE}}  # fmt: skip
            self.listening = scope = anyio.CancelScope()
            try:
                with scope:
                    await self.authorize()
                    async with self.stream(message, self.wire_headers(message, None)) as response:
                        self.check_token(response)
                        if response.status >= 400 or not header(response, "content-type").startswith(
                            "text/event-stream"
                        ):
                            self.listen_settled.set()
                            return  # no subscriptions offered: lists are as of the last listing
                        if dropped:  # news may have been missed while the stream was down: look again
                            await self.on_notification("notifications/tools/list_changed", None)
                        dropped, delay = False, 0.5
                        await self.read_response(response, None)
            except CONNECT_ERRORS as exc:
                self.close(f"{type(exc).__name__}: {exc}"[:300])  # the backend is down: say so, and reconnect
                return
            except (*TRANSPORT_ERRORS, LinkDown):  # LinkDown: no token for now; try again after a while
                pass
            if scope.cancel_called:
                continue  # closed by `follow`, not dropped: reopen at once, with the new filter
            dropped = True
            await anyio.sleep(delay)
            delay = min(delay * 2, 10)


def encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def header(response: Any, name: str) -> str:
    """One response header's value ("" when absent); httpcore2 keeps headers as the server sent them."""
    wanted = name.encode()
    for key, value in response.headers:
        if key.lower() == wanted:
            return str(value.decode(errors="replace"))
    return ""


@dataclass
class Cursor:
    """How far an SSE stream got: its last event id, and how soon its server said to come back if it is cut."""

    last_id: str | None = None
    retry: float = RESUME_DELAY  # seconds


async def sse_messages(chunks: AsyncIterator[bytes], where: Cursor | None = None) -> AsyncIterator[Any]:
    """The JSON payloads of an SSE stream's `message` events (comments, pings and an unfinished last event skipped).

    `where`, if given, is kept up to date with the stream's event ids and `retry` field, to resume it from.
    """
    data: list[str] = []
    event = "message"
    async for line in sse_lines(chunks):
        if not line:
            if data and event == "message":
                with suppress(ValueError, RecursionError):
                    yield json.loads("\n".join(data))
            data, event = [], "message"
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif where is not None and line.startswith("id:") and "\0" not in line:
            where.last_id = line[3:].removeprefix(" ")
        elif where is not None and line.startswith("retry:") and line[6:].strip().isdigit():
            where.retry = int(line[6:].strip()) / 1000


async def sse_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Lines as SSE ends them (CRLF, LF or CR), however the chunks split them; each byte is looked at once."""
    pending = bytearray()
    scanned = 0  # `pending[:scanned]` holds no line end
    async for chunk in chunks:
        pending += chunk
        start = 0
        while (end := LINE_END.search(pending, scanned)) is not None:
            if end.group() == b"\r" and end.end() == len(pending):
                scanned = end.start()  # a CR last in the chunk: an LF may follow in the next one
                break
            yield pending[start : end.start()].decode(errors="replace")
            start = scanned = end.end()
        else:
            scanned = len(pending)
        del pending[:start]
        scanned -= start
    if pending[scanned:] == b"\r":  # the stream ended right after a CR: that ended a line too
        yield pending[:scanned].decode(errors="replace")


class SocketStream(httpcore2.AsyncNetworkStream):
    """A pooled connection that looks its socket up once, and sends each request in one write.

    Before each request the pool asks every idle connection whether the
    server has closed it, which means finding its socket; anyio builds a fresh
    table of socket attributes for each such question, a real share of the
    proxy's time with many clients (bench/README.md). A connection's
    socket never changes, so it is found once, when the connection is made.

    httpcore2 writes a request's head and its body separately: two system
    calls, two TCP segments (the socket has no Nagle delay), and two wake-ups
    of the backend for one request. Writes are held until the response is
    read (or `WRITE_BATCH` bytes are waiting) and then go out together.
    """

    WRITE_BATCH = 64 * 1024

    def __init__(self, stream: httpcore2.AsyncNetworkStream) -> None:
        self.stream = stream
        self.socket = stream.get_extra_info("socket")
        self.poller = select.poll()
        if self.socket is not None:
            self.poller.register(self.socket, select.POLLIN)
        self.pending = bytearray()
        self.write_timeout: float | None = None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 - httpcore2's API
        if self.pending:
            # As httpcore2 does when a write fails: the server may have answered and closed early,
            # so the read still goes ahead and reports what happened.
            with suppress(httpcore2.WriteError):
                await self.flush()
        return await self.stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109 - httpcore2's API
        self.pending += buffer
        self.write_timeout = timeout
        if len(self.pending) >= self.WRITE_BATCH:
            await self.flush()

    async def flush(self) -> None:
        data = bytes(self.pending)
        self.pending.clear()
        await self.stream.write(data, self.write_timeout)

    async def aclose(self) -> None:
        self.pending.clear()  # a request never read for was abandoned with its connection
        await self.stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore2's API
    ) -> httpcore2.AsyncNetworkStream:
        return SocketStream(await self.stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            return self.socket
        if info == "is_readable":  # readable while idle: the server closed it, and the read would say so
            return self.socket is None or self.socket.fileno() < 0 or bool(self.poller.poll(0))
        return self.stream.get_extra_info(info)


class SocketBackend(httpcore2.AnyIOBackend):
    async def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore2.AsyncNetworkStream:
        return SocketStream(await super().connect_tcp(*args, **kwargs))
